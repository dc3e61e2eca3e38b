"""`esmkernels.accelerate` / `patch_transformers`: transformers' own ESM models on our kernels.

Patched vs unpatched transformers models (same weights), with the torch backend and with the
Triton kernels under the interpreter: all four LM classes (ESM-2 and ESM-1b style) and ESMFold,
random weights, padded batches with `<mask>`; forward outputs at real positions, losses, and the
gradients of a fine-tuning step. Every "triton" test counts kernel launches and asserts that no
torch path ran (`tests/_launches.py`): agreeing with transformers alone would also pass if a
fallback had run. Transformers' own computation for `output_attentions` and attention dropout is
asserted the same way (no attention kernel launched). fp32, tolerance MODEL_FP32.
"""

from __future__ import annotations

import copy

import pytest
import torch

import esmkernels
from esmkernels.integrations import transformers_patch as tp
from tests import _launches as L
from tests.test_peer_transformers_lm import batch, config_values, labels_for, perturb
from tests.tolerances import MODEL_FP32

transformers = pytest.importorskip("transformers")
modeling_esm = pytest.importorskip("transformers.models.esm.modeling_esm")
pytestmark = pytest.mark.peer

LM_CLASSES = ("EsmModel", "EsmForMaskedLM", "EsmForSequenceClassification", "EsmForTokenClassification")  # fmt: skip
# The LM kernels' launches in a padded batch: LayerNorm and varlen rotary attention.
LM_FWD = (*L.LAYER_NORM[:1], *L.ROTARY_FWD)
LM_BWD = (L.LAYER_NORM[1], *L.ROTARY_BWD)


@pytest.fixture(autouse=True)
def _unpatched():
    """No test leaves transformers patched, whatever it asserts."""
    yield
    esmkernels.unpatch_transformers()


def lm_config(kind: str, **overrides):
    # Two 16-wide heads: the smallest head dim the attention kernels tile.
    values = {**config_values(kind), "num_attention_heads": 2, **overrides}
    return transformers.EsmConfig(**values)


def lm_pair(name: str, kind: str, seed: int = 3, **overrides):
    """(transformers model, its accelerated deep copy is made by the caller): eval, perturbed."""
    torch.manual_seed(seed)
    model = getattr(transformers, name)(lm_config(kind, **overrides)).eval()
    perturb(model, seed)
    return model


def outputs_at_real_positions(out, name: str, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    real = mask.bool()
    if name == "EsmModel":
        return {"last_hidden_state": out.last_hidden_state[real], "pooler": out.pooler_output}
    if name == "EsmForSequenceClassification":
        return {"logits": out.logits}
    return {"logits": out.logits[real]}


def fine_tuning_step(model, name: str, tokens, mask, labels):
    """Forward with labels, backward; returns (outputs at real positions, loss, grads)."""
    model.zero_grad()
    out = model(tokens, attention_mask=mask, labels=labels) if labels is not None else None
    if out is None:  # EsmModel: a loss over real positions and the pooled output
        out = model(tokens, attention_mask=mask)
        loss = (out.last_hidden_state[mask.bool()] ** 2).mean() + out.pooler_output.sum()
    else:
        loss = out.loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return outputs_at_real_positions(out, name, mask), loss.detach(), grads


def assert_same(got: dict, want: dict, what: str) -> None:
    assert got.keys() == want.keys(), what
    for key in want:
        torch.testing.assert_close(got[key], want[key], **MODEL_FP32, msg=f"{what}: {key}")


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("kind", ["esm2", "esm1b"])
@pytest.mark.parametrize("name", LM_CLASSES)
def test_lm_forward_and_fine_tuning_gradients_match_transformers(name, kind, backend):
    hf = lm_pair(name, kind).train()  # dropout probabilities are 0: train() only enables grads
    fast = esmkernels.accelerate(copy.deepcopy(hf), backend=backend)
    assert fast is not hf and isinstance(fast, type(hf))
    tokens, mask = batch()
    labels = labels_for(name, tokens)[0]
    want = fine_tuning_step(hf, name, tokens, mask, labels)
    with L.launches() as seen:
        got = fine_tuning_step(fast, name, tokens, mask, labels)
    if backend == "triton":
        seen.expect(*LM_FWD, *LM_BWD)
    else:
        assert not seen.kernels and seen.fallbacks["rotary_attention_varlen"] == 2, seen
    assert_same(got[0], want[0], "outputs")
    torch.testing.assert_close(got[1], want[1], **MODEL_FP32, msg="loss")
    assert_same(got[2], want[2], "gradients")


@pytest.mark.parametrize("unpad", [True, False])
def test_hidden_states_are_recorded_per_layer(unpad):
    """output_hidden_states: each layer's output is recorded padded [B, L, C]; real positions
    equal transformers' (padded ones too without unpadding)."""
    hf = lm_pair("EsmModel", "esm2")
    tokens, mask = batch()
    with torch.no_grad():
        # Recorded first: transformers 4.x then leaves `forward` set on each layer instance.
        want = hf(tokens, attention_mask=mask, output_hidden_states=True)
        fast = esmkernels.accelerate(copy.deepcopy(hf), unpad=unpad, backend="triton")
        with L.launches() as seen:
            got = fast(tokens, attention_mask=mask, output_hidden_states=True)
    seen.expect(*LM_FWD)
    where = slice(None) if not unpad else mask.bool()
    assert len(got.hidden_states) == len(want.hidden_states) == 3
    for i, (x, y) in enumerate(zip(got.hidden_states, want.hidden_states)):
        assert x.shape == y.shape
        torch.testing.assert_close(x[where], y[where], **MODEL_FP32, msg=f"hidden_states[{i}]")
    torch.testing.assert_close(
        got.last_hidden_state[where], want.last_hidden_state[where], **MODEL_FP32
    )


def test_padding_convention_with_unpadding():
    """Unpadded: positions that are padding are not computed and hold zeros (documented)."""
    hf = lm_pair("EsmModel", "esm2")
    fast = esmkernels.accelerate(copy.deepcopy(hf), backend="torch")
    tokens, mask = batch()
    with torch.no_grad():
        out = fast(tokens, attention_mask=mask)
    pads = ~mask.bool()
    assert pads.any() and torch.all(out.last_hidden_state[pads] == 0)


def test_output_attentions_and_contacts_run_transformers_attention():
    hf = lm_pair("EsmForMaskedLM", "esm2")
    hf.config._attn_implementation = "eager"  # attention maps come from eager attention
    fast = esmkernels.accelerate(copy.deepcopy(hf), backend="triton")
    tokens, mask = batch()
    with torch.no_grad():
        want = hf(tokens, attention_mask=mask, output_attentions=True)
        want_contacts = hf.esm.predict_contacts(tokens, mask)
        with L.launches() as seen:
            got = fast(tokens, attention_mask=mask, output_attentions=True)
            got_contacts = fast.esm.predict_contacts(tokens, mask)
    assert not any(seen.kernels[k] for k in L.ROTARY_FWD), seen  # transformers' attention
    assert seen.kernels[L.LAYER_NORM[0]] > 0  # LayerNorms stay fused
    for i, (x, y) in enumerate(zip(got.attentions, want.attentions, strict=True)):
        torch.testing.assert_close(x, y, **MODEL_FP32, msg=f"attentions[{i}]")
    torch.testing.assert_close(got.logits, want.logits, **MODEL_FP32)
    torch.testing.assert_close(got_contacts, want_contacts, **MODEL_FP32)


def test_attention_dropout_in_training_runs_transformers_attention():
    hf = lm_pair("EsmForMaskedLM", "esm2", attention_probs_dropout_prob=0.3).train()
    fast = esmkernels.accelerate(copy.deepcopy(hf), backend="triton")
    tokens, mask = batch()
    torch.manual_seed(5)
    want = hf(tokens, attention_mask=mask).logits
    torch.manual_seed(5)  # same dropout masks: the same transformers attention runs
    with L.launches() as seen:
        got = fast(tokens, attention_mask=mask).logits
    assert not any(seen.kernels[k] for k in L.ROTARY_FWD), seen
    torch.testing.assert_close(got, want, **MODEL_FP32)
    fast.eval()  # no dropout in eval: the kernels run again
    with torch.no_grad(), L.launches() as seen:
        fast(tokens, attention_mask=mask)
    seen.expect(*L.ROTARY_FWD)


def test_patch_unpatch_patch_again(tmp_path):
    hf = lm_pair("EsmForMaskedLM", "esm2")
    hf.save_pretrained(tmp_path)
    tokens, mask = batch()
    with torch.no_grad():
        want = hf(tokens, attention_mask=mask).logits[mask.bool()]

    def built_and_loaded():
        built = transformers.EsmForMaskedLM(hf.config).eval()
        built.load_state_dict(hf.state_dict())
        return [built, transformers.EsmForMaskedLM.from_pretrained(tmp_path).eval()]

    def runs_kernels(model) -> bool:
        with torch.no_grad(), L.launches() as seen:
            got = model(tokens, attention_mask=mask).logits[mask.bool()]
        torch.testing.assert_close(got, want, **MODEL_FP32)
        return seen.kernels[L.ROTARY_FWD[0]] > 0

    before = built_and_loaded()
    esmkernels.patch_transformers(backend="triton")
    assert tp.patched_options() == tp.Options(backend="triton")
    patched = built_and_loaded()
    esmkernels.unpatch_transformers()
    after = built_and_loaded()
    esmkernels.patch_transformers(backend="triton")
    again = built_and_loaded()
    assert [runs_kernels(m) for m in before + patched + after + again] == [False] * 2 + [
        True
    ] * 2 + [False] * 2 + [True] * 2
    assert all(type(m.esm.encoder.layer[0]) is modeling_esm.EsmLayer for m in before + after)


def test_patch_options_select_what_is_swapped():
    esmkernels.patch_transformers(attention=False, unpad=False, trunk=False, backend="triton")
    model = transformers.EsmForMaskedLM(lm_config("esm2")).eval()
    assert isinstance(model.esm.encoder.layer[0].LayerNorm, tp.FusedLayerNorm)
    assert type(model.esm.encoder.layer[0]) is modeling_esm.EsmLayer
    tokens, mask = batch()
    with torch.no_grad(), L.launches() as seen:
        model(tokens, attention_mask=mask)
    assert seen.kernels[L.LAYER_NORM[0]] > 0 and not seen.kernels[L.ROTARY_FWD[0]], seen


def test_bad_options_and_unknown_layouts_raise_clear_errors():
    with pytest.raises(ValueError, match="unpad=True needs attention=True"):
        esmkernels.patch_transformers(attention=False)
    with pytest.raises(ValueError, match="backend='cuda'"):
        esmkernels.accelerate(lm_pair("EsmModel", "esm2"), backend="cuda")
    with pytest.raises(TypeError, match="Linear"):
        esmkernels.accelerate(torch.nn.Linear(2, 2))
    model = lm_pair("EsmModel", "esm2")
    model.encoder.layer[1].attention.self.position_embedding_type = "relative_key"
    with pytest.raises(
        RuntimeError, match=f"transformers {transformers.__version__}.*relative_key"
    ):
        esmkernels.accelerate(model)
    model = lm_pair("EsmModel", "esm2")
    del model.encoder.layer[0].attention.self.query
    with pytest.raises(RuntimeError, match=f"transformers {transformers.__version__}.*query"):
        esmkernels.accelerate(model)


# ------------------------------------------------------------------------------------------------
# ESMFold
# ------------------------------------------------------------------------------------------------

hf_esmfold = pytest.importorskip("transformers.models.esm.modeling_esmfold")
FOLD_KERNELS = (*L.TRIMUL_FWD, *L.AXIAL_FWD, *L.ROTARY_FWD, L.LAYER_NORM[0])


@pytest.fixture(scope="module")
def hf_fold():
    from tests.test_esmfold_model import STEM
    from tests.test_esmfold_trunk import randomize_, tiny_trunk_config

    trunk = tiny_trunk_config(num_blocks=1).to_dict()  # interpreted kernels: keep it tiny
    fold = dict(fp16_esm=False, lddt_head_hid_dim=16, trunk=trunk)
    stem = {**STEM, "num_attention_heads": 2}  # 16-wide heads: the attention kernels' smallest
    config = transformers.EsmConfig(**stem, is_folding_model=True, esmfold_config=fold)
    torch.manual_seed(0)
    model = hf_esmfold.EsmForProteinFolding(config)
    randomize_(model, scale=0.5, seed=11).eval()
    with torch.no_grad():  # confident heads, so pLDDT / pTM are far from uniform
        model.lddt_head[-1].weight.mul_(20.0)
        model.ptm_head.weight.mul_(5.0)
        model.ptm_head.bias[:2].add_(8.0)
    return model


def fold_inputs(*lengths: int):
    from tests.test_esmfold_model import random_sequence
    from tests.test_peer_esmfold import _hf_ids

    return _hf_ids([random_sequence(n, 5 + i) for i, n in enumerate(lengths)])


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_esmfold_matches_transformers(hf_fold, backend):
    """Padded batch: per-residue positions, pLDDT and pair states at real residues."""
    fast = esmkernels.accelerate(copy.deepcopy(hf_fold), backend=backend)
    lengths = (7, 4)
    ids, mask = fold_inputs(*lengths)
    recycles = 1 if backend == "torch" else 0
    with torch.no_grad():
        want = hf_fold(ids, attention_mask=mask, num_recycles=recycles)
        with L.launches() as seen:
            got = fast(ids, attention_mask=mask, num_recycles=recycles)
    if backend == "triton":
        seen.expect(*FOLD_KERNELS)
    else:
        assert not seen.kernels and seen.fallbacks["axial_attention"] > 0, seen
    for b, n in enumerate(lengths):
        torch.testing.assert_close(
            got.positions[:, b, :n], want.positions[:, b, :n], atol=1e-3, rtol=0
        )
        torch.testing.assert_close(got.plddt[b, :n], want.plddt[b, :n], **MODEL_FP32)
        torch.testing.assert_close(got.s_z[b, :n, :n], want.s_z[b, :n, :n], **MODEL_FP32)


def test_esmfold_ptm_matches_transformers_on_one_sequence(hf_fold):
    """transformers' pTM of a padded batch is one number that includes padded positions, which
    unpadding does not compute; for a sequence without padding it is the same."""
    fast = esmkernels.accelerate(copy.deepcopy(hf_fold), backend="torch")
    ids, mask = fold_inputs(8)
    with torch.no_grad():
        want = hf_fold(ids, attention_mask=mask, num_recycles=1)
        got = fast(ids, attention_mask=mask, num_recycles=1)
    torch.testing.assert_close(got.ptm, want.ptm, **MODEL_FP32)
    torch.testing.assert_close(got.plddt, want.plddt, **MODEL_FP32)
    torch.testing.assert_close(got.positions, want.positions, atol=1e-3, rtol=0)


def test_esmfold_chunking_reaches_the_kernels(hf_fold):
    """transformers' trunk chunk size is passed to the fused triangle attention, in row blocks."""
    fast = esmkernels.accelerate(copy.deepcopy(hf_fold), backend="triton")
    ids, mask = fold_inputs(6)
    with torch.no_grad():
        with L.launches() as whole:
            want = fast(ids, attention_mask=mask, num_recycles=0)
        fast.trunk.set_chunk_size(3)
        with L.launches() as chunked:
            got = fast(ids, attention_mask=mask, num_recycles=0)
    assert chunked.kernels[L.AXIAL_FWD[0]] > whole.kernels[L.AXIAL_FWD[0]], (whole, chunked)
    torch.testing.assert_close(got.positions, want.positions, atol=1e-3, rtol=0)


def test_esmfold_fine_tuning_gradients_match_transformers(hf_fold):
    hf = copy.deepcopy(hf_fold).train()
    fast = esmkernels.accelerate(copy.deepcopy(hf_fold), backend="torch").train()
    ids, mask = fold_inputs(6, 4)
    grads = []
    for model in (hf, fast):
        out = model(ids, attention_mask=mask, num_recycles=0)
        real = mask.bool()
        (out.positions[-1][real].square().mean() + out.plddt[real].sum()).backward()
        grads.append({n: p.grad for n, p in model.trunk.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 20
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], atol=1e-3, rtol=1e-3, msg=key)


def test_masked_tokens_in_esmfold_stem_are_unpadded(hf_fold):
    """The stem runs unpadded with hidden states recorded per layer (ESMFold reads them all)."""
    fast = esmkernels.accelerate(copy.deepcopy(hf_fold), backend="triton", trunk=False)
    ids, mask = fold_inputs(9, 5)
    with torch.no_grad(), L.launches() as seen:
        fast(ids, attention_mask=mask, num_recycles=0)
    assert seen.kernels[L.ROTARY_FWD[0]] == 2 and not seen.kernels[L.TRIMUL_FWD[0]], seen
