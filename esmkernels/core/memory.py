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

Example:
    >>> try:
    ...     raise RuntimeError("CUDA error: out of memory")
    ... except RuntimeError as err:
    ...     is_oom(err)
    True
"""

from __future__ import annotations

import gc
from typing import Any

__all__ = ["free_memory", "is_oom"]

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
