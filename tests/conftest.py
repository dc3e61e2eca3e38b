"""Shared test set-up.

TRITON_INTERPRET must be set before Triton is first imported, so it is set here, at the very top,
before anything imports esmkernels. On a machine with CUDA, run with TRITON_INTERPRET=0 to compile
the kernels for real (the `gpu` tests then run too).
"""

import os
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
# Poison torch.empty-backed kernel outputs under test so a tile a kernel forgets to write shows up.
os.environ.setdefault("ESMKERNELS_DEBUG_POISON", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci",
    max_examples=6,
    derandomize=True,
    database=None,  # nothing carried over from an earlier run: a fresh clone sees the same examples
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    max_examples=20,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "gpu",
    max_examples=200,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Test tensors are tiny: one thread avoids pool overhead that makes a tiny op take milliseconds.
torch.set_num_threads(1)


# The tree under test must be the tree these tests came from. An editable install maps
# `esmkernels.ops` etc. to folders by absolute path, so a checkout that reuses another checkout's
# virtual environment would silently import (and test) the other tree's code.
_ROOT = Path(__file__).resolve().parent.parent


def _check_tree_under_test() -> None:
    import importlib

    for name in ("esmkernels", "esmkernels.reference", "esmkernels.ops", "esmkernels.models"):
        where = Path(importlib.import_module(name).__file__).resolve()
        if _ROOT not in where.parents:
            raise pytest.UsageError(
                f"{name} is imported from {where}, not from the tree under test {_ROOT}: this "
                "virtual environment belongs to another checkout. Run `make test` here (it makes "
                "its own .venv) or `pip install -e .` from this tree."
            )


_check_tree_under_test()

# What the set-up resolved, printed at the top of every run so a red run on another machine can
# be explained from its log. Read from package metadata: nothing here imports a peer.
REPORTED_PACKAGES = (
    "torch", "triton", "numpy", "safetensors", "hypothesis", "pytest", "transformers", "fair-esm",
)  # fmt: skip


def _version_lines() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    def _version(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "absent"

    import platform

    versions = ", ".join(f"{name} {_version(name)}" for name in REPORTED_PACKAGES)
    return [
        f"esmkernels versions: {versions}",
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, python {platform.python_version()}, "
        f"torch threads {torch.get_num_threads()}, hypothesis profile "
        f"{os.environ.get('HYPOTHESIS_PROFILE', 'ci')}, TRITON_INTERPRET={os.environ['TRITON_INTERPRET']}",
    ]


def pytest_configure(config):
    """Stop at start, with one line (versions and fix), under a Triton / numpy pair known to break
    the interpreter (esmkernels.ops._compat), instead of a failure in every interpreted test."""
    from esmkernels.ops import _compat

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        problem = _compat.installed_interpreter_problem()
        if problem is not None:
            raise pytest.UsageError(problem)


def pytest_sessionstart(session):
    # Written even under -q (which hides pytest's own header).
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        for line in _version_lines():
            reporter.write_line(line)


def _cuda_ok() -> bool:
    return torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"


@pytest.fixture
def device() -> torch.device:
    """The device kernels run on: CUDA when present (and not interpreting), else the CPU."""
    return torch.device("cuda") if _cuda_ok() else torch.device("cpu")


def pytest_collection_modifyitems(config, items):
    if _cuda_ok():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA (and TRITON_INTERPRET unset)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
