"""Patched vs unpatched transformers (pytest-benchmark): `esmkernels.accelerate`.

The cases, sizes, providers and modes are `esmkernels.benchmarks.patched`'s (one definition):
transformers' `EsmForMaskedLM` as built (`hf`) and after `esmkernels.accelerate(model)`
(`patched`), inference (`fwd`) and one LoRA training step (`lora`, needs peft), on a
length-skewed and a uniform batch. ESM-2 650M in bf16 at L = 1024 on a GPU; ESM-2 8M in fp32 at
L = 256 on a CPU. extra_info: real tokens, tokens/s, peak memory (CUDA). Targets live in the
issue, not in assertions.
"""

from __future__ import annotations

import pytest
import torch

from bench.conftest import on_gpu, peak_memory_mb, run_or_record_oom
from esmkernels.benchmarks import patched
from esmkernels.benchmarks.workloads import Unavailable

pytest.importorskip("transformers")

SIZE = "real" if on_gpu() else "tiny"
_BUILT: dict = {}


def _model(provider: str, mode: str, device: torch.device) -> torch.nn.Module:
    key = (provider, mode)
    if key not in _BUILT:
        _BUILT.clear()  # one model at a time: the GPU shape is large
        try:
            _BUILT[key] = patched.build_model(provider, mode, SIZE, device)
        except Unavailable as e:
            pytest.skip(str(e))
    return _BUILT[key]


@pytest.mark.parametrize("provider", patched.PROVIDERS)
@pytest.mark.parametrize("mode", patched.MODES)
@pytest.mark.parametrize("case", patched.CASES)
def test_bench_patched_transformers(benchmark, bench_device, sync, case, mode, provider):
    size = patched.SIZES[SIZE]
    benchmark.group = f"patched-{mode}-{case}-L{size.length}"
    model = _model(provider, mode, bench_device)
    run, tokens = patched.build(case, mode, model=model, size=SIZE, device=bench_device)
    benchmark.extra_info.update(
        suite="patched", case=case, mode=mode, provider=provider, L=size.length,
        shape=size.shape, dtype=str(size.dtype), tokens=tokens,
    )  # fmt: skip

    def step():
        run()
        sync()

    step()  # warm-up: autotuning and allocations outside the measurement
    if bench_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run_or_record_oom(benchmark, step)
    benchmark.extra_info.update(
        tokens_per_s=tokens / benchmark.stats.stats.median,
        peak_memory_mb=peak_memory_mb(bench_device),
    )
