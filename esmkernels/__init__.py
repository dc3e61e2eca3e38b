"""esmkernels: fast, checkpoint-compatible ESM-1b / ESM-1v / ESM-2 / ESMFold.

The public model classes are the fast ones (`esmkernels.models`): the same API, outputs,
parameter names and checkpoints as transformers' ESM classes, running fused Triton kernels on
CUDA and PyTorch elsewhere. The plain-PyTorch spec is `esmkernels.reference`.

    >>> from esmkernels import EsmForMaskedLM, EsmTokenizer  # doctest: +SKIP

Importing this package never touches CUDA; kernels compile on first use.
"""

from esmkernels.core.checkpoint import FORMATS, load_checkpoint
from esmkernels.core.configuration import (
    EsmConfig,
    EsmFoldConfig,
    StructureModuleConfig,
    TrunkConfig,
)
from esmkernels.core.hf_checkpoint import save_checkpoint
from esmkernels.core.modeling_utils import PreTrainedMixin
from esmkernels.core.outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    ModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from esmkernels.core.tokenization import BatchEncoding, EsmTokenizer
from esmkernels.core.variants import score_variants
from esmkernels.integrations import accelerate, patch_transformers, unpatch_transformers
from esmkernels.jobs.embeddings import EmbeddingStore, open_embeddings
from esmkernels.jobs.fasta import read_fasta, write_fasta
from esmkernels.models.esm import (
    EsmForMaskedLM,
    EsmForSequenceClassification,
    EsmForTokenClassification,
    EsmModel,
)
from esmkernels.models.esmfold import EsmForProteinFolding
from esmkernels.reference.esmfold.modeling import EsmForProteinFoldingOutput

__version__ = "0.1.0"

__all__ = [
    "FORMATS",
    "BaseModelOutputWithPooling",
    "BatchEncoding",
    "EmbeddingStore",
    "EsmConfig",
    "EsmFoldConfig",
    "EsmForMaskedLM",
    "EsmForProteinFolding",
    "EsmForProteinFoldingOutput",
    "EsmForSequenceClassification",
    "EsmForTokenClassification",
    "EsmModel",
    "EsmTokenizer",
    "MaskedLMOutput",
    "ModelOutput",
    "PreTrainedMixin",
    "SequenceClassifierOutput",
    "StructureModuleConfig",
    "TokenClassifierOutput",
    "TrunkConfig",
    "__version__",
    "accelerate",
    "load_checkpoint",
    "open_embeddings",
    "patch_transformers",
    "read_fasta",
    "save_checkpoint",
    "score_variants",
    "unpatch_transformers",
    "write_fasta",
]
