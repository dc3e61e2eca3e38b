"""Timing and peak memory of one workload, the same way on every provider.

CUDA: each call is timed with CUDA events after a warm-up call (which compiles and autotunes),
with the L2 cache flushed before every timed call (as `triton.testing.do_bench` does), and the
median is reported; the repeat count adapts to the call's length within `max_time` seconds.
Peak memory is `torch.cuda.max_memory_allocated` over one extra call (everything alive during
it: inputs, weights, activations). CPU: the same loop on `time.perf_counter`; peak memory is not
measured (None).

An out-of-memory (CUDA or host) is a result ("oom"), not an error.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from esmkernels.core.memory import free_memory, is_oom

_L2_FLUSH_BYTES = 256 * 2**20


@dataclass
class Timing:
    status: str  # "ok" | "oom"
    ms: float | None = None
    reps: int = 0
    peak_mb: float | None = None


def measure(
    fn: Callable[[], object],
    device: torch.device,
    *,
    max_time: float = 1.0,
    max_reps: int = 100,
    min_reps: int = 1,
    warmup: bool = True,
    flush_l2: bool = True,
) -> Timing:
    """Median milliseconds of `fn()` on `device` (see the module docstring)."""
    try:
        return _measure(fn, device, max_time, max_reps, min_reps, warmup, flush_l2)
    except Exception as e:  # noqa: BLE001 - only an out-of-memory is a result
        if not is_oom(e):
            raise
        free_memory(device)
        return Timing("oom")


def _measure(fn, device, max_time, max_reps, min_reps, warmup, flush_l2) -> Timing:
    cuda = device.type == "cuda"
    flush = (
        torch.empty(_L2_FLUSH_BYTES, dtype=torch.int8, device=device) if cuda and flush_l2 else None
    )

    def once() -> float:
        if cuda:
            if flush is not None:
                flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    started = time.perf_counter()
    first = once()
    times = [] if warmup else [first]
    budget_ms = max_time * 1e3
    estimate = max(first, 1e-3)
    while len(times) < max_reps:
        if len(times) >= min_reps and (time.perf_counter() - started) * 1e3 + estimate > budget_ms:
            break
        times.append(once())
        estimate = statistics.median(times)
    peak = None
    if cuda:
        del flush
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    return Timing("ok", statistics.median(times), len(times), peak)
