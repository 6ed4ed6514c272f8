"""Convert a torchvision checkpoint into a resflax one (orbax), for `config.init_from`.

    python -m resflax.convert --model resnet50 --src resnet50-0676ba61.pth --dst pretrained/r50

Writes `<dst>/variables` (orbax: params and batch_stats) and `<dst>/meta.json` (model, classes,
source). `.pth` files are read with `torch.load(weights_only=True)`: a file holding pickled
objects, which could run code when unpickled, is refused. Exit status 1 with one line on stderr,
`resflax: error: ...`, for a bad argument, model, file or mapping; `RESFLAX_DEBUG=1` shows the
traceback instead (resflax/cli.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NoReturn


def convert(model_name: str, src: str, dst: str) -> dict:
    import jax
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    from resflax.convert import import_torchvision, read_state_dict
    from resflax.models import create_model, get_entry

    entry = get_entry(model_name)
    out = Path(dst).absolute()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--dst={dst!r} is a file; give a directory (nothing was changed)")
    if (out / "variables").exists():
        raise ValueError(f"{out}/variables exists; choose another --dst (nothing was changed)")
    state = read_state_dict(src)
    if "fc.weight" not in state:
        raise ValueError(f"{src}: no fc.weight, not a torchvision classifier state dict")
    num_classes = int(state["fc.weight"].shape[0])
    model = create_model(model_name, num_classes=num_classes)
    size = entry.resolution
    target = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    variables = import_torchvision(state, target)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--dst={dst!r} cannot be created: {e.strerror} ({e.filename})") from e
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(out / "variables", variables)
    checkpointer.wait_until_finished()
    meta = {
        "model": model_name,
        "num_classes": num_classes,
        "source": str(src),
        "format": "torchvision",
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage error as one line and exit status 1, like every bad input."""

    def error(self, message: str) -> NoReturn:
        from resflax import cli

        cli.fail(f"{message}; usage: {' '.join(self.format_usage().split()[1:])}")


def main(argv: list[str] | None = None) -> int:
    from resflax import cli

    parser = _Parser(prog="python -m resflax.convert", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="registered resflax model name")
    parser.add_argument("--src", required=True, help=".pth or .safetensors torchvision file")
    parser.add_argument("--dst", required=True, help="output directory")
    args = parser.parse_args(argv)
    try:
        meta = convert(args.model, args.src, args.dst)
    except Exception as e:  # every failure is one line (RESFLAX_DEBUG re-raises)
        cli.fail(e)
    print(f"wrote {args.dst}: {meta['model']}, {meta['num_classes']} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
