"""Fold memory: the memory model's predicted peak vs the measured one, on any device.

Predicted: `esmkernels.models.fold_memory.predict_fold_peak_bytes(config, L, batch=1, dtype,
backend, chunk_size)`, the bytes of tensors one fold allocates on top of the loaded model.
Measured: the same quantity, `fold_memory.track_peak_bytes` around each call (live bytes of
the tensor storages the fold creates, weights excluded), so CPU runs compare too. The record's
`peak_mb` is that measured peak; `meta` holds `predicted_mb` and `predicted_over_measured`.
Times in this suite include the tracker's overhead: read them from the `fold` suite instead.

`predicted_esmfold_v1` is the memory model's table for the full esmfold_v1 (ESM-2 3B stem in
bf16, 48 blocks, Triton path, auto chunk) at `TABLE_LENGTHS`, printed by the fold benchmarks.
"""

from __future__ import annotations

import importlib

from esmkernels.benchmarks import fold
from esmkernels.benchmarks.peers import has
from esmkernels.benchmarks.workloads import Unavailable, Workload

PROVIDERS = ("reference", "torch", "triton")
CASES = ("fold_peak",)
MODULE = "esmkernels.models.fold_memory"
TABLE_LENGTHS = (1024, 2048, 4096, 8192, 10000)


def memory_model():
    if not has(MODULE):
        raise Unavailable(f"{MODULE} (the fold memory model) is not available in this version")
    return importlib.import_module(MODULE)


def build(
    case: str, provider: str, length: int, *, models: fold.Models, num_recycles: int = 0
) -> Workload:
    if provider not in PROVIDERS:
        raise Unavailable(f"the memory model predicts esmkernels backends only, not {provider!r}")
    mm = memory_model()
    work = fold.build("fold", provider, length, models=models, num_recycles=num_recycles)
    model = models.get(provider)
    predicted = mm.predict_fold_peak_bytes(
        model.config,
        length,
        batch=1,
        dtype=models.dtype,
        backend="triton" if provider == "triton" else "torch",
        chunk_size=models.chunk_size,
    )
    meta = {**work.meta, "predicted_mb": predicted / 2**20}
    inner = work.forward

    def tracked():
        with mm.track_peak_bytes() as tracker:
            out = inner()
        meta["tracked_peak_mb"] = tracker.peak / 2**20
        return out

    return Workload(tracked, tokens=length, meta=meta)


def predicted_esmfold_v1(lengths=TABLE_LENGTHS) -> list[dict]:
    """Per length: the auto chunk, the predicted fold peak, weights and total (GiB), the
    unchunked peak and the pair tensor's size, for the full esmfold_v1 in bf16 (Triton path)."""
    import torch

    mm = memory_model()
    cfg = mm.esmfold_v1_config()
    weights = mm.model_weight_bytes(cfg, torch.bfloat16)
    rows = []
    for length in lengths:
        kw = dict(dtype=torch.bfloat16, backend="triton")
        chunk = mm.auto_chunk_size(cfg, length, free_bytes=10**13, **kw)
        fold_bytes = mm.predict_fold_peak_bytes(cfg, length, chunk_size=chunk, **kw)
        unchunked = mm.predict_fold_peak_bytes(cfg, length, chunk_size=None, **kw)
        rows.append(
            dict(
                length=length,
                auto_chunk=chunk,
                weights_gib=weights / 2**30,
                fold_gib=fold_bytes / 2**30,
                total_gib=(fold_bytes + weights) / 2**30,
                unchunked_fold_gib=unchunked / 2**30,
                pair_gib=length**2 * 256 / 2**30,
            )
        )
    return rows
