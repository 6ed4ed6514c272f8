"""Reading what a run left in its workdir, for comparisons across runs and processes."""

import hashlib
import json

import jax
import orbax.checkpoint as ocp

TIMING = {"steps_per_sec", "images_per_sec"}


def saved_state(workdir, step):
    """The arrays of `<workdir>/checkpoints/<step>/state` on one local device, whatever devices
    and processes wrote them."""
    path = workdir / "checkpoints" / str(step) / "state"
    checkpointer = ocp.StandardCheckpointer()
    device = jax.sharding.make_single_device_sharding(jax.devices()[0])
    target = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
        checkpointer.metadata(path).item_metadata,
    )
    return checkpointer.restore(path, target)


def metric_lines(workdir):
    """metrics.jsonl without the timing fields (which differ between any two runs)."""
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in TIMING} for line in lines]


def tree_hash(directory):
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode() + path.read_bytes())
    return digest.hexdigest()
