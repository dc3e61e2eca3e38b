"""Fused Triton kernels with dispatch (see `esmkernels.ops._dispatch`).

Each op: jit kernels -> launchers -> autograd Function -> public function with `backend=`.

    >>> from esmkernels.ops import layer_norm, rotary_attention  # doctest: +SKIP
"""

from esmkernels.ops.axial_attention import AxialAttentionFunction, axial_attention
from esmkernels.ops.layer_norm import LayerNormFunction, layer_norm
from esmkernels.ops.rotary_attention import RotaryAttentionFunction, rotary_attention
from esmkernels.ops.triangle_multiplicative import (
    TriangleMultiplicativeFunction,
    triangle_multiplicative_update,
)

__all__ = [
    "AxialAttentionFunction",
    "LayerNormFunction",
    "RotaryAttentionFunction",
    "TriangleMultiplicativeFunction",
    "axial_attention",
    "layer_norm",
    "rotary_attention",
    "triangle_multiplicative_update",
]
