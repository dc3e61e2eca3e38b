"""esmkernels: fast, checkpoint-compatible ESM-1b / ESM-1v / ESM-2 / ESMFold.

Importing this package never touches CUDA; kernels compile on first use.
"""

from esmkernels.configuration import EsmConfig, EsmFoldConfig, StructureModuleConfig, TrunkConfig

__version__ = "0.1.0"

__all__ = [
    "EsmConfig",
    "EsmFoldConfig",
    "StructureModuleConfig",
    "TrunkConfig",
    "__version__",
]
