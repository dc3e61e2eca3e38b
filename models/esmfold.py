"""Fast ESMFold: the reference model with its ESM-2 stem and trunk ops swapped for kernels.

Everything without a kernel (structure module, heads, geometry, confidence, PDB writing,
loading) is the reference's, inherited, not copied. Two hooks of
`esmkernels.reference.esmfold.modeling.EsmForProteinFolding` are used:

- `stem_cls`: the fast `esmkernels.models.esm.EsmModel` (fused LayerNorm, rotary flash attention
  on unpadded tokens), same parameter names;
- the trunk op namespace: `KernelTrunkOps`, whose `triangle_multiplicative_update` and
  `axial_attention` are `esmkernels.ops`' fused kernels, dispatched per call with this model's
  `backend` ("auto": Triton on CUDA tensors, PyTorch otherwise).

Example:
    >>> from esmkernels import EsmForProteinFolding
    >>> model = EsmForProteinFolding.from_pretrained("path/to/esmfold_v1", device="cuda")  # doctest: +SKIP
    >>> model.set_chunk_size(64)  # bounds trunk memory for long chains  # doctest: +SKIP
    >>> pdb = model.infer_pdb("MKTVRQERLKSIVRILERSKEPVSGAQ")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from esmkernels.models.esm import EsmModel, _FastMixin, check_backend
from esmkernels.ops import axial_attention_kernels as _axial
from esmkernels.ops import triangle_multiplicative_kernels as _trimul
from esmkernels.reference.esmfold import modeling as ref


class KernelTrunkOps:
    """Trunk op namespace calling the fused kernels with a fixed `backend` (picklable)."""

    def __init__(self, backend: str | None = None):
        self.backend = check_backend(backend)

    def triangle_multiplicative_update(self, *args: Any, **kwargs: Any):
        return _trimul.triangle_multiplicative_update(*args, backend=self.backend, **kwargs)

    def axial_attention(self, *args: Any, **kwargs: Any):
        return _axial.axial_attention(*args, backend=self.backend, **kwargs)

    def __repr__(self) -> str:
        return f"KernelTrunkOps(backend={self.backend!r})"


class EsmForProteinFolding(_FastMixin, ref.EsmForProteinFolding):
    """Fast ESMFold; API, outputs and checkpoints as `esmkernels.reference.esmfold`'s.

    Args:
        config: an ESMFold `EsmConfig` (`is_folding_model=True`).
        backend: None | "auto" | "triton" | "torch" for every kernel call (None: the environment
            variable ESMKERNELS_BACKEND); `from_pretrained(..., backend=...)` and the `backend`
            attribute set it too.
    """

    stem_cls = EsmModel

    def __init__(self, config, *, backend: str | None = None):
        # Read by the reference constructor when it builds the trunk; per instance so that two
        # models can use different backends.
        self.__dict__["_trunk_ops"] = KernelTrunkOps(backend)
        super().__init__(config)
        self._init_backend(backend)

    @property
    def backend(self) -> str | None:
        return _FastMixin.backend.fget(self)

    @backend.setter
    def backend(self, value: str | None) -> None:
        _FastMixin.backend.fset(self, value)  # the stem's kernels
        self.__dict__["_trunk_ops"].backend = self.backend


__all__ = ["EsmForProteinFolding", "KernelTrunkOps"]
