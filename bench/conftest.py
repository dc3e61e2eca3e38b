"""Benchmark fixtures shared by every bench file.

Benchmarks run with pytest-benchmark. On a CUDA machine they use the real ESM-2 / ESMFold shapes;
on a CPU they run a tiny shape or two so the suite finishes in minutes and reports the reference
timings. Every result carries the device name, torch/triton versions and the git commit
(see `pytest_benchmark_update_machine_info`), and `bench/run.py` copies the JSON under
`bench/results/`.
"""

from __future__ import annotations

import pytest
import torch

from esmkernels.benchmarks.environment import cuda_usable as on_gpu
from esmkernels.benchmarks.environment import device_name, git_commit, versions
from esmkernels.core.memory import free_memory, is_oom

__all__ = ["device_name", "git_commit", "on_gpu", "versions"]


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["device"] = device_name()
    machine_info["git_commit"] = git_commit()
    machine_info.update(versions())


@pytest.fixture(scope="session")
def bench_device() -> torch.device:
    return torch.device("cuda") if on_gpu() else torch.device("cpu")


@pytest.fixture(scope="session")
def sync(bench_device):
    """Call inside every timed function so device work is inside the measurement."""
    if bench_device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def run_or_record_oom(benchmark, fn, *args, **kwargs):
    """Benchmark fn; an out-of-memory is recorded in extra_info (not dropped) and skipped."""
    try:
        return benchmark(fn, *args, **kwargs)
    except Exception as e:  # noqa: BLE001 - only an out-of-memory is a result
        if not is_oom(e):
            raise
    benchmark.extra_info["oom"] = True
    free_memory()
    pytest.skip("out of memory (recorded as oom)")


def peak_memory_mb(bench_device) -> float | None:
    if bench_device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated() / 2**20
