"""Fused Triton kernels with dispatch (see `esmkernels.ops._dispatch`).

Each op: jit kernels -> launchers -> autograd Function -> public function with `backend=`.
Import the public functions from their modules:

    >>> from esmkernels.ops.layer_norm import layer_norm
    >>> from esmkernels.ops.rotary_attention import rotary_attention
    >>> from esmkernels.ops.triangle_multiplicative import triangle_multiplicative_update
    >>> from esmkernels.ops.axial_attention import axial_attention

The package deliberately re-exports nothing: three public functions share their module's name,
and a package attribute `layer_norm` bound to the function would shadow the module
(`from esmkernels.ops import layer_norm as ln` would no longer give the module).
"""
