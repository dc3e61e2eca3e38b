"""ESMFold fold benchmarks: esmkernels (chunk_size "auto") vs transformers' EsmForProteinFolding.

- `test_predicted_peak_esmfold_v1`: the memory model's peak for the full esmfold_v1
  architecture (ESM-2 3B stem in bf16, 48 blocks) at L = 1,024 ... 10,000 (extra_info, printed).
- `test_fold_cpu`: a small random-weight ESMFold (2 blocks, c_s 128, c_z 64; ESM-2 8M-shaped
  stem), L = 128, 1 recycle; providers `esmkernels` (torch backend) and `hf`; extra_info has
  the peak of tracked tensor bytes and our memory model's prediction. The side-by-side peak-RSS
  comparison (separate processes) is `python -m bench.fold_memory_cpu`.
- `test_fold_gpu` (CUDA only): the full esmfold_v1 architecture with random weights, 4
  recycles, L = 256 ... 4,096; `esmkernels` in bf16 with the Triton kernels and chunk_size
  "auto", `hf` with its fp16 stem unchunked and with chunk_size 64. Time and
  `torch.cuda.max_memory_allocated`; an out-of-memory is recorded, not dropped.
"""

from __future__ import annotations

import pytest
import torch

from bench.conftest import peak_memory_mb, run_or_record_oom
from bench.fold_memory_cpu import TABLE_LENGTHS, _config_kwargs, predicted_table
from esmkernels.core.configuration import EsmConfig
from esmkernels.models import fold_memory as fm


def test_predicted_peak_esmfold_v1(benchmark):
    table = benchmark(predicted_table)
    benchmark.extra_info["predicted_esmfold_v1_bf16"] = table
    for row in table:
        print(
            f"esmfold_v1 bf16 L={row['length']}: auto chunk {row['auto_chunk']}, fold "
            f"{row['fold_gib']:.1f} GiB + weights {row['weights_gib']:.1f} GiB"
        )
    assert [r["length"] for r in table] == list(TABLE_LENGTHS)


def _models(provider: str, config_kwargs: dict, device, dtype):
    torch.manual_seed(0)
    if provider == "hf":
        transformers = pytest.importorskip("transformers")
        model = transformers.EsmForProteinFolding(transformers.EsmConfig(**config_kwargs))
        return model.eval().to(device)
    from esmkernels import EsmForProteinFolding

    model = EsmForProteinFolding(EsmConfig(**config_kwargs)).eval()
    return model.to(device=device, dtype=dtype)


@pytest.mark.parametrize("provider", ["esmkernels", "hf"])
def test_fold_cpu(benchmark, provider, bench_device):
    if bench_device.type == "cuda":
        pytest.skip("CPU case")
    L = 128
    kwargs = _config_kwargs(128, 64)
    model = _models(provider, kwargs, bench_device, torch.float32)
    ids = torch.randint(0, 20, (1, L), generator=torch.Generator().manual_seed(0))

    def fold():
        with torch.no_grad():
            return model(ids, num_recycles=1)

    benchmark.pedantic(fold, rounds=2, iterations=1, warmup_rounds=0)
    with fm.track_peak_bytes() as tracker:  # untimed: the tracker slows every op down
        fold()
    benchmark.extra_info["tracked_peak_bytes"] = tracker.peak
    if provider == "esmkernels":
        benchmark.extra_info["chunk_size"] = model.last_chunk_size
        benchmark.extra_info["predicted_peak_bytes"] = fm.predict_fold_peak_bytes(
            model.config, L, chunk_size=model.last_chunk_size
        )


GPU_LENGTHS = (256, 512, 1024, 2048, 4096)


@pytest.mark.parametrize("length", GPU_LENGTHS)
@pytest.mark.parametrize("provider", ["esmkernels", "hf-unchunked", "hf-chunk64"])
def test_fold_gpu(benchmark, provider, length, bench_device, sync):
    if bench_device.type != "cuda":
        pytest.skip("needs CUDA")
    cfg = fm.esmfold_v1_config()
    kwargs = cfg.to_dict()
    kwargs["esmfold_config"]["fp16_esm"] = True
    model = _models(provider.split("-")[0], kwargs, bench_device, torch.bfloat16)
    if provider == "hf-chunk64":
        model.trunk.set_chunk_size(64)
    elif provider == "hf-unchunked":
        model.trunk.set_chunk_size(None)
    ids = torch.randint(0, 20, (1, length), device=bench_device)

    def fold():
        with torch.no_grad():
            model(ids, num_recycles=4)
        sync()

    torch.cuda.reset_peak_memory_stats()
    run_or_record_oom(benchmark, fold)
    benchmark.extra_info["peak_memory_mb"] = peak_memory_mb(bench_device)
    if provider == "esmkernels":
        benchmark.extra_info["chunk_size"] = model.last_chunk_size
        benchmark.extra_info["predicted_peak_mb"] = (
            fm.predict_fold_peak_bytes(
                cfg, length, dtype=torch.bfloat16, backend="triton",
                chunk_size=model.last_chunk_size, include_weights=True,
            ) / 2**20
        )  # fmt: skip
