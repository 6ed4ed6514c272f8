"""Throughput runs on synthetic data (one fixed random batch, repeated): measures the model and
the train step, not an input pipeline. The argument is any registered model; the image size and
class count are the model's own (224 and 1000 for ImageNet models).

    make train CONFIG=experiments/configs/fake_data.py:resnet50 WORKDIR=runs/fake50 \
        FLAGS="--config.dtype=bfloat16 --config.batch_size=256"
    python -m resflax.main --config=experiments/configs/fake_data.py:resnet18 \
        --workdir=runs/fake18 --config.num_steps=20 --config.batch_size=32
"""

from experiments.configs import base
from resflax.models.registry import get_entry


def get_config(model: str = "resnet50"):
    entry = get_entry(model or "resnet50")
    c = base.get_config()
    c.model.name = entry.name
    c.data.name = "fake"
    c.data.image_size = entry.resolution
    c.data.num_classes = entry.num_classes
    c.batch_size = 256
    c.num_steps = 100
    c.optimizer.learning_rate = 0.1
    c.optimizer.reference_batch = 256
    c.schedule.name = "constant"
    c.log_every_steps = 10
    c.eval_every_steps = 0
    c.checkpoint_every_steps = 0
    c.max_to_keep = 1
    return c
