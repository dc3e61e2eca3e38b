"""Batched folding: `infer(sequences, max_tokens_per_batch=...)` packs sorted batches under a
token budget, returns one output per sequence in input order, and a sequence's outputs do not
depend on the batch it was packed into."""

from __future__ import annotations

import torch
from hypothesis import example, given
from hypothesis import strategies as st

from esmkernels.core.batching import token_batches
from tests.test_esmfold_model import random_sequence
from tests.test_esmfold_trunk import one_torch_thread  # noqa: F401
from tests.test_models_esmfold import FIELDS, fast_copy, tiny_model
from tests.tolerances import MODEL_FP32


def test_infer_packs_with_the_one_batcher(monkeypatch):
    """infer's batches are `token_batches`' (longest first), linkers counted in the lengths."""
    fast = fast_copy(tiny_model(), "torch")
    seqs = ["ACDEFGH", "AC", "ACDEF", "A:C"]  # lengths 7, 2, 5 and 1 + 25 + 1 = 27
    shapes = []
    forward = type(fast).forward

    def spy(self, input_ids, *args, **kwargs):
        shapes.append(tuple(input_ids.shape))
        return forward(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(type(fast), "forward", spy)
    with torch.no_grad():
        fast.infer(seqs, num_recycles=0, max_tokens_per_batch=12)
    want = token_batches([7, 2, 5, 27], 12)
    assert want == [[3], [0], [2, 1]]
    assert shapes == [(1, 27), (1, 7), (2, 5)]


def _field(out, name):
    t = getattr(out, name)
    return t[:, 0] if name == "positions" else t[0]


@given(
    lengths=st.lists(st.integers(1, 8), min_size=2, max_size=4),
    budget=st.sampled_from([1, 12, 1000]),
)
@example(lengths=[7, 2, 5], budget=12)  # two batches, shuffled order
def test_outputs_independent_of_packing(lengths, budget):
    fast = fast_copy(tiny_model(), "torch")
    seqs = [random_sequence(n, seed=10 * i + n) for i, n in enumerate(lengths)]
    with torch.no_grad():
        packed = fast.infer(seqs, num_recycles=0, max_tokens_per_batch=budget)
        alone = [fast.infer(s, num_recycles=0) for s in seqs]
    assert len(packed) == len(seqs)
    for got, want, n in zip(packed, alone, lengths):
        assert got.positions.shape[2] == n and got.s_z.shape[1:3] == (n, n)  # input order, cut
        for name in (*FIELDS, "mean_plddt"):
            torch.testing.assert_close(_field(got, name), _field(want, name), **MODEL_FP32)


def test_infer_pdbs_with_budget_keeps_order():
    fast = fast_copy(tiny_model(), "torch")
    seqs = [random_sequence(6, 1), random_sequence(3, 2), "ACDE:FG"]
    with torch.no_grad():
        pdbs = fast.infer_pdbs(seqs, num_recycles=0, max_tokens_per_batch=7)
        want = [fast.infer_pdb(s, num_recycles=0) for s in seqs]
    assert [p.count(" CA ") for p in pdbs] == [6, 3, 6]
    for got, ref in zip(pdbs, want):
        assert got.splitlines()[0] == ref.splitlines()[0]
