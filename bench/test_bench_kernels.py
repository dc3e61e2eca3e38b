"""Kernel benchmarks (pytest-benchmark): every case of `esmkernels.benchmarks.kernels`.

The cases, shapes and providers are the ones `esmkernels bench --suite kernels` and the GPU
session time (one definition, in `esmkernels.benchmarks.kernels`): LayerNorm, rotary attention
(padded and a skewed varlen batch), the triangle multiplicative update and triangle attention
modules, each against `reference`, `torch` and `hf` where those exist. Real shapes in bf16 on a
GPU; tiny fp32 shapes on a CPU, where the Triton provider is skipped (the interpreter is not a
benchmark). Modes fwd / bwd / fwd+bwd. `extra_info` carries flops, bytes, TFLOP/s, TB/s and
the peak memory (CUDA); an out-of-memory is recorded (`oom`), not dropped.
"""

from __future__ import annotations

import pytest
import torch

from bench.conftest import on_gpu, peak_memory_mb, run_or_record_oom
from esmkernels.benchmarks import kernels
from esmkernels.benchmarks.workloads import MODES, Unavailable

SIZE = "real" if on_gpu() else "tiny"


def _cases():
    return [(case, L) for case in kernels.CASES for L in kernels.default_lengths(case, SIZE)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", kernels.PROVIDERS)
@pytest.mark.parametrize("case,L", _cases())
def test_bench_kernel(benchmark, bench_device, sync, case, L, provider, mode):
    if provider == "triton" and bench_device.type != "cuda":
        pytest.skip("triton provider needs CUDA (the interpreter is not a benchmark)")
    dtype = torch.bfloat16 if bench_device.type == "cuda" else torch.float32
    benchmark.group = f"{case}-L{L}-{mode}"
    benchmark.extra_info.update(op=case, provider=provider, mode=mode, L=L, dtype=str(dtype))
    if bench_device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        work = kernels.build(case, provider, L, size=SIZE, device=bench_device, dtype=dtype)
        fn = work.callable_for(mode)
    except Unavailable as e:
        pytest.skip(str(e))
    except torch.cuda.OutOfMemoryError:
        benchmark.extra_info["oom"] = True
        pytest.skip("out of memory building the inputs (recorded as oom)")

    def timed():
        fn()
        sync()

    run_or_record_oom(benchmark, timed)
    flops, nbytes = work.work(mode)
    benchmark.extra_info.update(flops=flops, bytes=nbytes, meta=work.meta)
    median = benchmark.stats.stats.median
    if median > 0:
        benchmark.extra_info["tflops"] = flops / median / 1e12 if flops else None
        benchmark.extra_info["tbps"] = nbytes / median / 1e12 if nbytes else None
    benchmark.extra_info["peak_mb"] = peak_memory_mb(bench_device)
