"""ImageNet (ILSVRC 2012) with the recipe of Goyal et al. 2017: 90 epochs, SGD momentum 0.9,
weight decay 1e-4 (not on BatchNorm or biases), lr 0.1 x batch/256 with a 5-epoch linear
warmup, ÷10 at epochs 30, 60 and 80, the last BatchNorm of each block initialised to zero.
Inception-style random-resized crop 224 + flip; eval resize 256 + center crop 224. The
argument is a depth (18, 34, 50, 101, 152, 200) or any registered ImageNet model name.

    make train CONFIG=experiments/configs/imagenet.py:50 WORKDIR=runs/in_r50
    python -m resflax.main --config=experiments/configs/imagenet.py:resnext50_32x4d \
        --workdir=runs/in_x50 --config.batch_size=1024 --config.dtype=bfloat16
"""

from experiments.configs import base
from resflax.models.registry import STAGES, get_entry, list_models


def imagenet_model(arg: str) -> str:
    names = [n for n in list_models() if get_entry(n).config.get("stem") != "cifar"]
    names = [n for n in names if n != "blog_resnet"] + ["blog_resnet"]
    return base.pick_model(arg, tuple(STAGES), names, "ImageNet")


def get_config(model: str = "resnet50"):
    c = base.get_config()
    c.model.name = imagenet_model(model or "resnet50")
    c.model.zero_init_last = True
    c.data.name = "imagenet2012"
    c.data.image_size = 224
    c.batch_size = 256
    c.num_epochs = 90.0
    c.optimizer.learning_rate = 0.1
    c.optimizer.reference_batch = 256
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.schedule.name = "piecewise"
    c.schedule.unit = "epochs"
    c.schedule.warmup = 5.0
    c.schedule.boundaries = (30.0, 60.0, 80.0)
    c.log_every_steps = 100
    c.eval_every_steps = 5000
    c.checkpoint_every_steps = 5000
    return c
