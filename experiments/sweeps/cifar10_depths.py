"""He et al. 2015 Table 6: CIFAR-10 test error of ResNet-20/32/44/56/110 with the paper's recipe
(cifar10.py). Needs CIFAR-10 prepared for tfds (docs/data.md); one GPU takes roughly an hour
per member at the paper's 64k iterations.

    make sweep SWEEP=experiments/sweeps/cifar10_depths.py
    make sweep SWEEP=experiments/sweeps/cifar10_depths.py LAUNCHER=slurm   # one job per depth
"""

# He et al. 2015, Table 6 (CIFAR-10 test error, %; ResNet-110 is the best of 5 runs, the paper
# reports mean 6.61 ± 0.16).
PAPER = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43}


def get_sweep() -> dict:
    return {
        "config": "experiments/configs/cifar10.py:{depth}",
        "members": [{"depth": d} for d in PAPER],
        "paper_error": {str(d): e for d, e in PAPER.items()},
        "paper_source": "He et al. 2015, Table 6",
        "flags": [],
    }
