"""Integrations with other libraries' ESM models.

`patch_transformers` / `unpatch_transformers` / `accelerate` (see
`esmkernels.integrations.transformers_patch`) run transformers' own ESM classes on esmkernels'
kernels. Importing this package never imports transformers.
"""

from esmkernels.integrations.transformers_patch import (
    accelerate,
    patch_transformers,
    unpatch_transformers,
)

__all__ = ["accelerate", "patch_transformers", "unpatch_transformers"]
