"""Fused Triton kernels with dispatch: the four ops and the registry that lists them.

The four public ops, one import away (as `torch.nn.functional` or `fla.ops`):

    >>> from esmkernels.ops import (  # doctest: +SKIP
    ...     axial_attention, layer_norm, rotary_attention, triangle_multiplicative_update,
    ... )

Each op is a package of the same shape, `ops/<package>/`:

    __init__.py   the public function (docstring: math, shapes, masks 1 = keep, example), its
                  validation and dispatch, and its registry entry `OP`
    op.py         the `torch.library` custom ops `esmkernels::<name>_fwd` / `_bwd`: fakes and
                  autograd (see `esmkernels.ops._custom_ops`)
    forward.py    Triton forward kernel(s) and the launchers that take and return tensors
    backward.py   Triton backward kernel(s) and launchers (or the documented recompute)
    torch_path.py (optional) the op's own PyTorch path, where it is not the reference's

The packages are `layernorm`, `rotary`, `trimul` and `axial`, named apart from the functions
re-exported here so that no export shadows a package. `esmkernels.ops.registry` lists them; the
rest of the house reads the registry. Shared infrastructure stays in private modules:
`_dispatch` (the backend rule), `_tuning` and `_recorded_configs` (autotune configs),
`_custom_ops` (registration). Importing this package compiles nothing and never touches CUDA.

Backend: every op takes `backend="auto" | "triton" | "torch"` (None: env ESMKERNELS_BACKEND) and
follows one rule, `esmkernels.ops._dispatch.choose`: "torch" runs the PyTorch path; "triton"
the kernels, or a ValueError naming why they cannot run the inputs here; "auto" the kernels on
CUDA inputs that the op's registry predicate accepts, else the PyTorch path.

Chunking: `chunk_size` (ops on the pair: the triangle update, axial attention) counts rows of
the pair everywhere, as in the reference trunk: output rows i of the triangle update, query
rows of attention (the rows of its logits). Each op derives its own tiling from it inside its
package: the triangle update slices its hidden channels (`trimul.channel_slice`) and recomputes
its backward `chunk_size` rows at a time; attention's PyTorch path attends `chunk_size` queries
at a time, while its kernels tile queries themselves and need no chunk. Outputs do not depend
on `chunk_size` beyond summation order.
"""

from esmkernels.ops import registry
from esmkernels.ops.axial import axial_attention as axial_attention
from esmkernels.ops.layernorm import layer_norm as layer_norm
from esmkernels.ops.rotary import rotary_attention as rotary_attention
from esmkernels.ops.trimul import triangle_multiplicative_update as triangle_multiplicative_update

__all__ = [op.name for op in registry.ops()]  # the registry is the list
