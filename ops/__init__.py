"""Fused Triton kernels with dispatch (see `esmkernels.ops._dispatch`).

The four public ops, one import away (as `torch.nn.functional` or `fla.ops`):

    >>> from esmkernels.ops import (  # doctest: +SKIP
    ...     axial_attention, layer_norm, rotary_attention, triangle_multiplicative_update,
    ... )

Each op is a package of the same shape, `ops/<pkg>/`: `__init__.py` (the public function, its
validation and dispatch), `op.py` (the `torch.library` custom ops: fake + autograd, see
`esmkernels.ops._custom_ops`), `forward.py` and `backward.py` (jit kernels and the launchers
that take and return tensors). The packages are `layernorm`, `rotary`, `trimul` and `axial`,
named apart from the functions re-exported here so that no export shadows a package.
Importing this package compiles nothing and never touches CUDA.
"""

from esmkernels.ops.axial import axial_attention
from esmkernels.ops.layernorm import layer_norm
from esmkernels.ops.rotary import rotary_attention
from esmkernels.ops.trimul import triangle_multiplicative_update

__all__ = ["axial_attention", "layer_norm", "rotary_attention", "triangle_multiplicative_update"]
