"""Multi-host start-up: `jax.distributed.initialize` from the config, before any other JAX
call. On TPU pods and under SLURM (and other detected clusters) no addresses are needed; on
plain machines give the coordinator address, process count and this process's id."""

from __future__ import annotations

from typing import Any

import jax


def initialize(distributed: Any) -> bool:
    """Joins the job described by the config's `distributed` block; returns whether it did.
    Collectives on CPU use gloo (jax's default), so localhost tests need no accelerator."""
    if not distributed.enabled:
        return False
    given = {
        "coordinator_address": distributed.coordinator_address,
        "num_processes": distributed.num_processes,
        "process_id": distributed.process_id,
    }
    explicit = {k: v for k, v in given.items() if v is not None}
    if explicit and len(explicit) != len(given):
        missing = sorted(set(given) - set(explicit))
        raise ValueError(
            f"distributed: {explicit} given but {missing} missing; give all three, or none "
            "(TPU pods and SLURM are detected automatically)"
        )
    if (
        distributed.num_processes is not None
        and not 0 <= distributed.process_id < distributed.num_processes
    ):
        raise ValueError(
            f"distributed.process_id={distributed.process_id} is not in "
            f"[0, {distributed.num_processes})"
        )
    jax.distributed.initialize(
        **explicit,
        initialization_timeout=distributed.initialization_timeout,
        heartbeat_timeout_seconds=distributed.heartbeat_timeout_seconds,
    )
    return True
