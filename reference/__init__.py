"""Plain-PyTorch reference implementation of ESM and ESMFold: readable, and the spec.

Every kernel and fast model is tested against these classes; they load the same checkpoints.

    >>> from esmkernels.reference import EsmForMaskedLM, EsmForProteinFolding  # doctest: +SKIP
"""

from esmkernels.reference.esm import (
    EsmForMaskedLM,
    EsmForSequenceClassification,
    EsmForTokenClassification,
    EsmModel,
)
from esmkernels.reference.esmfold.modeling import EsmForProteinFolding

__all__ = [
    "EsmForMaskedLM",
    "EsmForProteinFolding",
    "EsmForSequenceClassification",
    "EsmForTokenClassification",
    "EsmModel",
]
