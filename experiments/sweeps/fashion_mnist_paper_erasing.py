"""fashion_mnist_paper.py with random erasing (p = 0.5, Zhong et al. 2017): their second column.

make sweep SWEEP=experiments/sweeps/fashion_mnist_paper_erasing.py
"""

from experiments.sweeps import fashion_mnist_paper
from experiments.sweeps.fashion_mnist_fast import ZHONG_ERASING


def get_sweep() -> dict:
    sweep = fashion_mnist_paper.get_sweep()
    sweep["flags"] = [*sweep["flags"], "--config.data.random_erasing=0.5"]
    sweep["paper_error"] = {str(d): e for d, e in ZHONG_ERASING.items()}
    sweep["paper_source"] = "Zhong et al. 2017, random erasing, best of 300 epochs"
    return sweep
