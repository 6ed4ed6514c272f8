"""Checksums saved with every checkpoint and verified on restore, so that damage no storage
layer notices (one flipped bit in an uncompressed chunk restores without any error) is found
before a run resumes from it.

Arrays get a checksum of their bits computed on the devices (a jitted reduction, so a sharded
or replicated state is summed where it lies, without gathering it): two position-weighted sums
of the array's bits read as unsigned words, modulo 2**32. Every weight is odd, so a single
flipped bit always changes both sums (2**k times an odd number is never 0 modulo 2**32), and
the weights depend on the position, so moved or swapped words are caught too. JSON items get a
SHA-256 of their canonical text.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_UNSIGNED = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def _words(x: jax.Array) -> jax.Array:
    """The bits of `x` as a flat uint32 vector (8-byte types as two words each)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32).ravel()
    size = x.dtype.itemsize
    if size == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32).ravel()
    return jax.lax.bitcast_convert_type(x, _UNSIGNED[size]).astype(jnp.uint32).ravel()


def _sums(x: jax.Array) -> jax.Array:
    words = _words(x)
    i = jnp.arange(words.size, dtype=jnp.uint32)
    # Two odd weights per position: (2i + 1) and its product with an odd constant, plus a
    # second view of the bits (each word xor-ed with its rotation) for the second sum.
    w1 = 2 * i + 1
    w2 = w1 * jnp.uint32(0x9E3779B1)
    mixed = words ^ ((words << 13) | (words >> 19))
    return jnp.stack([jnp.sum(words * w1, dtype=jnp.uint32), jnp.sum(mixed * w2, dtype=jnp.uint32)])


@jax.jit
def _tree_sums(tree: Any) -> Any:
    return jax.tree.map(_sums, tree)


def array_checksums(tree: Any) -> dict[str, str]:
    """{leaf path: 16 hex digits} for every array leaf of `tree`."""
    sums = jax.device_get(_tree_sums(tree))
    flat = jax.tree_util.tree_flatten_with_path(sums)[0]
    return {
        jax.tree_util.keystr(path): "".join(f"{int(v):08x}" for v in np.asarray(value))
        for path, value in flat
    }


def json_digest(value: Any) -> str:
    """SHA-256 of `value` as canonical JSON (as it reads back: tuples are lists)."""
    text = json.dumps(json.loads(json.dumps(value)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def mismatches(saved: dict[str, str], actual: dict[str, str]) -> list[str]:
    """The names of what differs between two checksum tables (missing or extra included)."""
    return sorted(k for k in saved.keys() | actual.keys() if saved.get(k) != actual.get(k))


class CheckpointDamage(ValueError):
    """A checkpoint step that is incomplete, unreadable or fails its checksums."""


def verify_records(meta: dict[str, Any], position: dict[str, Any]) -> dict[str, Any] | None:
    """The step's checksum record, after checking the model record and the data position
    against it: raises `CheckpointDamage` on any difference, so that a flipped bit in the model
    record is damage, never "another model". None for steps written before checksums existed
    (they pass on reading back alone)."""
    if "integrity" not in position:
        return None
    record = position["integrity"]
    rest = {k: v for k, v in position.items() if k != "integrity"}
    if not isinstance(record, dict) or json_digest(rest) != record.get("data"):
        raise CheckpointDamage("its data position differs from its checksum")
    if json_digest(meta) != record.get("meta"):
        raise CheckpointDamage("its model record differs from its checksum")
    return record


def verify_arrays(arrays: dict[str, Any], record: dict[str, Any] | None) -> None:
    """Raises `CheckpointDamage` unless the restored arrays match the checksums saved with them."""
    if record is None:
        return
    bad = mismatches(record.get("arrays", {}), array_checksums(arrays))
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise CheckpointDamage(f"array checksum mismatch in {', '.join(bad[:3])}{more}")
