"""Fused Triton kernels with dispatch (see `esmkernels.ops._dispatch`)."""
