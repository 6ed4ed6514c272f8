"""The tree shows the architecture: models are the architecture only (jax, flax and the execution
policy handed in), only `resflax.ops.machine` asks which machine it runs on, and no module or
function outgrows what a reader holds at once."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "resflax"
MODULE_LINES = 300
FUNCTION_LINES = 60
# What reading the machine looks like in code.
MACHINE_QUERIES = ("default_backend(", "device_count(", "devices(", "/proc/cpuinfo", "jax._src")


def _modules(folder: str = "") -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Top-level packages (and resflax subpackages) a module imports, at any depth."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            found.add(".".join(parts[:2]) if parts[0] == "resflax" else parts[0])
    return found


@pytest.mark.parametrize("path", _modules("models"), ids=lambda p: p.name)
def test_models_import_jax_flax_and_the_policy_only(path):
    allowed = {"__future__", "collections", "dataclasses", "fnmatch", "functools", "math",
               "re", "types", "typing", "flax", "jax", "resflax.models", "resflax.ops"}  # fmt: skip
    lazily = {"resflax.runtime"}  # the remat warning, imported only when remat is asked for
    assert _imports(path) - allowed - lazily == set()


@pytest.mark.parametrize(
    "path", [*_modules("models"), *_modules("ops")], ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_only_the_policy_module_reads_the_machine(path):
    if path.name == "machine.py":
        return
    text = path.read_text()
    assert not [q for q in MACHINE_QUERIES if q in text], path


def test_ops_import_jax_only_until_a_kernel_is_traced():
    for path in _modules("ops"):
        tree = ast.parse(path.read_text())
        top = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module:
                top.add(node.module.split(".")[0] if node.module[:7] != "resflax" else node.module)
            elif isinstance(node, ast.Import):
                top.update(a.name.split(".")[0] for a in node.names)
        assert not {m for m in top if m.startswith("resflax.kernels")}, path
        assert top <= {"__future__", "collections", "dataclasses", "functools", "typing", "math",
                       "jax", "flax", "numpy", "resflax.ops.policy", "resflax.ops.machine",
                       "resflax.ops.conv_grads"}, (path, top)  # fmt: skip


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_stay_short(path):
    source = path.read_text()
    assert len(source.splitlines()) <= MODULE_LINES, f"{path}: split it by responsibility"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            assert length <= FUNCTION_LINES, f"{path}:{node.lineno} {node.name} is {length} lines"
