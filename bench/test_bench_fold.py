"""ESMFold fold benchmarks: esmkernels (chunk_size "auto") vs transformers' EsmForProteinFolding.

Cases come from `esmkernels.benchmarks` (one definition): each side is built by
`esmkernels.benchmarks.fold.user_model`, at the precision and chunking its users run.

- `test_predicted_peak_esmfold_v1`: the memory model's peak for the full esmfold_v1
  architecture (ESM-2 3B stem in bf16, 48 blocks) at L = 1,024 ... 10,000
  (`esmkernels.benchmarks.memory.predicted_esmfold_v1`; extra_info, printed).
- `test_fold_cpu`: the `small` size (2 blocks, c_s 128, c_z 64; ESM-2 8M-shaped stem), L = 128,
  1 recycle; providers `esmkernels` (torch backend) and `hf`; extra_info has the peak of tracked
  tensor bytes and our memory model's prediction. The side-by-side peak-RSS comparison
  (separate processes) is `python -m bench.fold_memory_cpu`.
- `test_fold_gpu` (CUDA only): the full esmfold_v1 architecture with random weights,
  `LONG_RECYCLES` recycles, `LONG_LENGTHS` (256 ... 4,096); `esmkernels` in bf16 with the Triton
  kernels and chunk_size "auto", `hf` with its fp16 stem unchunked and with chunk_size 64. Time
  and `torch.cuda.max_memory_allocated`; an out-of-memory is recorded, not dropped.
"""

from __future__ import annotations

import pytest
import torch

from bench.conftest import peak_memory_mb, run_or_record_oom
from esmkernels.benchmarks import fold, memory
from esmkernels.benchmarks.workloads import Unavailable
from esmkernels.models import fold_memory as fm


def test_predicted_peak_esmfold_v1(benchmark):
    table = benchmark(memory.predicted_esmfold_v1)
    benchmark.extra_info["predicted_esmfold_v1_bf16"] = table
    for row in table:
        print(
            f"esmfold_v1 bf16 L={row['length']}: auto chunk {row['auto_chunk']}, fold "
            f"{row['fold_gib']:.1f} GiB + weights {row['weights_gib']:.1f} GiB"
        )
    assert [r["length"] for r in table] == list(memory.TABLE_LENGTHS)


def _model(provider: str, size: str, device, chunk_size="default"):
    try:
        return fold.user_model(provider, size, device, chunk_size)
    except Unavailable as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("provider", ["esmkernels", "hf"])
def test_fold_cpu(benchmark, provider, bench_device):
    if bench_device.type == "cuda":
        pytest.skip("CPU case")
    L = fold.SIZES["small"].lengths[0]
    model = _model(provider, "small", bench_device)
    ids = torch.randint(0, 20, (1, L), generator=torch.Generator().manual_seed(0))

    def run():
        with torch.no_grad():
            return model(ids, num_recycles=1)

    benchmark.pedantic(run, rounds=2, iterations=1, warmup_rounds=0)
    with fm.track_peak_bytes() as tracker:  # untimed: the tracker slows every op down
        run()
    benchmark.extra_info["tracked_peak_bytes"] = tracker.peak
    if provider == "esmkernels":
        benchmark.extra_info["chunk_size"] = model.last_chunk_size
        benchmark.extra_info["predicted_peak_bytes"] = fm.predict_fold_peak_bytes(
            model.config, L, chunk_size=model.last_chunk_size
        )


GPU_SIDES = {"esmkernels": ("esmkernels", "default"), "hf-unchunked": ("hf", None),
             "hf-chunk64": ("hf", 64)}  # fmt: skip


@pytest.mark.parametrize("length", fold.LONG_LENGTHS)
@pytest.mark.parametrize("side", list(GPU_SIDES))
def test_fold_gpu(benchmark, side, length, bench_device, sync):
    if bench_device.type != "cuda":
        pytest.skip("needs CUDA")
    provider, chunk = GPU_SIDES[side]
    model = _model(provider, "real", bench_device, chunk)
    ids = torch.randint(0, 20, (1, length), device=bench_device)

    def run():
        with torch.no_grad():
            model(ids, num_recycles=fold.LONG_RECYCLES)
        sync()

    torch.cuda.reset_peak_memory_stats()
    run_or_record_oom(benchmark, run)
    benchmark.extra_info["peak_memory_mb"] = peak_memory_mb(bench_device)
    if provider == "esmkernels":
        benchmark.extra_info["chunk_size"] = model.last_chunk_size
        benchmark.extra_info["predicted_peak_mb"] = (
            fm.predict_fold_peak_bytes(
                model.config, length, dtype=torch.bfloat16, backend="triton",
                chunk_size=model.last_chunk_size, include_weights=True,
            ) / 2**20
        )  # fmt: skip
