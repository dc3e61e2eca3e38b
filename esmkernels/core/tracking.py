"""Measuring the memory of tensors: `track_peak_bytes`, the peak of live tensor bytes a block of
code allocates, on any device (CPU included, where no allocator statistics exist).

It is what `esmkernels.models.fold_memory` predicts and what its benchmarks and tests compare
the prediction with. Host-offload buffers (`esmkernels.core.memory.host_empty`) are counted
apart, in `host_peak`.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from esmkernels.core.memory import host_bytes

__all__ = ["TrackedBytes", "track_peak_bytes"]


class TrackedBytes(TorchDispatchMode):
    """Counts the bytes of tensor storages created under it, until each is freed.

    `current` and `peak` are in bytes. Views, in-place results and tensors that existed before
    the mode (weights) are not counted; every new storage an op returns is, on any device,
    except host-offload buffers (`esmkernels.core.memory.host_empty`): `track_peak_bytes`
    sets `host_peak` to the peak of those when its block ends.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self.host_peak = 0
        self._live: dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor) and t.device.type != "meta"
        }
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            ptr, size = storage.data_ptr(), storage.nbytes()
            if size == 0 or ptr in inputs or ptr in self._live:
                continue
            self._live[ptr] = size
            self.current += size
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._free, ptr)
        return out

    def _free(self, ptr: int) -> None:
        self.current -= self._live.pop(ptr, 0)


@contextlib.contextmanager
def track_peak_bytes() -> Iterator[TrackedBytes]:
    """Context manager yielding a `TrackedBytes` whose `peak` is read after the block.

    Example:
        >>> with track_peak_bytes() as t:
        ...     y = torch.ones(1000) * 2
        >>> t.peak
        8000
    """
    _live, _peak = host_bytes(reset_peak=True)
    with TrackedBytes() as tracker:
        yield tracker
    tracker.host_peak = host_bytes()[1] - _live
