"""Inputs users really pass to the fast models, the transformers patch and the recorded autotune
configs, beyond the ones their own tests draw (issue 22; table: `tests/INPUT_VARIANTS.md`).

- fast ESM-2: position ids that differ per sequence, through the packed (unpadded) path and the
  padded one; attention masks as bool / int / float;
- transformers patch: patching twice then unpatching leaves every class and module attribute of
  transformers' ESM modules as it was; `accelerate` twice (same or other options);
- recorded autotune configs: a launch that passes the key arguments by keyword.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

import esmkernels
from esmkernels.ops import _recorded_configs as rc
from tests._launches import LAYER_NORM, ROTARY_FWD, launches
from tests.test_models_esm import assert_path, assert_real_close, batch, make_pair
from tests.test_recorded_configs import _blocks, _row, _write, fake_gpu  # noqa: F401 (fixture)

BACKENDS = ("torch", "triton")


# ------------------------------------------------------------------------------------------------
# Fast ESM-2: per-row position ids and mask dtypes, packed and padded
# ------------------------------------------------------------------------------------------------


def _per_row_positions(device) -> torch.Tensor:
    """[3, 9] rotary positions whose relative offsets differ per row (a per-row shift alone would
    not change rotary attention): steps 1, 2 and 3."""
    return torch.arange(9, device=device)[None] * torch.tensor([[1], [2], [3]], device=device)


@pytest.mark.parametrize("unpad", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_per_row_position_ids_match_the_reference(backend, unpad, device):
    """[B, L] position ids, one row each, reach every sequence's own rotary angles: through the
    packed path (gathered per token) and the padded one (the op's [B, L] positions)."""
    reference, model = make_pair("EsmModel", "esm2", backend, device)
    model.encoder.unpad = unpad
    tokens, keep = batch(device)
    positions = _per_row_positions(device)
    with torch.no_grad():
        want = reference(tokens, attention_mask=keep, position_ids=positions).last_hidden_state
        shared = reference(tokens, attention_mask=keep, position_ids=positions[:1])
        # no gradients: the inference stack (on the torch path, the packed CPU one)
        inference = model(tokens, attention_mask=keep, position_ids=positions).last_hidden_state
    assert not torch.allclose(want[keep][6:], shared.last_hidden_state[keep][6:], atol=1e-3)
    assert_real_close(inference, want, keep)
    with launches() as seen:  # with gradients: the ops
        got = model(tokens, attention_mask=keep, position_ids=positions).last_hidden_state
    if backend == "triton":
        assert_path(seen, backend, model, backward=False)
    else:  # the path named ran: packed (varlen) or padded
        assert not seen.kernels, seen
        layers = model.config.num_hidden_layers
        assert seen.fallbacks["rotary_attention_varlen"] == (layers if unpad else 0), seen
        assert seen.fallbacks["rotary_attention_padded"] >= layers, seen
    assert_real_close(got.detach(), want, keep)


@pytest.mark.parametrize("unpad", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_mask_dtypes_give_the_bool_masks_output(backend, unpad, device):
    """Tokenizers return int64 masks, some pipelines float or bool ones: same outputs."""
    _, model = make_pair("EsmForMaskedLM", "esm2", backend, device)
    model.esm.encoder.unpad = unpad
    tokens, keep = batch(device)
    with torch.no_grad():
        want = model(tokens, attention_mask=keep).logits
        for dtype in (torch.int64, torch.int32, torch.float32, torch.uint8):
            got = model(tokens, attention_mask=keep.to(dtype)).logits
            assert_real_close(got, want, keep, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Recorded autotune configs: key arguments passed by keyword
# ------------------------------------------------------------------------------------------------


def test_recorded_key_reads_keyword_arguments(fake_gpu, tmp_path, monkeypatch):  # noqa: F811
    """The launchers pass constexprs and shape buckets by keyword: the lookup key is the same
    whether an argument comes positionally or by keyword, and a keyword launch runs the
    recorded config without a sweep."""
    key = (16, "torch.float32", "torch.float32")
    x = torch.arange(10, dtype=torch.float32)
    y = torch.zeros_like(x)
    positional = rc.autotune_key(fake_gpu, {"x_ptr": x, "y_ptr": y, "n": 10, "N_KEY": 16}, {})
    for named, kwargs in (
        ({"x_ptr": x, "y_ptr": y}, {"n": 10, "N_KEY": 16}),
        ({"x_ptr": x}, {"y_ptr": y, "n": 10, "N_KEY": 16}),
        ({}, {"x_ptr": x, "y_ptr": y, "n": 10, "N_KEY": 16}),
    ):
        assert rc.autotune_key(fake_gpu, named, kwargs) == positional == key, kwargs

    _write(tmp_path, monkeypatch, [_row(key, 16, 16, 2, 1)])
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    benched = []

    def bench(*args, config, **kwargs):
        benched.append(config)
        return [1.0, 1.0, 1.0]

    monkeypatch.setattr(fake_gpu, "_bench", bench)
    fake_gpu[(1,)](x, y, n=x.numel(), N_KEY=16)
    assert torch.equal(x, y)
    assert len(benched) <= 1, f"a sweep over {len(benched)} configs: the recorded row missed"
    assert list(fake_gpu.cache) == [key]
    assert _blocks([fake_gpu.cache[key]]) == [(16, 16, 2, 1)]


def test_recorded_key_of_every_real_autotuned_kernel_reads_keywords():
    """Every autotuned kernel of the package: its key computed from an all-keyword launch equals
    the one from positional arguments (the real launchers mix both)."""
    import esmkernels.ops  # noqa: F401 - imports every op package

    for name in [op for op in rc.autotuners()]:
        tuner = rc.autotuners()[name]
        args = {a: (torch.zeros(1) if a.endswith("_ptr") else 7) for a in tuner.arg_names}
        first = dict(list(args.items())[:2])
        rest = dict(list(args.items())[2:])
        want = rc.autotune_key(tuner, args, {})
        assert len(want) > 0, name
        assert rc.autotune_key(tuner, first, rest) == want, name
        assert rc.autotune_key(tuner, {}, args) == want, name
        assert json.dumps(list(want))  # a row key the table can hold


# ------------------------------------------------------------------------------------------------
# transformers: patch twice then unpatch; accelerate twice
# ------------------------------------------------------------------------------------------------


def _transformers_state(*modules) -> dict:
    """Every attribute of every class defined in `modules` and every module-level name, by
    identity: what a patch may change."""
    state = {}
    for mod in modules:
        for name, obj in vars(mod).items():
            state[(mod.__name__, name)] = id(obj)
            if isinstance(obj, type):
                for attr, value in vars(obj).items():
                    state[(mod.__name__, name, attr)] = id(value)
    return state


@pytest.mark.peer
def test_patch_twice_then_unpatch_restores_transformers_exactly():
    pytest.importorskip("transformers")
    from transformers import modeling_utils
    from transformers.models.esm import modeling_esm, modeling_esmfold

    from esmkernels.integrations import transformers_patch as tp

    modules = (modeling_esm, modeling_esmfold, modeling_utils)
    esmkernels.unpatch_transformers()
    before = _transformers_state(*modules)
    try:
        esmkernels.patch_transformers(backend="torch")
        once = _transformers_state(*modules)
        esmkernels.patch_transformers(backend="triton", unpad=False)
        twice = _transformers_state(*modules)
        assert tp.patched_options() == tp.Options(unpad=False, backend="triton")
        # patching again replaces the patch: the same attributes changed, nothing stacked
        assert once.keys() == twice.keys()
        changed = {k for k in once if once[k] != before.get(k)}
        assert changed and changed == {k for k in twice if twice[k] != before.get(k)}
        esmkernels.unpatch_transformers()
        assert _transformers_state(*modules) == before
        esmkernels.unpatch_transformers()  # a second unpatch is a no-op
        assert _transformers_state(*modules) == before
        assert tp.patched_options() is None
    finally:
        esmkernels.unpatch_transformers()


@pytest.mark.peer
def test_patch_twice_builds_models_accelerated_once_with_the_last_options():
    transformers = pytest.importorskip("transformers")
    from tests.test_patch_transformers import lm_config

    try:
        esmkernels.patch_transformers(backend="torch")
        esmkernels.patch_transformers(backend="triton")
        model = transformers.EsmForMaskedLM(lm_config("esm2")).eval()
    finally:
        esmkernels.unpatch_transformers()
    tokens, mask = _hf_batch()
    with torch.no_grad(), launches() as seen:
        model(tokens, attention_mask=mask)
    seen.no_fallback()
    n_ln = sum(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    seen.expect(LAYER_NORM[0], exactly=n_ln)
    seen.expect(*ROTARY_FWD, exactly=model.config.num_hidden_layers)


def _hf_batch():
    from tests.test_peer_transformers_lm import batch as hf_batch

    return hf_batch()


@pytest.mark.peer
def test_accelerate_twice_is_accelerate_once_and_takes_the_new_options():
    pytest.importorskip("transformers")
    from tests.test_patch_transformers import lm_pair

    hf = lm_pair("EsmForMaskedLM", "esm2")
    tokens, mask = _hf_batch()
    with torch.no_grad():
        want = hf(tokens, attention_mask=mask).logits[mask.bool()]
    model = esmkernels.accelerate(copy.deepcopy(hf), backend="torch")
    classes = [type(m) for m in model.modules()]
    assert esmkernels.accelerate(model, backend="triton") is model
    assert [type(m) for m in model.modules()] == classes, "a module was wrapped twice"
    with torch.no_grad(), launches() as seen:
        got = model(tokens, attention_mask=mask).logits[mask.bool()]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    seen.no_fallback()
    n_ln = sum(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    seen.expect(LAYER_NORM[0], exactly=n_ln)
    seen.expect(*ROTARY_FWD, exactly=model.config.num_hidden_layers)
    esmkernels.accelerate(model, backend="torch")
    with torch.no_grad(), launches() as seen:
        again = model(tokens, attention_mask=mask).logits[mask.bool()]
    assert not seen.kernels, seen
    torch.testing.assert_close(again, want, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# Fast ESMFold: the residue mask as bool / int / float (transformers' pipelines pass float)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_esmfold_mask_dtypes_give_the_bool_masks_fold(backend):
    """A padded batch of AlphaFold2-ordered residue ids: an int64 (tokenizers) or float32 mask
    folds as the bool one (stem, trunk kernels and structure module all read it)."""
    from tests.test_models_esmfold import assert_same_fold, fast_copy, tiny_model

    fast = fast_copy(tiny_model(), backend)
    fast.set_chunk_size(None)
    g = torch.Generator().manual_seed(5)
    aatype = torch.randint(0, 20, (2, 7), generator=g)
    keep = torch.ones(2, 7, dtype=torch.bool)
    keep[1, 4:] = False
    with torch.no_grad():
        want = fast(aatype, attention_mask=keep, num_recycles=0)
        for dtype in (torch.int64, torch.float32):
            got = fast(aatype, attention_mask=keep.to(dtype), num_recycles=0)
            assert_same_fold(got, want, keep, f"{backend} mask {dtype}")


@pytest.mark.parametrize("env", BACKENDS)
def test_esmfold_without_a_backend_follows_the_environment(env, monkeypatch):
    """backend=None (the default of `from_pretrained`): ESMKERNELS_BACKEND at each call, for the
    stem's ops and the trunk's ops alike; an env "torch" launches no kernel at all."""
    from esmkernels.models.esmfold import EsmForProteinFolding
    from tests._launches import AXIAL_FWD, TRIMUL_FWD
    from tests.test_models_esmfold import tiny_model

    fast = EsmForProteinFolding(tiny_model().config)
    fast.load_state_dict(tiny_model().state_dict())
    fast.eval().set_chunk_size(None)
    assert fast.backend is None
    monkeypatch.setenv("ESMKERNELS_BACKEND", env)
    aatype = torch.randint(0, 20, (1, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), launches() as seen:
        fast(aatype, num_recycles=0)
    if env == "torch":
        assert not seen.kernels and seen.fallbacks, seen
    else:
        seen.expect(*TRIMUL_FWD[:1], *AXIAL_FWD, *ROTARY_FWD, LAYER_NORM[0])
        for name in ("axial_attention", "triangle_multiplicative_update", "layer_norm"):
            assert not seen.fallbacks[name], seen
