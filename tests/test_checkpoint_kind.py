"""A checkpoint of the other model kind is named as such (issue 18): an ESMFold checkpoint
loaded as a language model says "this is an ESMFold checkpoint (use EsmForProteinFolding)",
not an `lm_head.bias` shape mismatch; a language model loaded as ESMFold says the reverse. For
the reference and the fast classes alike."""

from __future__ import annotations

import pytest

from esmkernels.models import esm as fast_esm
from esmkernels.models import esmfold as fast_fold
from esmkernels.reference import esm as ref_esm
from esmkernels.reference.esmfold import modeling as ref_fold
from tests._cli import fold_checkpoint, lm_checkpoint


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("kind")
    return lm_checkpoint(root), fold_checkpoint(root)


@pytest.mark.parametrize(
    "cls",
    [ref_esm.EsmForMaskedLM, ref_esm.EsmModel, fast_esm.EsmForMaskedLM, fast_esm.EsmModel],
    ids=lambda c: f"{c.__module__.split('.')[1]}.{c.__name__}",
)
def test_an_esmfold_checkpoint_loaded_as_a_language_model_is_named(ckpts, cls):
    _, fold = ckpts
    with pytest.raises(ValueError) as err:
        cls.from_pretrained(fold)
    assert "is an ESMFold checkpoint (use EsmForProteinFolding)" in str(err.value)
    assert "shape mismatch" not in str(err.value)


@pytest.mark.parametrize(
    "cls",
    [ref_fold.EsmForProteinFolding, fast_fold.EsmForProteinFolding],
    ids=lambda c: c.__module__.split(".")[1],
)
def test_a_language_model_loaded_as_esmfold_is_named(ckpts, cls):
    lm, fold = ckpts
    with pytest.raises(ValueError, match=r"is a language-model checkpoint \(.*use EsmForMaskedLM"):
        cls.from_pretrained(lm)
    assert cls.from_pretrained(fold).config.is_folding_model  # its own kind loads
