"""Imagenette (fast.ai's 10 easy ImageNet classes, full size, 9,469 train / 3,925 validation):
a real ImageNet-style run that fits a single GPU in minutes. ImageNet preprocessing at 224
(random-resized crop + flip; resize 256 + center crop), the Goyal et al. recipe shortened to
40 epochs with 2 warmup epochs and a cosine schedule, label smoothing 0.1. The argument is any
ImageNet model (default resnet50).

    make train CONFIG=experiments/configs/imagenette.py:resnet18 WORKDIR=runs/nette18
    python -m resflax.main --config=experiments/configs/imagenette.py:resnet50 \
        --workdir=runs/nette50 --config.dtype=bfloat16
    (prepare once where there is internet: `tfds build imagenette/full-size-v2`)
"""

from experiments.configs import imagenet


def get_config(model: str = "resnet50"):
    c = imagenet.get_config(model)
    c.data.name = "imagenette"
    c.batch_size = 128
    c.num_epochs = 40.0
    c.optimizer.learning_rate = 0.1
    c.optimizer.reference_batch = 256
    c.optimizer.weight_decay = 5e-5
    c.schedule.name = "cosine"
    c.schedule.unit = "epochs"
    c.schedule.warmup = 2.0
    c.schedule.boundaries = ()
    c.label_smoothing = 0.1
    c.log_every_steps = 50
    c.eval_every_steps = 740  # ~10 epochs
    c.checkpoint_every_steps = 740
    return c
