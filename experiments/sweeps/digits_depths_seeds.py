"""Error vs depth with error bars: digits_depths with every member a population of 5 seeds
(resflax.train.population), so each depth's test error is a mean ± std over 5 initialisations
and data orders, as He et al. 2015 report ResNet-110's. Half the steps of digits_depths and three
depths keep it to a few minutes on 2 CPU cores.

    make sweep SWEEP=experiments/sweeps/digits_depths_seeds.py
"""


def get_sweep() -> dict:
    return {
        "config": "experiments/configs/digits.py:resnet{depth}",
        "members": [{"depth": d} for d in (20, 32, 44)],
        "flags": [
            "--config.population.size=5",
            # Each seed its own data order too: the spread covers what separate runs' would.
            "--config.population.data_order=own",
            "--config.num_steps=300",
            "--config.schedule.warmup=25",
            "--config.eval_every_steps=50",
            "--config.checkpoint_every_steps=300",
        ],
    }
