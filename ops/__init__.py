"""Fused Triton kernels with dispatch (see `esmkernels.ops._dispatch`).

The four public ops, one import away (as `torch.nn.functional` or `fla.ops`):

    >>> from esmkernels.ops import (  # doctest: +SKIP
    ...     axial_attention, layer_norm, rotary_attention, triangle_multiplicative_update,
    ... )

Each op: jit kernels -> launchers -> custom ops (`torch.library`: fake + autograd, see
`esmkernels.ops._custom_ops`) -> public function with `backend=`. They
live in `<op>_kernels.py` modules (`esmkernels.ops.layer_norm_kernels` etc.), named so that the
functions re-exported here never shadow a module; launchers are imported from there.
Importing this package compiles nothing and never touches CUDA.
"""

from esmkernels.ops.axial_attention_kernels import axial_attention
from esmkernels.ops.layer_norm_kernels import layer_norm
from esmkernels.ops.rotary_attention_kernels import rotary_attention
from esmkernels.ops.triangle_multiplicative_kernels import triangle_multiplicative_update

__all__ = ["axial_attention", "layer_norm", "rotary_attention", "triangle_multiplicative_update"]
