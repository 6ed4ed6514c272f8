"""The Pallas BatchNorm sums (`resflax.kernels.channel_sums`): the tiling plan, the kernel's
values through Pallas' interpreter, its Triton lowering for the GPU (checked here without
one), and a ResNet under `Ops(norm="closed_pallas")` against XLA's reductions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resflax.kernels import channel_sums as cs
from resflax.models import ResNet
from resflax.ops import Ops, auto


def _reference(a, b):
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    axes = tuple(range(a.ndim - 1))
    return a64.sum(axes), (a64 * b64).sum(axes)


def _rel_err(got, want) -> float:
    return max(
        float(np.abs(np.asarray(g, np.float64) - w).max() / np.abs(w).max())
        for g, w in zip(got, want, strict=True)
    )


def test_plan_for_resnet50_shapes_and_fallbacks():
    # (rows, channels) -> (rows per program, rows per tile): tiles of 4,096 elements, at most
    # 2,048 programs, at least 64 rows per program.
    assert cs.plan(256 * 112 * 112, 64) == (2048, 64)
    assert cs.plan(256 * 56 * 56, 256) == (512, 16)
    assert cs.plan(256 * 7 * 7, 2048) == (64, 2)
    for rows, channels in ((256 * 49, 2048), (256 * 3136, 64)):
        block, tile_rows = cs.plan(rows, channels)
        assert rows % block == 0 and block % tile_rows == 0 and tile_rows * channels == cs.TILE
    # XLA's reduction where the kernel does not tile: channels not a power of two or wider
    # than a tile, rows without the power-of-two factor a block needs.
    assert cs.plan(1024, 48) is None
    assert cs.plan(1024, 8192) is None
    assert cs.plan(100, 64) is None


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("same", [True, False])
def test_kernel_values_through_the_interpreter(dtype, same):
    """Several programs, each looping over several tiles (a small tile and few programs)."""
    a = (jax.random.normal(jax.random.key(0), (2, 32, 32, 16)) + 0.5).astype(dtype)
    b = a if same else jax.random.normal(jax.random.key(1), a.shape).astype(dtype)
    block, tile_rows = cs.plan(2048, 16, tile=256, programs=4)
    assert (2048 // block, block // tile_rows) == (4, 32)
    got = cs._pallas_sums(a, b, same, True, 256, 4)
    assert all(g.dtype == jnp.float32 and g.shape == (16,) for g in got)
    # bfloat16 inputs are exact in float32; only the float32 accumulation rounds.
    assert _rel_err(got, _reference(a, b)) < 1e-5
    assert _rel_err(cs.xla_sums(a, b), _reference(a, b)) < 1e-5


def test_channel_sums_defaults_falls_back_and_checks_shapes():
    a = jax.random.normal(jax.random.key(0), (4, 8, 8, 32))
    np.testing.assert_allclose(cs.channel_sums(a), cs.xla_sums(a, a), rtol=1e-5)
    odd = jax.random.normal(jax.random.key(1), (3, 5, 5, 24))  # not tiled: XLA's sums
    assert not cs.applies(odd)
    for got, want in zip(cs.channel_sums(odd), cs.xla_sums(odd, odd), strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match=r"equal shapes, got \(4, 8, 8, 32\) and \(4, 8, 8, 16\)"):
        cs.channel_sums(a, a[..., :16])
    assert not cs.available()  # no GPU here


def test_triton_lowering_for_the_gpu():
    """Lowered for CUDA on this CPU-only machine: Pallas' Triton lowering accepts the kernel
    (power-of-two tiles, the loop, the casts) for ResNet-50's widest and narrowest shapes."""
    for shape in ((256, 56, 56, 64), (256, 7, 7, 2048)):
        a = jax.ShapeDtypeStruct(shape, jnp.bfloat16)
        for same in (True, False):
            lowered = (
                jax.jit(lambda a, b, same=same: cs._pallas_sums(a, b, same))
                .trace(a, a)
                .lower(lowering_platforms=("cuda",))
            )
            assert lowered.as_text().count("__gpu$xla.gpu.triton") == 1


def test_resnet_with_pallas_sums_matches_xla(tiny_kwargs, train_grads):
    norms = ("closed_pallas", "closed")
    results = [train_grads(ResNet(**tiny_kwargs, ops=Ops(norm=n))) for n in norms]
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6), *results)
    assert auto().norm == "closed"
