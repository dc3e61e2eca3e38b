"""Whole-model benchmarks (pytest-benchmark): ESM-2 forward and ESMFold folding.

Cases, shapes and providers come from `esmkernels.benchmarks.lm` and `.fold` (the same ones
`esmkernels bench --suite lm|fold` and the GPU session time):

- ESM-2 650M shape (GPU, bf16) or a tiny one (CPU, fp32): a uniform batch (B = 8192 / L
  sequences of L - 2 residues) and a skewed one (50..L-2 residues, padded to L);
- ESMFold full size with random weights (GPU, fp32 trunk) or the tests' toy model (CPU), one
  sequence of L residues, no recycling.

Providers: `reference`, `torch` (the fast model's torch backend), `triton` (CUDA only here),
`hf` (transformers, when installed). extra_info: real tokens, tokens/s, peak memory (CUDA).
"""

from __future__ import annotations

import pytest
import torch

from bench.conftest import on_gpu, peak_memory_mb, run_or_record_oom
from esmkernels.benchmarks import fold, lm
from esmkernels.benchmarks.workloads import Unavailable

SIZE = "real" if on_gpu() else "tiny"
_MODELS: dict = {}


def _models(kind, device, dtype):
    key = (kind, str(device), dtype)
    if key not in _MODELS:
        _MODELS.clear()  # one family at a time: the full-size ones do not fit together
        if kind == "lm":
            _MODELS[key] = lm.Models(lm.SIZES[SIZE].shape, device, dtype)
        else:
            _MODELS[key] = fold.Models(SIZE, device, dtype)
    return _MODELS[key]


def _run(benchmark, device, sync, build):
    if device.type == "cuda":
        torch.cuda.empty_cache()
    try:
        work = build()
        fn = work.callable_for("fwd")
        fn()  # compile / autotune outside the measurement
    except Unavailable as e:
        pytest.skip(str(e))
    except torch.cuda.OutOfMemoryError:
        benchmark.extra_info["oom"] = True
        pytest.skip("out of memory before timing (recorded as oom)")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def timed():
        fn()
        sync()

    run_or_record_oom(benchmark, timed)
    benchmark.extra_info.update(
        tokens=work.tokens,
        tokens_per_s=work.tokens / benchmark.stats.stats.median,
        peak_memory_mb=peak_memory_mb(device),
        meta=work.meta,
    )


def _skip_triton_on_cpu(provider, device):
    if provider == "triton" and device.type != "cuda":
        pytest.skip("triton provider needs CUDA (the interpreter is not a benchmark)")


@pytest.mark.parametrize("provider", lm.PROVIDERS)
@pytest.mark.parametrize("L", lm.SIZES[SIZE].lengths)
@pytest.mark.parametrize("case", lm.CASES)
def test_bench_lm_forward(benchmark, bench_device, sync, case, L, provider):
    _skip_triton_on_cpu(provider, bench_device)
    dtype = torch.bfloat16 if bench_device.type == "cuda" else torch.float32
    benchmark.group = f"lm-{case}-L{L}"
    benchmark.extra_info.update(suite="lm", case=case, provider=provider, L=L, dtype=str(dtype))
    models = _models("lm", bench_device, dtype)
    _run(
        benchmark, bench_device, sync, lambda: lm.build(case, provider, L, models=models, size=SIZE)
    )


@pytest.mark.parametrize("provider", fold.PROVIDERS)
@pytest.mark.parametrize("L", fold.SIZES[SIZE].lengths)
def test_bench_fold(benchmark, bench_device, sync, L, provider):
    _skip_triton_on_cpu(provider, bench_device)
    benchmark.group = f"fold-L{L}"
    benchmark.extra_info.update(suite="fold", provider=provider, L=L, dtype="float32")
    models = _models("fold", bench_device, torch.float32)
    _run(benchmark, bench_device, sync, lambda: fold.build("fold", provider, L, models=models))
