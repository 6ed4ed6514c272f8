"""Fashion-MNIST (Xiao et al. 2017: 60,000 + 10,000 grey 28x28 images, 10 classes), read from
its four IDX files in memory, offline: `make data-fashion-mnist` installs them (Debian's
dataset-fashion-mnist) where --config.data.folder looks by default.

The argument is `<model>[,<schedule>]`: a CIFAR depth (20, 32, 44, 56, 110) or CIFAR model name
(resnet20, wrn28_10, preact_resnet18, ...), and a schedule:

- `paper`: Zhong et al. 2017 ("Random Erasing Data Augmentation"), their Fashion-MNIST table:
  300 epochs, batch 128, SGD momentum 0.9, lr 0.1 ÷10 at epochs 150 and 225, weight decay 5e-4
  (PyTorch's: every parameter), 4-pixel zero pad + random 28x28 crop + horizontal flip.
  `--config.data.random_erasing=0.5` adds their random erasing. They report the best test
  accuracy over all epochs; resflax reports the last step's.
- `fast` (default): one ResNet-20 seed in about half an hour on 2 CPU cores, the most accuracy
  per minute found here: 20 epochs, batch 128, SGD with Nesterov momentum 0.9, lr 0.1 with one
  warm-up epoch and a cosine decay to 0, weight decay 5e-4 on every parameter, the same
  augmentation (experiments/results/fashion_mnist.md has the numbers and why).

    make data-fashion-mnist
    make train CONFIG=experiments/configs/fashion_mnist.py:resnet20
    python -m resflax.main --config=experiments/configs/fashion_mnist.py:resnet56,paper \
        --workdir=runs/fmnist_r56_paper
    # three seeds as one population (mean ± std in summary.json):
    make train CONFIG=experiments/configs/fashion_mnist.py:resnet20 \
        FLAGS="--config.population.size=3 --config.population.data_order=own"
"""

from experiments.configs import base
from resflax.models.registry import get_entry, list_models

DEPTHS = (20, 32, 44, 56, 110)
SCHEDULES = ("fast", "paper")


def parse(arg: str) -> tuple[str, str]:
    """'resnet20,paper' -> ('resnet20', 'paper'); the schedule defaults to fast."""
    model, _, schedule = (arg or "resnet20").partition(",")
    schedule = schedule or "fast"
    if schedule not in SCHEDULES:
        raise ValueError(
            f"fashion_mnist schedule {schedule!r} is not one of {SCHEDULES} "
            "(the recipe's argument is <model>[,<schedule>], e.g. resnet20,paper)"
        )
    cifar = [n for n in list_models() if get_entry(n).config.get("stem") == "cifar"]
    return base.pick_model(model or "resnet20", DEPTHS, cifar, "Fashion-MNIST"), schedule


def get_config(arg: str = "resnet20"):
    model, schedule = parse(arg)
    c = base.get_config()
    c.model.name = model
    c.data.name = "fashion_mnist"
    c.batch_size = 128
    c.eval_batch_size = 1000
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 5e-4
    c.optimizer.decay_norm_and_bias = True  # torch.optim.SGD(weight_decay=...) decays all
    c.schedule.unit = "epochs"
    if schedule == "paper":
        c.num_epochs = 300
        c.schedule.name = "piecewise"
        c.schedule.boundaries = (150, 225)
        c.schedule.decay_factor = 0.1
    else:
        c.num_epochs = 20
        c.optimizer.nesterov = True
        c.schedule.name = "cosine"
        c.schedule.warmup = 1
    # Small images: as for CIFAR, YNNPACK's elementwise fusions too (cifar10.py says why).
    c.xla_cpu_flags = "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce"
    c.log_every_steps = 100
    c.eval_every_steps = 468  # one epoch of 60,000 / 128 (the last partial batch dropped)
    c.checkpoint_every_steps = 468
    return c
