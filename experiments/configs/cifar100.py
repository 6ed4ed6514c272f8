"""CIFAR-100 with the CIFAR-10 recipe of He et al. 2015 §4.2 (see cifar10.py), 100 classes.

make train CONFIG=experiments/configs/cifar100.py:resnet56 WORKDIR=runs/c100_r56
python -m resflax.main --config=experiments/configs/cifar100.py:wrn28_10 --workdir=runs/w
"""

from experiments.configs import cifar10


def get_config(model: str = "resnet56"):
    c = cifar10.get_config(model)
    c.data.name = "cifar100"
    return c
