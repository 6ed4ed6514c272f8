"""Zhong et al. 2017's Fashion-MNIST table, their protocol exactly (the recipe's `paper`
schedule: 300 epochs, lr 0.1 ÷10 at 150 and 225, batch 128, weight decay 5e-4), ResNet-20 to
110, each depth a population of 5 seeds trained in one program (vmap on a GPU). Their column is
the best test error over the 300 epochs; the table has both the best and the final one. With
`--config.data.random_erasing=0.5` added to the flags it is their random-erasing column
(fashion_mnist_paper_erasing.py). On one GPU, a depth takes roughly as long as one seed would.

    make data-fashion-mnist
    make sweep SWEEP=experiments/sweeps/fashion_mnist_paper.py
    make sweep SWEEP=experiments/sweeps/fashion_mnist_paper.py LAUNCHER=slurm   # a job per depth
"""

from experiments.sweeps.fashion_mnist_fast import ZHONG


def get_sweep() -> dict:
    return {
        "config": "experiments/configs/fashion_mnist.py:resnet{depth},paper",
        "members": [{"depth": d} for d in ZHONG],
        "paper_error": {str(d): e for d, e in ZHONG.items()},
        "paper_source": "Zhong et al. 2017, baseline, best of 300 epochs",
        "flags": ["--config.population.size=5", "--config.population.data_order=own"],
    }
