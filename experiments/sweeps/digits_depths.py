"""Error vs depth on the embedded digits: the CIFAR ResNets of He et al. 2015 Table 6 (20, 32,
44, 56, 110 layers), each trained with the digits recipe. Runs here, offline, in ~10 minutes on
2 CPU cores: the worked example of a sweep.

    make sweep SWEEP=experiments/sweeps/digits_depths.py
"""


def get_sweep() -> dict:
    return {
        "config": "experiments/configs/digits.py:resnet{depth}",
        "members": [{"depth": d} for d in (20, 32, 44, 56, 110)],
        # Test error every 50 steps (the 359 test images take a fraction of a second) for curves.
        "flags": ["--config.eval_every_steps=50"],
    }
