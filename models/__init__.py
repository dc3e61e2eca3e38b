"""Fast models built from `esmkernels.ops` kernels (re-exported as `esmkernels.*`)."""

from esmkernels.models.esm import (
    EsmForMaskedLM,
    EsmForSequenceClassification,
    EsmForTokenClassification,
    EsmModel,
)
from esmkernels.models.esmfold import EsmForProteinFolding

__all__ = [
    "EsmForMaskedLM",
    "EsmForProteinFolding",
    "EsmForSequenceClassification",
    "EsmForTokenClassification",
    "EsmModel",
]
