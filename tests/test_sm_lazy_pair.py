"""The structure module's pair input as a lazy row view (`trunk_functional.RowMap`).

In chunked inference the trunk hands the structure module `RowMap(z, trunk2sm_z)` instead of a
second [B, L, L, c_z_sm] tensor; the module composes its LayerNorm and IPA computes each block
of query rows when it reads them. With the same chunk the row blocks are the same as the
materialised path's, so on CPU the fold is bitwise equal. The second pair tensor is gone: the
structure phase's measured peak falls by about one SM pair tensor.
"""

from __future__ import annotations

import pytest
import torch

from esmkernels.core.configuration import StructureModuleConfig
from esmkernels.models import fold_memory as fm
from esmkernels.reference.esmfold.structure_module import StructureModule
from esmkernels.reference.esmfold.trunk_functional import RowMap, chunk_rows
from tests.test_esmfold_trunk import one_torch_thread  # noqa: F401
from tests.test_fold_memory import fold_model
from tests.test_models_esmfold import tiny_model
from tests.tolerances import FP32, MODEL_FP32

FOLD_FIELDS = ("positions", "frames", "plddt", "ptm", "s_s", "s_z", "predicted_aligned_error")


@pytest.fixture
def count_lazy_reads(monkeypatch):
    """Counts RowMap row reads, so a test can say which path ran."""
    calls = []
    original = RowMap.narrow

    def counting(self, dim, start, length):
        calls.append(length)
        return original(self, dim, start, length)

    monkeypatch.setattr(RowMap, "narrow", counting)
    return calls


def fold(model, ids, mask, *, lazy: bool):
    model.trunk._lazy_sm_pair = lazy
    try:
        with torch.no_grad():
            return model(ids, attention_mask=mask, num_recycles=1)
    finally:
        model.trunk._lazy_sm_pair = True


@pytest.mark.parametrize("length", [5, 13, 20])
@pytest.mark.parametrize("chunk", [4, 8])
def test_lazy_pair_fold_is_bitwise_the_materialised_fold(length, chunk, count_lazy_reads):
    """A padded batch of two, one recycle (z must survive the structure module unchanged)."""
    model = tiny_model()
    model.set_chunk_size(chunk)
    g = torch.Generator().manual_seed(length)
    ids = torch.randint(0, 20, (2, length), generator=g)
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, length - 2 :] = 0
    try:
        want = fold(model, ids, mask, lazy=False)
        assert not count_lazy_reads
        got = fold(model, ids, mask, lazy=True)
    finally:
        model.set_chunk_size(None)
    # The lazy path ran: 2 passes x 2 SM blocks, each reading every row once in chunks.
    assert sum(count_lazy_reads) == 2 * 2 * length
    assert max(count_lazy_reads) == min(chunk, length)
    for name in FOLD_FIELDS:
        a, b = getattr(got, name), getattr(want, name)
        # Same math in the same row blocks; a GEMM's last bits may still depend on its
        # operands' alignment (a fresh block vs a slice of a big tensor) on some CPUs.
        torch.testing.assert_close(a, b, **MODEL_FP32, msg=lambda m, name=name: f"{name}: {m}")


def test_unchunked_and_training_folds_keep_the_tensor_path(count_lazy_reads):
    model = tiny_model()
    ids = torch.randint(0, 20, (1, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(ids, num_recycles=0)  # chunk None
    model.set_chunk_size(4)
    try:
        model(ids, num_recycles=0)  # autograd on: no in-place inference, no lazy pair
    finally:
        model.set_chunk_size(None)
    assert not count_lazy_reads


def structure_phase_bytes(model, ids, *, lazy: bool) -> int:
    """Peak bytes allocated from the end of the last trunk block to the end of the structure
    module (trunk2sm_z, then the module), above what was alive at its start."""
    marks: dict[str, int] = {}
    model.trunk._lazy_sm_pair = lazy
    with torch.no_grad(), fm.track_peak_bytes() as tracker:

        def trunk_blocks_done(*_):
            tracker.peak = marks["start"] = tracker.current

        def structure_done(*_):
            marks["peak"] = tracker.peak

        hooks = [
            model.trunk.blocks[-1].register_forward_hook(trunk_blocks_done),
            model.trunk.structure_module.register_forward_hook(structure_done),
        ]
        try:
            model(ids, num_recycles=0)
        finally:
            model.trunk._lazy_sm_pair = True
            for hook in hooks:
                hook.remove()
    return marks["peak"] - marks["start"]


def test_lazy_pair_removes_the_second_pair_tensor():
    """The lazy path's structure phase peaks lower by about one SM pair tensor (it keeps one
    block of its rows instead: 1/8 of it here)."""
    model = fold_model(64, 32, torch.float32)  # SM pair c_z 128: 4x the trunk's pair
    length, chunk = 64, 8
    c_z_sm = model.trunk.structure_module.config.pairwise_dim
    sm_pair_bytes = length * length * c_z_sm * 4
    ids = torch.randint(0, 20, (1, length), generator=torch.Generator().manual_seed(0))
    model.set_chunk_size(chunk)
    try:
        materialised = structure_phase_bytes(model, ids, lazy=False)
        lazy = structure_phase_bytes(model, ids, lazy=True)
    finally:
        model.set_chunk_size(None)
    assert materialised - lazy >= 0.7 * sm_pair_bytes, (materialised, lazy, sm_pair_bytes)
    assert lazy < 0.6 * materialised, (materialised, lazy)


# ----------------------------------------------------------------------------------------------
# RowMap and chunk_rows, StructureModule with a RowMap pair
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [None, 1, 3, 7, 100])
def test_chunk_rows_reads_a_row_map_block_by_block(chunk):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 7, 7, 4, generator=g)
    lin = torch.nn.Linear(4, 5)
    lazy = RowMap(base, lin)
    assert lazy.shape == (2, 7, 7, 5) and lazy.dtype == torch.float32 and lazy.dim() == 4
    fn = lambda rows, other: rows.sum(-1) * other  # noqa: E731
    other = torch.randn(2, 7, 7, generator=g)
    with torch.no_grad():
        got = chunk_rows(fn, lazy, other, chunk_size=chunk)
        want = chunk_rows(fn, lin(base), other, chunk_size=chunk)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_row_map_rejects_bad_arguments():
    base = torch.randn(1, 4, 4, 3)
    with pytest.raises(TypeError, match="tensor"):
        RowMap([1, 2], torch.nn.Identity())
    with pytest.raises(ValueError, match="dim 4"):
        RowMap(base, torch.nn.Identity(), dim=4)
    with pytest.raises(ValueError, match="rank"):
        RowMap(base, lambda t: t.sum(-1))
    with pytest.raises(ValueError, match="cannot narrow dim 2"):
        RowMap(base, torch.nn.Identity()).narrow(2, 0, 1)
    with pytest.raises(ValueError, match="rows must agree|disagree"):
        chunk_rows(torch.add, RowMap(base, torch.nn.Identity()), torch.ones(1, 3), chunk_size=2)


SM_CONFIG = StructureModuleConfig(
    sequence_dim=16, pairwise_dim=8, ipa_dim=8, resnet_dim=8, num_heads_ipa=2,
    num_qk_points=2, num_v_points=2, num_blocks=2, dropout_rate=0.0,
)  # fmt: skip


@pytest.mark.parametrize("chunk", [None, 3, 4])
def test_structure_module_with_a_row_map_pair(chunk):
    torch.manual_seed(0)
    sm = StructureModule(SM_CONFIG).eval()
    with torch.no_grad():
        for p in sm.parameters():
            p.normal_(0.0, 0.3)  # the "final" inits are zero: make every path count
    g = torch.Generator().manual_seed(1)
    B, N, c_z = 2, 9, 12
    z = torch.randn(B, N, N, c_z, generator=g)
    single = torch.randn(B, N, 16, generator=g)
    aatype = torch.randint(0, 20, (B, N), generator=g)
    mask = torch.ones(B, N)
    mask[1, -3:] = 0
    proj = torch.nn.Linear(c_z, 8)
    before = z.clone()
    with torch.no_grad():
        want = sm({"single": single, "pair": chunk_rows(proj, z, chunk_size=chunk)}, aatype,
                  mask, chunk_size=chunk, inplace=True)  # fmt: skip
        got = sm({"single": single, "pair": RowMap(z, proj)}, aatype, mask, chunk_size=chunk,
                 inplace=True)  # fmt: skip
    assert torch.equal(z, before), "the RowMap's base was written"
    for name in ("positions", "frames", "angles", "states", "single"):
        if chunk is None:  # one block of all rows either way, computed in another order
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5)
        else:  # the same row blocks (last bits: see the fold test above)
            torch.testing.assert_close(got[name], want[name], **FP32)
