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
            # A sub-folder of a mapped folder installs as the mapped package's sub-package
            # (setuptools derives `ops/rotary` -> `esmkernels.ops.rotary`), if it is listed.
            folder, parts = init.parent.resolve(), []
            while folder not in dirs_to_pkg:
                assert folder != ROOT, f"{init.parent} is under no folder of package-dir"
                parts.insert(0, folder.name)
                folder = folder.parent
            name = ".".join([dirs_to_pkg[folder], *parts])
            assert name in listed, f"{init.parent} installs as {name}, which is not listed"
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


def test_ops_package_exports_the_four_public_functions():
    """Each op is a package named apart from its function (`layernorm` for `layer_norm`...), so
    the function re-exported by `esmkernels.ops` never shadows its package: `import a.b as m`
    and `mock.patch("esmkernels.ops.<package>.<name>")` reach the package."""
    import importlib

    import esmkernels.ops as ops

    for name, package in (
        ("layer_norm", "layernorm"),
        ("rotary_attention", "rotary"),
        ("triangle_multiplicative_update", "trimul"),
        ("axial_attention", "axial"),
    ):
        function = getattr(ops, name)
        assert callable(function) and function.__module__ == f"esmkernels.ops.{package}", name
        module = importlib.import_module(f"esmkernels.ops.{package}")
        assert module.__dict__[name] is function
        assert getattr(ops, package) is module  # the package, not shadowed by a function
    assert sorted(ops.__all__) == sorted(
        ["layer_norm", "rotary_attention", "triangle_multiplicative_update", "axial_attention"]
    )


def test_conftest_refuses_a_venv_of_another_tree(tmp_path):
    """Tests copied into another tree, run with this tree's environment, stop before testing."""
    import shutil

    shutil.copytree(ROOT / "tests", tmp_path / "tests")
    (tmp_path / "tests" / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_nothing.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 4, run.stdout + run.stderr  # pytest's usage-error exit code
    assert "not from the tree under test" in run.stdout + run.stderr
