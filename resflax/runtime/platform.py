"""What the process will run on, read without starting JAX's backends."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pkgutil


def accelerator_plugins() -> list[str]:
    """JAX PJRT plugins installed next to jaxlib (CUDA, ROCm, TPU, ...), found the way JAX
    discovers them, without starting any backend."""
    found = [ep.name for ep in importlib.metadata.entry_points(group="jax_plugins")]
    try:
        import jax_plugins  # namespace package the CUDA/ROCm plugins install into

        found += [m.name for m in pkgutil.iter_modules(jax_plugins.__path__)]
    except ImportError:
        pass
    if importlib.util.find_spec("libtpu") is not None:
        found.append("libtpu")
    return sorted(set(found))


def cpu_only() -> bool:
    """Whether JAX will run on the CPU alone: JAX_PLATFORMS names only cpu, or it is unset
    and no accelerator plugin is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return {p.strip() for p in platforms.split(",")} == {"cpu"}
    return not accelerator_plugins()


def backends_started() -> bool:
    """Whether JAX has started its backends (after which XLA_FLAGS and malloc settings no
    longer take effect).

    Works around JAX having no public accessor for this (jax 0.10-0.12: only the private
    `jax._src.xla_bridge.backends_are_initialized`); tests/runtime/test_platform.py pins it,
    so a jax release that moves it fails there first.
    """
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()
