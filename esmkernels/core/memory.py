"""Out of memory: the one test for it and the one way to give memory back.

Every layer that recovers from an out-of-memory error (the ESMFold `infer` retry at a smaller
chunk, the jobs splitting a batch, the benchmarks recording "oom") uses these two functions, so
they agree on what counts as one.

What counts (`is_oom`):

* `torch.OutOfMemoryError` (`torch.cuda.OutOfMemoryError` is the same class): CUDA, and since
  torch 2.5 also the CPU allocator and other devices;
* `MemoryError`: Python's host allocation failure, and what `esmkernels.models.fold_memory`
  raises before any work when even its smallest chunk is predicted not to fit;
* a `RuntimeError` whose message says "out of memory" or "not enough memory" (older torch and
  other backends raise plain RuntimeErrors: "CUDA error: out of memory", "MPS backend out of
  memory", "DefaultCPUAllocator: not enough memory").

Host offload (`host_empty`): a pair-sized buffer a fold keeps in host memory instead of on
the device (the triangle multiplication's contraction, `offload=True`). It is allocated outside
any `TorchDispatchMode`, so a device-memory tracker (`esmkernels.models.fold_memory.
track_peak_bytes`) never counts it, and its bytes are counted here instead (`host_bytes`):
on a CPU, where host and device are the same memory, that is how the device peak of an
offloaded fold is checked against the memory model.

Example:
    >>> try:
    ...     raise RuntimeError("CUDA error: out of memory")
    ... except RuntimeError as err:
    ...     is_oom(err)
    True
"""

from __future__ import annotations

import gc
import threading
import weakref
from typing import Any

__all__ = ["free_memory", "host_bytes", "host_empty", "is_oom"]

_MESSAGES = ("out of memory", "not enough memory")


def is_oom(err: BaseException) -> bool:
    """True when `err` is an out-of-memory error of any device (see the module docstring)."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    if isinstance(err, oom | MemoryError):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err).lower() for m in _MESSAGES)


def free_memory(device: Any = None) -> None:
    """Give memory back after an out-of-memory error: collect garbage (reference cycles that
    hold tensors, e.g. through a caught exception's frames), then, on CUDA, return the caching
    allocator's free blocks to the driver.

    Call it after leaving the `except` block: inside it, the exception's traceback still holds
    the failed call's frames and their tensors.

    Args:
        device: a `torch.device`, a device string ("cuda:1") or None (CUDA when initialised).
    """
    import torch

    gc.collect()
    if device is None:
        cuda = torch.cuda.is_initialized()
    else:
        cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.empty_cache()


_host = {"live": 0, "peak": 0}
_host_lock = threading.Lock()


def _host_freed(nbytes: int) -> None:
    with _host_lock:
        _host["live"] -= nbytes


def host_empty(shape: tuple[int, ...], dtype: Any, device: Any) -> Any:
    """An uninitialised host tensor for data offloaded from `device`.

    Pinned (page-locked, for fast asynchronous copies) when `device` is CUDA, ordinary CPU
    memory otherwise. Allocated outside any `TorchDispatchMode` (see the module docstring) and
    counted by `host_bytes` while it lives.

    Example:
        >>> import torch
        >>> t = host_empty((2, 3), torch.float32, "cpu")
        >>> t.shape, t.device.type, host_bytes()[0] >= 24
        (torch.Size([2, 3]), 'cpu', True)
    """
    import torch
    from torch.utils._python_dispatch import _disable_current_modes

    pin = torch.device(device).type == "cuda"
    with _disable_current_modes():
        t = torch.empty(shape, dtype=dtype, device="cpu", pin_memory=pin)
    nbytes = t.untyped_storage().nbytes()
    with _host_lock:
        _host["live"] += nbytes
        _host["peak"] = max(_host["peak"], _host["live"])
    weakref.finalize(t.untyped_storage(), _host_freed, nbytes)
    return t


def host_bytes(reset_peak: bool = False) -> tuple[int, int]:
    """(live, peak) bytes of the `host_empty` buffers; `reset_peak` first sets the peak to the
    live bytes, to measure the peak of what follows."""
    with _host_lock:
        if reset_peak:
            _host["peak"] = _host["live"]
        return _host["live"], _host["peak"]
