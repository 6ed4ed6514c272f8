"""Compile the CPU kernels: `python -m resflax.kernels.build` (run by `make install`).

Needs a C++17 compiler, jaxlib's FFI headers (shipped with jaxlib), and oneDNN's CPU library
with GNU OpenMP (`onednn-cpu-gomp`) with the headers of the same release
(`onednn-devel-cpu-gomp`), both from pip into this environment's prefix (resflax's
dependencies on Linux x86-64). The library is written beside this file, named with the
interpreter's extension suffix (`_onednn_conv.cpython-311-x86_64-linux-gnu.so`), so that
environments of several Pythons can share one checkout. Where the library is missing (it is
published for Linux x86-64 only) nothing is built and convolutions stay XLA's; exit status 0
either way unless the compiler fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from resflax.kernels import LIBRARY, SOURCE

DNNL = "libdnnl.so.3"


def prefix_paths() -> tuple[Path, Path]:
    """(include dir, lib dir) of this environment, where pip puts wheels' data files."""
    prefix = Path(sysconfig.get_paths()["data"])
    return prefix / "include", prefix / "lib"


def compiler() -> str:
    return os.environ.get("CXX", "g++")


def missing() -> str | None:
    """Why the kernels cannot be built here, or None."""
    include, lib = prefix_paths()
    if not (lib / DNNL).exists():
        return f"oneDNN's library ({lib / DNNL}) is not installed (pip: onednn-cpu-gomp)"
    if not (include / "oneapi" / "dnnl" / "dnnl.h").exists():
        return (
            f"oneDNN's headers ({include}/oneapi/dnnl) are not installed "
            "(pip: onednn-devel-cpu-gomp)"
        )
    if shutil.which(compiler()) is None:
        return f"no C++ compiler ({compiler()}; set CXX)"
    return None


def build(out: Path = LIBRARY) -> Path:
    """Compile the kernels into `out` (atomically: concurrent builds leave one whole file)."""
    import jax

    include, lib = prefix_paths()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        partial = Path(tmp) / out.name
        cmd = [
            compiler(), "-O2", "-std=c++17", "-shared", "-fPIC",
            "-Wno-return-type",  # jaxlib's FFI headers end switch functions without a return
            f"-I{jax.ffi.include_dir()}", f"-I{include}", str(SOURCE), "-o", str(partial),
            f"-L{lib}", f"-l:{DNNL}", f"-Wl,-rpath,{lib}",
        ]  # fmt: skip
        subprocess.run(cmd, check=True)
        os.replace(partial, out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=LIBRARY)
    args = ap.parse_args(argv)
    why = missing()
    if why is not None:
        print(f"resflax.kernels: not built: {why}; convolutions stay XLA's")
        return 0
    try:
        build(args.out)
    except subprocess.CalledProcessError as e:
        print(f"resflax.kernels: compiling {SOURCE.name} failed (exit {e.returncode})")
        return 1
    print(f"resflax.kernels: built {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
