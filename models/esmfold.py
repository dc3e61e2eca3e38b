"""Fast ESMFold: the reference model with its ESM-2 stem and trunk ops swapped for kernels.

Everything without a kernel (structure module, heads, geometry, confidence, PDB writing,
loading) is the reference's, inherited, not copied. Two hooks of
`esmkernels.reference.esmfold.modeling.EsmForProteinFolding` are used:

- `stem_cls`: the fast `esmkernels.models.esm.EsmModel` (fused LayerNorm, rotary flash attention
  on unpadded tokens), same parameter names;
- the trunk op namespace: `KernelTrunkOps`, the registry's trunk ops
  (`triangle_multiplicative_update`, `axial_attention`) called with this model's `backend`;
  each op dispatches itself (`esmkernels.ops._dispatch`: "auto" runs the kernels on CUDA,
  PyTorch otherwise) and reads `chunk_size` as rows of the pair. In inference on the PyTorch
  path the triangle multiplication is its op's streamed, memory-lean version.

Memory: the reference chunks every [L, L]-sized op and updates the pair state in place in
inference (see `esmkernels.reference.esmfold.trunk`). The chunk size defaults to "auto": before
each forward, `esmkernels.models.fold_memory.auto_chunk_size` picks it from the memory model and
the free memory of the device (and raises, before any work, when the fold cannot fit);
`set_chunk_size(n)` / `set_chunk_size(None)` override it, and `last_chunk_size` is the value the
last forward used.

Example:
    >>> from esmkernels import EsmForProteinFolding
    >>> model = EsmForProteinFolding.from_pretrained(  # doctest: +SKIP
    ...     "path/to/esmfold_v1", dtype=torch.bfloat16, device="cuda")
    >>> pdb = model.infer_pdb("MKTVRQERLKSIVRILERSKEPVSGAQ")  # doctest: +SKIP
    >>> model.last_chunk_size  # chosen by chunk_size="auto"  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from esmkernels.models import fold_memory
from esmkernels.models.esm import EsmModel, _FastMixin
from esmkernels.ops import registry
from esmkernels.ops._dispatch import check_backend, resolve
from esmkernels.reference.esmfold import modeling as ref


def _bound(op: registry.Op):
    """A method calling `op.function` with the namespace's backend (and, for an op that takes
    `offload`, the namespace's `offload` on its in-place inference calls)."""
    takes_offload = "offload" in inspect.signature(op.function).parameters

    def call(self, *args: Any, **kwargs: Any):
        if takes_offload and getattr(self, "offload", False) and kwargs.get("add_into") is not None:
            kwargs["offload"] = True
        return op.function(*args, backend=self.backend, **kwargs)

    call.__name__ = call.__qualname__ = op.name
    call.__doc__ = f"`esmkernels.ops.{op.name}` with this namespace's backend."
    return call


class KernelTrunkOps:
    """Trunk op namespace of the fast ESMFold: every registry op marked `trunk`
    (`esmkernels.ops.registry`), called with this namespace's `backend` (picklable: it holds
    only the backend). Each op dispatches and chunks itself (`chunk_size` in rows of the pair)."""

    def __init__(self, backend: str | None = None, offload: bool = False):
        self.backend = check_backend(backend)
        self.offload = bool(offload)

    def __repr__(self) -> str:
        return f"KernelTrunkOps(backend={self.backend!r}, offload={self.offload})"


for _op in registry.ops():
    if _op.trunk:
        setattr(KernelTrunkOps, _op.name, _bound(_op))
del _op


class EsmForProteinFolding(_FastMixin, ref.EsmForProteinFolding):
    """Fast ESMFold; API, outputs and checkpoints as `esmkernels.reference.esmfold`'s.

    Args:
        config: an ESMFold `EsmConfig` (`is_folding_model=True`).
        backend: None | "auto" | "triton" | "torch" for every kernel call (None: the environment
            variable ESMKERNELS_BACKEND); `from_pretrained(..., backend=...)` and the `backend`
            attribute set it too.
        chunk_size: "auto" (default: chosen per forward by the memory model), rows per block,
            or None (unchunked); see `set_chunk_size`.
        offload: "auto" (default), True or False: keep the triangle multiplication's
            contraction in host memory during inference; see `set_offload`.

    Attributes:
        last_chunk_size: the chunk size the last forward used (None before any, or unchunked).
        last_offload: whether the last forward offloaded.
    """

    stem_cls = EsmModel

    def __init__(
        self,
        config,
        *,
        backend: str | None = None,
        chunk_size: int | str | None = "auto",
        offload: bool | str = "auto",
    ):
        # Read by the reference constructor when it builds the trunk; per instance so that two
        # models can use different backends.
        self.__dict__["_trunk_ops"] = KernelTrunkOps(backend)
        super().__init__(config)
        self._init_backend(backend)
        self.last_chunk_size: int | None = None
        self.last_offload = False
        self.set_chunk_size(chunk_size)
        self.set_offload(offload)

    @property
    def chunk_size(self) -> int | str | None:
        """The chunk-size setting: "auto", an int (rows per block) or None (unchunked)."""
        return self._chunk_setting

    def set_chunk_size(self, chunk_size: int | str | None) -> None:
        """ "auto" (pick per forward from the memory model and the free memory), a positive int
        (rows per block of every [L, L]-sized op) or None (unchunked). Outputs do not change."""
        if chunk_size == "auto":
            self._chunk_setting = "auto"
            return
        self.trunk.set_chunk_size(chunk_size)  # validates
        self._chunk_setting = self.trunk.chunk_size

    @property
    def offload(self) -> bool | str:
        """The offload setting: "auto", True or False."""
        return self._offload_setting

    def set_offload(self, offload: bool | str) -> None:
        """Where the triangle multiplication keeps its pair-sized contraction in inference.

        False: on the device (2 pair tensors there at that op's peak). True: in host memory
        (pinned on CUDA), copied back a row block at a time: about one pair tensor on the device,
        for two pair-sized host transfers per triangle multiplication. "auto" (default): offload
        only when the fold (at the chunk "auto" picks, or at the chunk set) would not fit a GPU
        otherwise (`fold_memory.auto_fold_plan`); never on a CPU, where host and device are one
        memory.
        Outputs do not change.
        """
        if offload not in fold_memory.OFFLOAD_MODES:
            raise ValueError(
                f"set_offload: offload={offload!r} must be one of {fold_memory.OFFLOAD_MODES}"
            )
        self._offload_setting = offload

    def forward(self, input_ids: torch.Tensor, *args: Any, **kwargs: Any):
        """As the reference's; with chunk_size "auto", the chunk (and, with offload "auto", the
        offload) is chosen first for the call's `outputs` mode, and a fold that cannot fit
        raises `MemoryError` before any work."""
        offload = self._offload_setting is True
        if torch.is_tensor(input_ids) and input_ids.dim() == 2:
            B, L = input_ids.shape
            backend = resolve(self.backend, self.esm_s_combine, op="EsmForProteinFolding")
            chunk, offload = fold_memory.auto_fold_plan(
                self.config,
                L,
                batch=B,
                dtype=self.esm_s_combine.dtype,
                backend=backend,
                device=self.device,
                outputs=ref.check_outputs(kwargs.get("outputs", "full")),
                offload=self._offload_setting,
                chunk_size=self._chunk_setting,
            )
            self.trunk.set_chunk_size(chunk)
        self.__dict__["_trunk_ops"].offload = offload
        self.last_chunk_size = self.trunk.chunk_size
        self.last_offload = offload
        return super().forward(input_ids, *args, **kwargs)

    @property
    def backend(self) -> str | None:
        return _FastMixin.backend.fget(self)

    @backend.setter
    def backend(self, value: str | None) -> None:
        _FastMixin.backend.fset(self, value)  # the stem's kernels
        self.__dict__["_trunk_ops"].backend = self.backend


__all__ = ["EsmForProteinFolding", "KernelTrunkOps"]
