"""Lean outputs of ESMFold (`forward(outputs="lean")`, `infer`'s default for long batches):
positions, pLDDT, pTM and PAE equal the full outputs', the [L, L, C] tensors are never made, and
the pTM / PAE head runs in the chunks the trunk runs in (observed by counting the head's calls).
"""

from __future__ import annotations

import math

import pytest
import torch

from esmkernels.models import fold_memory as fm
from esmkernels.reference.esmfold import inference
from tests.test_esmfold_model import random_sequence
from tests.test_esmfold_trunk import one_torch_thread  # noqa: F401
from tests.test_models_esmfold import fast_copy, tiny_model
from tests.tolerances import FP32

SHARED = ("positions", "plddt", "ptm", "predicted_aligned_error", "s_s", "lddt_head")
DROPPED = ("s_z", "distogram_logits", "ptm_logits", "aligned_confidence_probs")


class Calls:
    """Rows seen by each call of a head (a forward hook)."""

    def __init__(self, module):
        self.rows: list[int] = []
        self.handle = module.register_forward_hook(lambda m, a, o: self.rows.append(a[0].shape[1]))

    def remove(self):
        self.handle.remove()


def fold_both(model, ids, mask, chunk):
    model.set_chunk_size(chunk)
    with torch.no_grad():
        full = model(ids, attention_mask=mask, num_recycles=1)
        ptm_calls, disto_calls = Calls(model.ptm_head), Calls(model.distogram_head)
        lean = model(ids, attention_mask=mask, num_recycles=1, outputs="lean")
        ptm_calls.remove()
        disto_calls.remove()
    return full, lean, ptm_calls.rows, disto_calls.rows


@pytest.mark.parametrize("backend", [None, "torch"])  # None: the reference model
@pytest.mark.parametrize(("L", "chunk"), [(1, None), (9, 4), (13, 5), (16, None), (20, 3)])
def test_lean_equals_full(backend, L, chunk):
    model = tiny_model() if backend is None else fast_copy(tiny_model(), backend)
    g = torch.Generator().manual_seed(L)
    ids = torch.randint(0, 20, (2, L), generator=g)
    mask = torch.ones(2, L, dtype=torch.long)
    mask[1, max(1, L - 3) :] = 0  # a padded second sequence
    full, lean, ptm_rows, disto_rows = fold_both(model, ids, mask, chunk)
    for name in SHARED:
        torch.testing.assert_close(getattr(lean, name), getattr(full, name), **FP32, msg=name)
    assert lean.predicted_aligned_error.dtype == full.s_z.dtype
    assert lean.max_predicted_aligned_error == full.max_predicted_aligned_error
    for name in DROPPED:
        assert getattr(lean, name) is None, name
    # The head ran in the chunks (ceil(L / chunk) calls of at most `chunk` rows, all rows
    # once), and the distogram head never ran.
    step = L if chunk is None else min(chunk, L)
    assert len(ptm_rows) == math.ceil(L / step) and sum(ptm_rows) == L
    assert max(ptm_rows) <= step
    assert disto_rows == []


def test_lean_pdb_equals_full_pdb():
    model = tiny_model()
    seq = random_sequence(11, 4) + ":" + random_sequence(5, 5)
    with torch.no_grad():
        full = model.infer(seq, num_recycles=0, outputs="full", chain_linker="GG")
        lean = model.infer(seq, num_recycles=0, outputs="lean", chain_linker="GG")
    assert lean.distogram_logits is None
    assert model.output_to_pdb(lean) == model.output_to_pdb(full)
    torch.testing.assert_close(lean.mean_plddt, full.mean_plddt, **FP32)


def test_infer_default_is_lean_above_the_threshold(monkeypatch):
    model = tiny_model()
    monkeypatch.setattr(inference, "LEAN_OUTPUTS_ABOVE", 8)
    with torch.no_grad():
        short = model.infer(random_sequence(8, 1), num_recycles=0)
        long = model.infer(random_sequence(9, 1), num_recycles=0)
        packed = model.infer([random_sequence(9, 2), "ACD"], num_recycles=0, max_tokens_per_batch=9)
    assert short.s_z is not None and short.distogram_logits is not None
    assert long.s_z is None and long.predicted_aligned_error.shape == (1, 9, 9)
    # Packed: one mode for every record, from the longest sequence.
    assert all(o.s_z is None and o.predicted_aligned_error is not None for o in packed)


def test_bad_outputs_are_named():
    model = tiny_model()
    with pytest.raises(ValueError, match="outputs='small'"):
        model(torch.zeros(1, 3, dtype=torch.long), outputs="small")
    with pytest.raises(ValueError, match="outputs='small'"):
        model.infer("ACD", outputs="small")
    with pytest.raises(ValueError, match="outputs='small'"):
        fm.predict_fold_memory(tiny_model().config, 10, outputs="small")


def test_fast_model_auto_chunk_uses_the_calls_mode(monkeypatch):
    """ "auto" asks the memory model for the mode of the call."""
    model = fast_copy(tiny_model(), "torch")
    seen = []
    real = fm.auto_chunk_size

    def spy(*args, **kwargs):
        seen.append(kwargs.get("outputs"))
        return real(*args, **kwargs)

    monkeypatch.setattr(fm, "auto_chunk_size", spy)
    with torch.no_grad():
        model(torch.zeros(1, 5, dtype=torch.long), num_recycles=0, outputs="lean")
        model(torch.zeros(1, 5, dtype=torch.long), num_recycles=0)
    assert seen == ["lean", "full"]
