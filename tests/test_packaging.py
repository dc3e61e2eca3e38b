"""Packaging and layering invariants: what a regular (non-editable) install would contain, and
the dependency direction esmkernels -> models -> ops -> reference."""

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_source_package_is_listed_for_regular_installs():
    """A directory with __init__.py that pyproject does not list would be missing from wheels."""
    setup = PYPROJECT["tool"]["setuptools"]
    listed = set(setup["packages"])
    mapping = setup["package-dir"]
    dirs_to_pkg = {(ROOT / d).resolve(): pkg for pkg, d in mapping.items()}
    for pkg, d in mapping.items():
        assert (ROOT / d / "__init__.py").exists(), f"{pkg} -> {d} has no __init__.py"
        assert pkg in listed
    for top in ("esmkernels", "reference", "ops", "models"):
        for init in (ROOT / top).rglob("__init__.py"):
            assert init.parent.resolve() in dirs_to_pkg, f"{init.parent} is not in package-dir"
    assert not any(p in listed for p in ("ops", "models", "reference")), "top-level install"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _layer_imports(directory: str) -> dict[Path, set[str]]:
    return {p: _imports(p) for p in (ROOT / directory).rglob("*.py")}


def test_reference_imports_no_ops_or_models():
    for path, names in _layer_imports("reference").items():
        bad = {n for n in names if n.startswith(("esmkernels.ops", "esmkernels.models"))}
        assert not bad, f"{path} imports {bad}"


def test_ops_import_no_models():
    for path, names in _layer_imports("ops").items():
        bad = {n for n in names if n.startswith("esmkernels.models")}
        assert not bad, f"{path} imports {bad}"


def test_runtime_never_imports_peers():
    for directory in ("esmkernels", "reference", "ops", "models"):
        for path, names in _layer_imports(directory).items():
            bad = {n for n in names if n.split(".")[0] in ("transformers", "esm", "openfold")}
            assert not bad, f"{path} imports peer {bad}"


def test_import_touches_no_cuda_and_no_peer():
    code = (
        "import sys, torch\n"
        "import esmkernels, esmkernels.models, esmkernels.ops, esmkernels.reference\n"
        "assert not torch.cuda.is_initialized(), 'CUDA initialised at import'\n"
        "assert 'transformers' not in sys.modules, 'transformers imported'\n"
        "assert 'esm' not in sys.modules, 'fair-esm imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
