"""Shared test set-up.

TRITON_INTERPRET must be set before Triton is first imported, so it is set here, at the very top,
before anything imports esmkernels. On a machine with CUDA, run with TRITON_INTERPRET=0 to compile
the kernels for real (the `gpu` tests then run too).
"""

import os

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
