"""ImageNet top-1 error vs depth, ResNet-18/34/50/101/152 with the Goyal et al. recipe
(imagenet.py). Needs ImageNet prepared for tfds (docs/data.md) and a multi-GPU or TPU host:
launch one job per depth.

    make sweep SWEEP=experiments/sweeps/imagenet_depths.py LAUNCHER=slurm
    make sweep SWEEP=experiments/sweeps/imagenet_depths.py LAUNCHER=tpu
"""

# Single 224 center crop top-1 error (%) of torchvision's V1 weights (their model cards), trained
# with a similar 90-epoch step recipe: the reference a reproduction should land near.
REFERENCE = {18: 30.242, 34: 26.686, 50: 23.870, 101: 22.626, 152: 21.688}


def get_sweep() -> dict:
    return {
        "config": "experiments/configs/imagenet.py:{depth}",
        "members": [{"depth": d} for d in REFERENCE],
        "paper_error": {str(d): e for d, e in REFERENCE.items()},
        "paper_source": "torchvision V1 weights, single crop",
        "flags": ["--config.dtype=bfloat16"],
    }
