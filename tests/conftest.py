"""Shared fixtures: a tiny ResNet configuration that exercises every code path quickly."""

import os

# Tests run with 8 fake CPU devices, and with XLA:CPU's optimisation barriers kept so that
# remat really recomputes (resflax/train/xla_cpu.py); set here too so a bare `pytest` behaves
# like `make test`.
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=8 --xla_disable_hlo_passes=cse_barrier_expander",
)

import jax
import pytest

TINY = dict(
    stage_sizes=(1, 3),
    block="basic",
    widths=(4, 8),
    stem="cifar",
    stem_width=4,
    num_classes=5,
)


@pytest.fixture
def tiny_kwargs():
    return dict(TINY)


@pytest.fixture
def images():
    return jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
