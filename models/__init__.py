"""Fast models built from `esmkernels.ops` kernels."""
