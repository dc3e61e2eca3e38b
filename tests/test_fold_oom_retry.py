"""Out of memory through the API: `infer` retries a sequence alone at half the chunk size, down to
`MIN_CHUNK_SIZE`, then raises naming L and the chunks tried; packed batches and `infer_records`
split a failing batch into its sequences. The out-of-memory errors are fakes raised by the trunk
(monkeypatched), so the test observes which chunk size each attempt ran with."""

from __future__ import annotations

import pytest
import torch

from esmkernels.reference.esmfold.inference import MIN_CHUNK_SIZE, retry_chunk_sizes
from esmkernels.reference.esmfold.modeling import EsmForProteinFolding as RefFolding
from tests.test_esmfold_model import random_sequence
from tests.test_esmfold_trunk import one_torch_thread  # noqa: F401
from tests.test_models_esmfold import FIELDS, fast_copy, tiny_model
from tests.tolerances import MODEL_FP32

SEQ = random_sequence(20, seed=3)


def reference_copy() -> RefFolding:
    model = RefFolding(tiny_model().config)
    model.load_state_dict(tiny_model().state_dict())
    return model.eval()


def fake_trunk_oom(monkeypatch, model, fails):
    """Make `model.trunk` raise torch.OutOfMemoryError when `fails(batch, length, chunk, call)`
    (call counts from 1); returns the (batch, chunk) of every trunk call."""
    calls = []
    real = model.trunk.forward

    def trunk(s_s_0, *args, **kwargs):
        calls.append((s_s_0.shape[0], model.trunk.chunk_size))
        if fails(*s_s_0.shape[:2], model.trunk.chunk_size, len(calls)):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(s_s_0, *args, **kwargs)

    monkeypatch.setattr(model.trunk, "forward", trunk)
    return calls


def assert_same(got, want):
    for name in (*FIELDS, "mean_plddt"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), **MODEL_FP32)


def test_retry_chunk_sizes():
    assert retry_chunk_sizes(64, 1000) == [32, 16, 8, 4]
    assert retry_chunk_sizes(None, 40) == [20, 10, 5]  # unchunked: L rows per block
    assert retry_chunk_sizes(512, 20) == [10, 5]  # a chunk >= L ran as unchunked
    assert retry_chunk_sizes(MIN_CHUNK_SIZE, 100) == []


@pytest.mark.parametrize("make", [reference_copy, lambda: fast_copy(tiny_model(), "torch")])
def test_one_oom_is_retried_at_half_the_chunk(monkeypatch, make):
    model = make()
    want = model.infer(SEQ, num_recycles=0)
    model.set_chunk_size(16)
    calls = fake_trunk_oom(monkeypatch, model, lambda b, n_res, chunk, n: n == 1)
    got = model.infer(SEQ, num_recycles=0)
    assert calls == [(1, 16), (1, 8)]
    assert model.chunk_size == 16 and model.last_chunk_size == 8  # setting restored
    assert_same(got, want)


def test_auto_chunk_halves_what_the_memory_model_picked(monkeypatch):
    model = fast_copy(tiny_model(), "torch")
    assert model.chunk_size == "auto"
    calls = fake_trunk_oom(monkeypatch, model, lambda b, n_res, chunk, n: n == 1)
    model.infer(SEQ, num_recycles=0)
    picked = calls[0][1]
    assert calls[1:] == [(1, retry_chunk_sizes(picked, 20)[0])]
    assert model.chunk_size == "auto"


def test_out_of_memory_at_every_chunk_names_length_and_chunks(monkeypatch):
    model = reference_copy()
    model.set_chunk_size(None)
    calls = fake_trunk_oom(monkeypatch, model, lambda *_: True)
    with pytest.raises(torch.OutOfMemoryError, match=r"L=20 .* chunk sizes \[None, 10, 5\]"):
        model.infer(SEQ, num_recycles=0)
    assert [c for _, c in calls] == [None, 10, 5]
    assert model.chunk_size is None


def test_other_errors_are_not_retried(monkeypatch):
    model = reference_copy()
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(model.trunk, "forward", broken)
    with pytest.raises(RuntimeError, match="shapes"):
        model.infer(SEQ, num_recycles=0)
    assert len(calls) == 1

    def refused(*args, **kwargs):  # the memory model's verdict: no chunk size fits
        calls.append(2)
        raise MemoryError("predicted peak exceeds the free memory at every chunk size")

    monkeypatch.setattr(model.trunk, "forward", refused)
    with pytest.raises(MemoryError):
        model.infer(SEQ, num_recycles=0)
    assert calls == [1, 2]


def test_a_padded_batch_is_not_retried_but_a_packed_one_is_split(monkeypatch):
    model = reference_copy()
    model.set_chunk_size(16)
    seqs = [SEQ, random_sequence(12, seed=4)]
    want = [model.infer(s, num_recycles=0) for s in seqs]
    calls = fake_trunk_oom(monkeypatch, model, lambda b, *_: b > 1)
    with pytest.raises(torch.OutOfMemoryError):
        model.infer(seqs, num_recycles=0)
    assert calls == [(2, 16)]
    calls.clear()
    got = model.infer(seqs, num_recycles=0, max_tokens_per_batch=100)
    assert calls == [(2, 16), (1, 16), (1, 16)]  # the batch, then each sequence alone
    for g, w in zip(got, want):
        assert_same(g, w)


def test_infer_records_isolates_a_sequence_that_never_fits(monkeypatch):
    model = reference_copy()
    model.set_chunk_size(8)
    seqs = [SEQ, random_sequence(6, seed=5), "ACDE:FG"]
    want = model.infer(seqs[1], num_recycles=0)
    # Batches fail; the 20-residue sequence fails alone at any chunk; the others fit alone.
    calls = fake_trunk_oom(monkeypatch, model, lambda b, n_res, *_: b > 1 or n_res == 20)
    records = model.infer_records(seqs, num_recycles=0)
    assert calls == [(3, 8), (1, 8), (1, 4), (1, 8), (1, 8)]
    assert len(records) == 3
    bad, good, dimer = records
    assert isinstance(bad.error, torch.OutOfMemoryError) and bad.output is None
    assert "L=20" in str(bad.error) and "[8, 4]" in str(bad.error)
    assert good.error is None and good.chunk_size == 8 and good.seconds >= 0
    assert_same(good.output, want)
    assert dimer.error is None and dimer.output.positions.shape[2] == 4 + 25 + 2
    with pytest.raises(ValueError, match="invalid residue letter '1'"):
        model.infer_records(["AC1"], num_recycles=0)  # input errors raise before any work
