"""Fold memory: the memory model's predicted peak vs the measured one (CUDA).

Uses `esmkernels.models.fold_memory.predict_fold_peak_bytes(config, length, *, batch, dtype,
backend, chunk_size)`; until that module exists the suite reports itself unavailable.
"""

from __future__ import annotations

import importlib

import torch

from esmkernels.benchmarks import fold
from esmkernels.benchmarks.peers import has
from esmkernels.benchmarks.workloads import Unavailable, Workload

PROVIDERS = ("reference", "torch", "triton")
CASES = ("fold_peak",)
MODULE = "esmkernels.models.fold_memory"


def predictor():
    if not has(MODULE):
        raise Unavailable(f"{MODULE} (the fold memory model) is not available in this version")
    return importlib.import_module(MODULE).predict_fold_peak_bytes


def build(
    case: str, provider: str, length: int, *, models: fold.Models, num_recycles: int = 0
) -> Workload:
    if provider not in PROVIDERS:
        raise Unavailable(f"the memory model predicts esmkernels backends only, not {provider!r}")
    predict = predictor()
    work = fold.build("fold", provider, length, models=models, num_recycles=num_recycles)
    model = models.get(provider)
    dtype = models.dtype if isinstance(models.dtype, torch.dtype) else torch.float32
    backend = "torch" if provider == "reference" else provider
    predicted = predict(
        model.config, length, batch=1, dtype=dtype, backend=backend, chunk_size=models.chunk_size
    )
    work.meta["predicted_mb"] = predicted / 2**20
    return work
