"""`import resflax` must stay light: jax and flax only, no training or data stacks."""

import subprocess
import sys

HEAVY = ("tensorflow", "tensorflow_datasets", "optax", "orbax", "torch")


def _loaded_after(statement: str) -> list[str]:
    code = f"import sys; {statement}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return out.stdout.split()


def test_import_resflax_pulls_no_heavy_modules():
    assert _loaded_after("import resflax") == []


def test_import_models_pulls_no_heavy_modules():
    assert _loaded_after("import resflax.models; resflax.models.create_model('resnet50')") == []


def test_public_api():
    import resflax

    assert "resnet50" in resflax.list_models()
    assert isinstance(resflax.create_model("resnet18"), resflax.ResNet)
