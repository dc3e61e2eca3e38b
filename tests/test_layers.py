"""The house's layers, read from the source: every import points down or sideways, never up.

    core -> reference -> ops -> models -> jobs -> api (package face, integrations, benchmarks) -> cli

A module may import its own layer and the layers below it (docs/ARCHITECTURE.md says why).
Function-level (lazy) imports count too: a lazy import up the stack is still a cycle in the
design. The test reads every product module with `ast`, resolves relative imports, and names the
file, the line and the import of every edge against the order.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. A module's layer is the first entry whose prefix matches its dotted name
# (longest prefix wins, so "esmkernels.core" is not mistaken for the package face "esmkernels").
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("core", ("esmkernels.core",)),
    ("reference", ("esmkernels.reference",)),
    ("ops", ("esmkernels.ops",)),
    ("models", ("esmkernels.models",)),
    ("jobs", ("esmkernels.jobs",)),
    ("api", ("esmkernels", "esmkernels.integrations", "esmkernels.benchmarks")),
    ("cli", ("esmkernels.cli", "esmkernels.__main__")),
)
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}


def layer_of(module: str) -> str | None:
    """The layer of a dotted esmkernels module name, or None outside the product."""
    best: tuple[int, str] | None = None
    for name, prefixes in LAYERS:
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), name)
    return None if best is None else best[1]


def product_modules() -> dict[str, Path]:
    """Every product module's dotted name -> its file, through pyproject's package-dir."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    modules: dict[str, Path] = {}
    for package, directory in mapping.items():
        for path in sorted((ROOT / directory).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            modules[name] = path
    return modules


def imports_of(module: str, source: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, imported esmkernels module) for every import in `source`, relative ones resolved."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from esmkernels import models` imports the submodule, not the package face.
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if layer_of(sub) is not None and layer_of(sub) != layer_of(target):
                    found[-1] = (node.lineno, sub)
    return [(line, name) for line, name in found if name.split(".")[0] == "esmkernels"]


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """One message per import that points up the stack."""
    own = layer_of(module)
    assert own is not None, module
    bad = []
    for line, target in imports_of(module, source, is_package):
        layer = layer_of(target)
        if layer is not None and RANK[layer] > RANK[own]:
            bad.append(f"{module}:{line} ({own}) imports {target} ({layer})")
    return bad


def test_every_product_module_has_a_layer():
    modules = product_modules()
    assert "esmkernels.core.configuration" in modules and "esmkernels.cli" in modules
    assert all(layer_of(m) is not None for m in modules), [m for m in modules if not layer_of(m)]


def test_imports_follow_the_layers():
    bad = []
    for module, path in product_modules().items():
        bad += [
            f"{path.relative_to(ROOT)}: {v}"
            for v in violations(module, path.read_text(), path.stem == "__init__")
        ]
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("esmkernels.core.tokenization", "from esmkernels.models.esm import EsmModel\n"),
        ("esmkernels.core.checkpoint", "def f():\n    import esmkernels.jobs.fasta\n"),
        ("esmkernels.reference.esm", "from esmkernels import EsmModel\n"),
        ("esmkernels.reference.esm", "from esmkernels import ops\n"),
        ("esmkernels.ops._dispatch", "from ..models import esm\n"),
        ("esmkernels.models.esm", "from esmkernels.jobs.embeddings import atomic_write\n"),
        ("esmkernels.jobs.fasta", "from esmkernels.cli._common import log\n"),
    ],
)
def test_an_upward_import_is_named(module, source):
    """The checker itself fails on a wrong edge and names it (an upward import in each layer)."""
    bad = violations(module, source)
    assert len(bad) == 1 and module in bad[0] and "imports" in bad[0], bad


def test_downward_and_sideways_imports_pass():
    assert not violations("esmkernels.models.esm", "from esmkernels.core.variants import x\n")
    assert not violations("esmkernels.cli.fold", "import esmkernels\nfrom esmkernels import jobs\n")
    assert not violations("esmkernels.ops.layer_norm", "from .. import _dispatch\n", True)


def test_no_product_file_is_over_600_lines():
    """STYLE §8: past ~600 lines a module is split into a package of focused modules."""
    long = {
        str(path.relative_to(ROOT)): n
        for path in product_modules().values()
        if (n := len(path.read_text().splitlines())) > 600
    }
    assert not long, f"product files over 600 lines: {long}"
