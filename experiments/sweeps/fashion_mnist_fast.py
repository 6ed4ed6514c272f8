"""Fashion-MNIST test error vs depth with the `fast` schedule (20 epochs, cosine; recipe
fashion_mnist.py), each depth a population of 3 seeds (each its own data order), beside Zhong
et al. 2017's baseline column. Theirs is the best test error over 300 epochs; this reports the
last step's, and trains 15x shorter: one ResNet-20 seed takes about 27 minutes on 2 CPU cores, a
3-seed population about 80.

    make data-fashion-mnist
    make sweep SWEEP=experiments/sweeps/fashion_mnist_fast.py
"""

# Zhong et al. 2017, "Random Erasing Data Augmentation", their repository's Fashion-MNIST table
# (test error %, baseline: pad 4 + crop + flip, 300 epochs, best epoch).
ZHONG = {20: 4.39, 32: 4.16, 44: 4.41, 56: 4.39, 110: 4.40}
ZHONG_ERASING = {20: 4.02, 32: 3.80, 44: 4.01, 56: 4.13, 110: 4.01}
DEPTHS = (20, 32, 44, 56)  # ResNet-110 at this schedule: some 2.5 hours a seed on 2 CPU cores


def get_sweep() -> dict:
    return {
        "config": "experiments/configs/fashion_mnist.py:resnet{depth},fast",
        "members": [{"depth": d} for d in DEPTHS],
        "paper_error": {str(d): ZHONG[d] for d in DEPTHS},
        "paper_source": "Zhong et al. 2017, baseline, best of 300 epochs",
        "flags": ["--config.population.size=3", "--config.population.data_order=own"],
    }
