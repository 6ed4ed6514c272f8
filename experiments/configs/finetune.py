"""Fine-tune converted ImageNet weights (`python -m resflax.convert`) on a new data set: the
whole network from `init_from`, a fresh classifier for the new classes. Defaults: Imagenette,
10 epochs, SGD momentum 0.9, lr 0.01 × batch/256 cosine with 1 warmup epoch, wd 1e-4, label
smoothing 0.1. Any other data set: --config.data.name=image_folder --config.data.folder=...

    make finetune MODEL=resnet50 SRC=resnet50-0676ba61.pth
    python -m resflax.main --config=experiments/configs/finetune.py:resnet50 \
        --workdir=runs/ft50 --config.init_from=pretrained/resnet50
"""

from experiments.configs import imagenette


def get_config(model: str = "resnet50"):
    # Imagenette's recipe (cosine, label smoothing 0.1), shorter and gentler for weights
    # that are already trained.
    c = imagenette.get_config(model)
    c.model.bn_running_var = "unbiased"  # keep updating the statistics as torch trained them
    c.batch_size = 64
    c.num_epochs = 10.0
    c.optimizer.learning_rate = 0.01
    c.optimizer.weight_decay = 1e-4
    c.schedule.warmup = 1.0
    c.log_every_steps = 20
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
    return c
