"""Reference ESM language models: shapes, losses, gradients, batch invariance, errors, outputs.

Expected values come from hand-written formulas (token dropout, positions, losses, the contact
head's invariances), never from the code under test run a second way. Parity with transformers
and fair-esm is in tests/test_peer_*_lm.py.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st

from esmkernels.core.configuration import EsmConfig
from esmkernels.core.outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    ModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from esmkernels.reference.esm import (
    EsmForMaskedLM,
    EsmForSequenceClassification,
    EsmForTokenClassification,
    EsmModel,
)
from esmkernels.reference.esm_layers import (
    EsmContactPredictionHead,
    EsmEmbeddings,
    EsmEncoder,
    EsmLayer,
    EsmLayerNorm,
    EsmSelfAttention,
    absolute_position_ids,
    gelu,
)
from tests._configs import tiny_lm_config
from tests.tolerances import GRADCHECK, MODEL_FP32

CLS, PAD, EOS, MASK = 0, 1, 2, 32
KINDS = ("esm2", "esm1b")
CLASSES = (EsmModel, EsmForMaskedLM, EsmForSequenceClassification, EsmForTokenClassification)


def make_config(kind: str = "esm2", **overrides) -> EsmConfig:
    """Tiny ESM-2 (rotary, token dropout) or ESM-1b (absolute, embedding LayerNorm) config.

    initializer_range is large so attention is far from uniform and every path matters."""
    values = dict(
        eos_token_id=EOS,
        num_attention_heads=4,
        max_position_embeddings=40,
        initializer_range=0.2,
    )
    return tiny_lm_config(kind, **{**values, **overrides})


@functools.cache
def make_model(cls, kind: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = cls(make_config(kind, **overrides)).eval()
    with torch.no_grad():  # HF init leaves biases 0 and LayerNorms 1: make them matter
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def tokens_of(residue_lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """<cls> residues <eos>, right-padded: (tokens [B, L], attention_mask [B, L])."""
    L = max(len(r) for r in residue_lists) + 2
    tokens = torch.full((len(residue_lists), L), PAD)
    for i, r in enumerate(residue_lists):
        tokens[i, : len(r) + 2] = torch.tensor([CLS, *r, EOS])
    return tokens, tokens.ne(PAD).long()


BATCH = [[5, 6, MASK, 7, 8, 9], [10, MASK, 11], [4, 4]]


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def test_model_output_indexes_like_hf():
    logits, hidden = torch.zeros(2, 3), (torch.ones(1),)
    out = MaskedLMOutput(logits=logits, hidden_states=hidden)
    assert isinstance(out, ModelOutput)
    assert out[0] is logits and out[1] is hidden and out["logits"] is logits
    assert out[:2] == (logits, hidden) and out.to_tuple() == (logits, hidden)
    assert out.keys() == ["logits", "hidden_states"] and len(out) == 2
    assert "logits" in out and "loss" not in out
    assert dict(out) == {"logits": logits, "hidden_states": hidden}
    with pytest.raises(KeyError, match="loss"):
        out["loss"]
    with pytest.raises(IndexError):
        out[2]
    with pytest.raises(TypeError, match="float"):
        out[1.0]
    out["loss"] = torch.tensor(1.0)
    assert out[0] is out.loss and out.to_tuple()[1] is logits
    with pytest.raises(KeyError, match="nope"):
        out["nope"] = 1
    full = BaseModelOutputWithPooling(torch.zeros(1), torch.ones(1), None, (torch.zeros(2),))
    assert [k for k in full] == ["last_hidden_state", "pooler_output", "attentions"]
    for cls in (SequenceClassifierOutput, TokenClassifierOutput):
        assert cls(logits=logits).to_tuple() == (logits,)


# --------------------------------------------------------------------------------------------
# Shapes, return_dict, defaults
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cls", CLASSES)
def test_shapes_and_tuples(cls, kind):
    model = make_model(cls, kind)
    tokens, mask = tokens_of(BATCH)
    B, L = tokens.shape
    cfg = model.config
    out = model(tokens, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    assert len(out.hidden_states) == cfg.num_hidden_layers + 1
    assert len(out.attentions) == cfg.num_hidden_layers
    assert all(h.shape == (B, L, cfg.hidden_size) for h in out.hidden_states)
    assert all(a.shape == (B, cfg.num_attention_heads, L, L) for a in out.attentions)
    for a in out.attentions:  # probabilities over kept keys only
        torch.testing.assert_close(a.sum(-1), torch.ones(B, cfg.num_attention_heads, L))
        assert (a * (1 - mask)[:, None, None, :]).abs().max() == 0
    if cls is EsmModel:
        assert out.last_hidden_state.shape == (B, L, cfg.hidden_size)
        assert out.pooler_output.shape == (B, cfg.hidden_size)
        assert out.hidden_states[-1] is out.last_hidden_state
        first = out.last_hidden_state
    else:
        expect = {
            EsmForMaskedLM: (B, L, cfg.vocab_size),
            EsmForSequenceClassification: (B, cfg.num_labels),
            EsmForTokenClassification: (B, L, cfg.num_labels),
        }[cls]
        assert out.logits.shape == expect and out.loss is None
        first = out.logits
    tup = model(tokens, attention_mask=mask, output_hidden_states=True, return_dict=False)
    assert isinstance(tup, tuple) and len(tup) == (3 if cls is EsmModel else 2)
    torch.testing.assert_close(tup[0], first, **MODEL_FP32)
    assert len(tup[-1]) == cfg.num_hidden_layers + 1
    # Without a mask, padding is found from the pad token (fair-esm's behaviour).
    torch.testing.assert_close(model(tokens, return_dict=False)[0], first, **MODEL_FP32)


def test_return_dict_from_config_and_no_pooler():
    cfg = make_config(return_dict=False, output_hidden_states=True)
    model = EsmModel(cfg, add_pooling_layer=False).eval()
    out = model(tokens_of(BATCH)[0])
    assert isinstance(out, tuple) and len(out) == 2  # last_hidden_state, hidden_states
    assert "pooler.dense.weight" not in model.state_dict()


def test_random_init_is_sane():
    model = EsmForMaskedLM(make_config(initializer_range=0.02))
    sd = model.state_dict()
    assert torch.equal(sd["esm.encoder.layer.0.attention.LayerNorm.weight"], torch.ones(32))
    assert torch.equal(sd["esm.encoder.layer.1.output.dense.bias"], torch.zeros(32))
    assert torch.equal(sd["lm_head.bias"], torch.zeros(33))
    assert torch.equal(sd["esm.embeddings.word_embeddings.weight"][PAD], torch.zeros(32))
    w = sd["esm.encoder.layer.0.intermediate.dense.weight"]
    assert 0.015 < w.std().item() < 0.025 and abs(w.mean().item()) < 0.005
    inv = sd["esm.encoder.layer.0.attention.self.rotary_embeddings.inv_freq"]
    torch.testing.assert_close(inv, 10000.0 ** (-torch.arange(0, 8, 2) / 8.0))
    assert model.lm_head.decoder.weight is model.esm.embeddings.word_embeddings.weight
    out = model(tokens_of(BATCH)[0]).logits
    assert torch.isfinite(out).all() and out.std() < 1.0


# --------------------------------------------------------------------------------------------
# Embeddings: token dropout, positions
# --------------------------------------------------------------------------------------------


def test_token_dropout_rescaling_by_hand():
    cfg = make_config("esm2")
    emb = EsmEmbeddings(cfg)
    tokens, mask = tokens_of([[5, MASK, 6, MASK, 7, 8], [9, 10]])
    out = emb(tokens, mask)
    words = emb.word_embeddings.weight
    for b, (n_tokens, n_masked) in enumerate([(8, 2), (4, 0)]):
        scale = (1 - 0.15 * 0.8) / (1 - n_masked / n_tokens)
        expect = words[tokens[b]] * scale * (tokens[b] != MASK)[:, None] * mask[b][:, None]
        torch.testing.assert_close(out[b], expect)
    assert out[0, 2].abs().max() == 0  # a <mask> embedding is zeroed


def test_absolute_position_ids_by_hand():
    tokens = torch.tensor([[0, 5, 6, 2, 1, 1], [0, 7, 2, 1, 1, 1]])
    expect = torch.tensor([[2, 3, 4, 5, 1, 1], [2, 3, 4, 1, 1, 1]])
    assert torch.equal(absolute_position_ids(tokens, PAD), expect)
    emb = EsmEmbeddings(make_config("esm1b", emb_layer_norm_before=False))
    out = emb(tokens, tokens.ne(PAD).long())
    words, pos = emb.word_embeddings.weight, emb.position_embeddings.weight
    torch.testing.assert_close(out[1, :3], words[tokens[1, :3]] + pos[expect[1, :3]])
    assert out[1, 3:].abs().max() == 0


def test_inputs_embeds_replace_only_the_lookup():
    """ESM-1b: positions, LayerNorm and masking still apply to inputs_embeds."""
    model = make_model(EsmModel, "esm1b")
    tokens, _ = tokens_of([[5, 6, 7, 8]])
    embeds = model.embeddings.word_embeddings(tokens)
    torch.testing.assert_close(
        model(inputs_embeds=embeds).last_hidden_state, model(tokens).last_hidden_state
    )


def test_rotary_positions_are_relative():
    """Shifting every rotary position by a constant leaves the outputs unchanged."""
    model = make_model(EsmModel, "esm2")
    tokens, mask = tokens_of(BATCH)
    L = tokens.shape[1]
    base = model(tokens, mask, position_ids=torch.arange(L)[None]).last_hidden_state
    shifted = model(tokens, mask, position_ids=torch.arange(L)[None] + 7).last_hidden_state
    torch.testing.assert_close(shifted, base, **MODEL_FP32)
    default = model(tokens, mask).last_hidden_state
    torch.testing.assert_close(default, base, **MODEL_FP32)
    scrambled = model(tokens, mask, position_ids=torch.arange(L).flip(0)[None]).last_hidden_state
    assert (scrambled - base).abs().max() > 1e-3  # positions do matter


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def _nll(logits: torch.Tensor, target: int) -> torch.Tensor:
    return -torch.log_softmax(logits, -1)[target]


@pytest.mark.parametrize("cls", (EsmForMaskedLM, EsmForTokenClassification))
def test_token_losses_ignore_minus_100(cls):
    model = make_model(cls, "esm2")
    tokens, mask = tokens_of(BATCH)
    labels = torch.full_like(tokens, -100)
    picks = [(0, 3, 1), (1, 2, 1), (2, 1, 0)]  # valid for 2 classes and the vocabulary
    for b, i, t in picks:
        labels[b, i] = t
    out = model(tokens, mask, labels=labels)
    expect = torch.stack([_nll(out.logits[b, i], t) for b, i, t in picks]).mean()
    torch.testing.assert_close(out.loss, expect)
    loss, logits = model(tokens, mask, labels=labels, return_dict=False)
    torch.testing.assert_close(loss, expect)


def test_sequence_classification_losses():
    tokens, mask = tokens_of(BATCH)
    model = make_model(EsmForSequenceClassification, "esm2", num_labels=3)
    single = torch.tensor([2, 0, 1])
    out = model(tokens, mask, labels=single)
    expect = torch.stack([_nll(out.logits[b], int(t)) for b, t in enumerate(single)]).mean()
    torch.testing.assert_close(out.loss, expect)
    multi = torch.tensor([[1.0, 0, 1], [0, 0, 0], [0, 1, 1]])
    p = torch.sigmoid(out.logits)
    bce = -(multi * p.log() + (1 - multi) * (1 - p).log()).mean()
    torch.testing.assert_close(model(tokens, mask, labels=multi).loss, bce)
    assert model.config.problem_type is None  # inferred per call, the config is not modified

    reg = make_model(EsmForSequenceClassification, "esm1b", num_labels=1)
    target = torch.tensor([0.5, -1.0, 2.0])
    out = reg(tokens, mask, labels=target)
    torch.testing.assert_close(out.loss, ((out.logits[:, 0] - target) ** 2).mean())
    forced = make_model(
        EsmForSequenceClassification, "esm2", num_labels=3, problem_type="regression"
    )
    values = torch.randn(3, 3)
    out = forced(tokens, mask, labels=values)
    torch.testing.assert_close(out.loss, ((out.logits - values) ** 2).mean())


# --------------------------------------------------------------------------------------------
# Gradients (float64 gradcheck)
# --------------------------------------------------------------------------------------------


def _small_config(kind: str) -> EsmConfig:
    return make_config(kind, hidden_size=8, num_attention_heads=2, intermediate_size=12)


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_layer(kind):
    torch.manual_seed(1)
    layer = EsmLayer(_small_config(kind)).double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert torch.autograd.gradcheck(lambda h: layer(h, mask)[0], (x,), fast_mode=True, **GRADCHECK)


def test_gradcheck_attention_with_probs():
    torch.manual_seed(2)
    attn = EsmSelfAttention(_small_config("esm2")).double().eval()
    x = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    pos = torch.tensor([[0, 1, 2, 3]])

    fn = lambda h: attn(h, mask, pos, output_attentions=True)  # (out, probs)
    assert torch.autograd.gradcheck(fn, (x,), fast_mode=True, **GRADCHECK)


def test_gradcheck_contact_head():
    torch.manual_seed(3)
    head = EsmContactPredictionHead(2 * 3, eos_idx=EOS).double()
    tokens = torch.tensor([[CLS, 5, 6, 7, EOS], [CLS, 8, 9, EOS, PAD]])
    attn = torch.rand(2, 2, 3, 5, 5, dtype=torch.float64).softmax(-1).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: head(tokens, a), (attn,), **GRADCHECK)
    # and the head computes the written-out formula
    reg = head.regression
    expect = torch.sigmoid(F.linear(_contact_features(tokens, attn), reg.weight, reg.bias))
    torch.testing.assert_close(head(tokens, attn), expect[..., 0])


def _contact_features(tokens: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Rao et al. 2021 written out: zero eos, crop cls/last, symmetrize, APC; -> [B, n, n, C]."""
    keep = (tokens != EOS).to(attn.dtype)
    a = attn * (keep[:, :, None] * keep[:, None, :])[:, None, None]
    a = a[..., 1:-1, 1:-1].flatten(1, 2)
    s = a + a.transpose(-1, -2)
    apc = s.sum(-1, keepdim=True) * s.sum(-2, keepdim=True) / s.sum((-1, -2), keepdim=True)
    return (s - apc).permute(0, 2, 3, 1)


def test_contact_head_ignores_eos_and_cls():
    torch.manual_seed(4)
    head = EsmContactPredictionHead(6, eos_idx=EOS)
    tokens = torch.tensor([[CLS, 5, 6, 7, EOS, PAD]])
    attn = torch.rand(1, 2, 3, 6, 6)
    base = head(tokens, attn)
    assert base.shape == (1, 4, 4)
    torch.testing.assert_close(base, base.transpose(-1, -2))
    changed = attn.clone()
    changed[..., 4, :] = 5.0  # eos row and column
    changed[..., :, 4] = 5.0
    changed[..., 0, :] = 3.0  # cls row and column, and the last position
    changed[..., :, 0] = 3.0
    changed[..., 5, :] = 2.0
    changed[..., :, 5] = 2.0
    torch.testing.assert_close(head(tokens, changed)[:, :3, :3], base[:, :3, :3])


# --------------------------------------------------------------------------------------------
# Batch invariance
# --------------------------------------------------------------------------------------------

residues = st.lists(st.sampled_from([4, 5, 9, 13, 20, 23, MASK]), min_size=0, max_size=9)


@given(batch=st.lists(residues, min_size=1, max_size=3), kind=st.sampled_from(KINDS))
@example(batch=[[], [5, MASK, 6, 7, 8, 9, 10, 11, 12]], kind="esm2")
@example(batch=[[MASK], [4] * 9, [5]], kind="esm1b")
def test_batch_invariance(batch, kind):
    """A sequence's outputs are the same alone and in a padded batch with others."""
    model = make_model(EsmForMaskedLM, kind)
    tokens, mask = tokens_of(batch)
    with torch.no_grad():
        out = model(tokens, mask, output_attentions=True, output_hidden_states=True)
        contacts = model.predict_contacts(tokens, mask)
    for b, seq in enumerate(batch):
        n = len(seq) + 2
        alone_tokens, _ = tokens_of([seq])
        with torch.no_grad():
            alone = model(alone_tokens, output_attentions=True, output_hidden_states=True)
            alone_contacts = model.predict_contacts(alone_tokens)
        torch.testing.assert_close(out.logits[b, :n], alone.logits[0], **MODEL_FP32)
        for h, h1 in zip(out.hidden_states, alone.hidden_states):
            torch.testing.assert_close(h[b, :n], h1[0], **MODEL_FP32)
        for a, a1 in zip(out.attentions, alone.attentions):
            torch.testing.assert_close(a[b, :, :n, :n], a1[0], **MODEL_FP32)
        if n > 2:
            torch.testing.assert_close(
                contacts[b, : n - 2, : n - 2], alone_contacts[0], **MODEL_FP32
            )


# --------------------------------------------------------------------------------------------
# Training: dropout and gradient checkpointing
# --------------------------------------------------------------------------------------------


def test_gradient_checkpointing_matches():
    tokens, mask = tokens_of(BATCH)
    labels = torch.where(tokens == MASK, 6, -100)
    grads = []
    for ckpt in (False, True):
        model = EsmForMaskedLM(make_config("esm2"))
        model.load_state_dict(make_model(EsmForMaskedLM, "esm2").state_dict())
        model.train()
        if ckpt:
            model.gradient_checkpointing_enable()
            assert model.esm.encoder.gradient_checkpointing
        calls = []
        query = model.esm.encoder.layer[0].attention.self.query
        query.register_forward_hook(lambda *args, calls=calls: calls.append(1))
        out = model(tokens, mask, labels=labels, output_attentions=True)
        out.loss.backward()
        assert len(calls) == (2 if ckpt else 1)  # recomputed in the backward pass
        named = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        grads.append((out.loss.detach(), named))
    torch.testing.assert_close(grads[1][0], grads[0][0])
    assert grads[1][1].keys() == grads[0][1].keys()
    assert "esm.encoder.layer.0.attention.self.query.weight" in grads[0][1]
    for name, g0 in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][name], g0, **MODEL_FP32)


def test_dropout_only_in_training():
    model = EsmModel(make_config("esm2", attention_probs_dropout_prob=0.5, hidden_dropout_prob=0.2))
    tokens, mask = tokens_of(BATCH)
    model.eval()
    a, b = model(tokens, mask)[0], model(tokens, mask)[0]
    assert torch.equal(a, b)
    model.train()
    c = model(tokens, mask)[0]
    assert (c - a).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------
# Checkpoint compatibility of the module tree
# --------------------------------------------------------------------------------------------


def test_inv_freq_is_loaded_not_recomputed():
    model = make_model(EsmModel, "esm2")
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    stored = (sd["encoder.layer.0.attention.self.rotary_embeddings.inv_freq"] * 1.3).half().float()
    sd["encoder.layer.0.attention.self.rotary_embeddings.inv_freq"] = stored
    fresh = EsmModel(make_config("esm2"))
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.encoder.layer[0].attention.self.rotary_embeddings.inv_freq, stored)
    # transformers >= 5 keeps one model-level buffer: it is copied to every layer
    shared = {k: v for k, v in sd.items() if "inv_freq" not in k}
    shared["rotary_embeddings.inv_freq"] = stored
    fresh.load_state_dict(shared)
    for layer in fresh.encoder.layer:
        assert torch.equal(layer.attention.self.rotary_embeddings.inv_freq, stored)


def test_hf_key_names():
    keys = set(EsmForMaskedLM(make_config("esm1b")).state_dict())
    for key in (
        "esm.embeddings.word_embeddings.weight",
        "esm.embeddings.position_embeddings.weight",
        "esm.embeddings.layer_norm.weight",
        "esm.encoder.layer.0.attention.self.query.weight",
        "esm.encoder.layer.0.attention.output.dense.bias",
        "esm.encoder.layer.0.attention.LayerNorm.weight",
        "esm.encoder.layer.1.intermediate.dense.weight",
        "esm.encoder.layer.1.output.dense.weight",
        "esm.encoder.layer.1.LayerNorm.bias",
        "esm.encoder.emb_layer_norm_after.weight",
        "esm.contact_head.regression.weight",
        "lm_head.dense.weight",
        "lm_head.layer_norm.bias",
        "lm_head.decoder.weight",
        "lm_head.bias",
    ):
        assert key in keys, key
    seq = set(EsmForSequenceClassification(make_config("esm2")).state_dict())
    assert {"classifier.dense.weight", "classifier.out_proj.bias"} <= seq
    assert "esm.encoder.layer.1.attention.self.rotary_embeddings.inv_freq" in seq
    assert not any("position_embeddings" in k or "pooler" in k for k in seq)
    tok = set(EsmForTokenClassification(make_config("esm2")).state_dict())
    assert {"classifier.weight", "classifier.bias"} <= tok
    assert "pooler.dense.weight" in EsmModel(make_config("esm2")).state_dict()


class _CountingLayerNorm(EsmLayerNorm):
    calls = 0

    def forward(self, x):
        type(self).calls += 1
        return super().forward(x)


class _CountingAttention(EsmSelfAttention):
    calls = 0

    def attend(self, q, k, v, key_padding_mask, position_ids, output_attentions):
        type(self).calls += 1
        return super().attend(q, k, v, key_padding_mask, position_ids, output_attentions)


class _CountingEncoder(EsmEncoder):
    calls = 0

    def forward(self, *args, **kwargs):
        type(self).calls += 1
        return super().forward(*args, **kwargs)


class _HookedModel(EsmModel):
    layer_norm_cls = _CountingLayerNorm
    self_attention_cls = _CountingAttention
    encoder_cls = _CountingEncoder


class _HookedMaskedLM(EsmForMaskedLM):
    base_model_cls = _HookedModel
    layer_norm_cls = _CountingLayerNorm


@pytest.mark.parametrize("kind", KINDS)
def test_subclass_hooks_replace_every_layer_norm_and_attention(kind):
    """What the fast models rely on: overriding `layer_norm_cls`, `self_attention_cls`,
    `encoder_cls` and `base_model_cls` reaches every LayerNorm, attention and the encoder,
    keeping the keys and the outputs."""
    base = make_model(EsmForMaskedLM, kind)
    hooked = _HookedMaskedLM(base.config).eval()
    assert hooked.state_dict().keys() == base.state_dict().keys()
    hooked.load_state_dict(base.state_dict())
    _CountingLayerNorm.calls = _CountingAttention.calls = _CountingEncoder.calls = 0
    tokens, mask = tokens_of(BATCH)
    with torch.no_grad():
        torch.testing.assert_close(hooked(tokens, mask).logits, base(tokens, mask).logits)
    n_layers = base.config.num_hidden_layers
    # two per layer, emb_layer_norm_after, the LM head, and ESM-1b's embedding LayerNorm
    assert _CountingLayerNorm.calls == 2 * n_layers + 2 + (kind == "esm1b")
    assert _CountingAttention.calls == n_layers
    assert _CountingEncoder.calls == 1


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(), "exactly one of input_ids or inputs_embeds, got neither"),
        (dict(input_ids=torch.zeros(1, 3, dtype=torch.long), inputs_embeds=torch.zeros(1, 3, 32)), "got both"),
        (dict(input_ids=torch.zeros(3, dtype=torch.long)), r"\[batch, length\]"),
        (dict(input_ids=torch.zeros(1, 3, 2, dtype=torch.long)), r"\[batch, length\]"),
        (dict(input_ids=torch.zeros(1, 3)), "integer tensor, got dtype torch.float32"),
        (dict(input_ids=torch.tensor([[0, 33, 2]])), "token id 33, outside"),
        (dict(input_ids=torch.tensor([[0, -1, 2]])), "token id -1"),
        (dict(input_ids=torch.zeros(0, 3, dtype=torch.long)), "empty input: batch=0"),
        (dict(input_ids=torch.zeros(2, 0, dtype=torch.long)), "length=0"),
        (dict(input_ids=torch.tensor([[0, 5, 2], [1, 1, 1]])), r"sequence\(s\) \[1\] have no tokens"),
        (dict(input_ids=torch.tensor([[0, 5, 2]]), attention_mask=torch.ones(1, 4)), "attention_mask has shape"),
        (dict(input_ids=torch.tensor([[0, 5, 2]]), attention_mask=torch.zeros(1, 3)), "no tokens"),
        (dict(input_ids=torch.tensor([[0, 5, 2]]), position_ids=torch.zeros(2, 3, dtype=torch.long)), "position_ids has shape"),
        (dict(input_ids=torch.tensor([[0, 5, 2]]), position_ids=torch.zeros(1, 3)), "position_ids must be an integer"),
        (dict(inputs_embeds=torch.zeros(1, 3, 31)), "hidden_size=32"),
        (dict(inputs_embeds=torch.zeros(1, 3, 32, dtype=torch.long)), "floating point"),
    ],
)  # fmt: skip
def test_input_errors(kwargs, match):
    model = make_model(EsmModel, "esm2")
    with pytest.raises(ValueError, match=match):
        model(**kwargs)


def test_type_errors():
    model = make_model(EsmForMaskedLM, "esm2")
    with pytest.raises(TypeError, match="input_ids must be a torch.Tensor, got list"):
        model([[0, 5, 2]])
    with pytest.raises(TypeError, match="labels must be a torch.Tensor"):
        model(torch.tensor([[0, 5, 2]]), labels=[[1, 2, 3]])
    with pytest.raises(TypeError, match="expects an EsmConfig"):
        EsmModel({"vocab_size": 33})


def test_label_errors():
    tokens, mask = tokens_of(BATCH)
    mlm = make_model(EsmForMaskedLM, "esm2")
    with pytest.raises(ValueError, match="labels has shape"):
        mlm(tokens, mask, labels=tokens[:, 1:])
    with pytest.raises(ValueError, match="integer class ids"):
        mlm(tokens, mask, labels=tokens.float())
    with pytest.raises(ValueError, match="labels contains 33"):
        mlm(tokens, mask, labels=torch.full_like(tokens, 33))
    seq = make_model(EsmForSequenceClassification, "esm2", num_labels=3)
    with pytest.raises(ValueError, match="labels contains 3"):
        seq(tokens, mask, labels=torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="expected \\(3, 3\\) for multi_label"):
        seq(tokens, mask, labels=torch.ones(3, 2))
    tok = make_model(EsmForTokenClassification, "esm2")
    with pytest.raises(ValueError, match="labels contains 2"):
        tok(tokens, mask, labels=torch.full_like(tokens, 2))


def test_absolute_length_limit_esm1b():
    """ESM-1b: 1026 position rows, padding_idx 1 -> 1024 tokens -> 1022 residues."""
    cfg = make_config(
        "esm1b", max_position_embeddings=1026, hidden_size=8, num_attention_heads=1,
        intermediate_size=8, num_hidden_layers=1,
    )  # fmt: skip
    model = EsmModel(cfg).eval()
    ok = torch.full((1, 1024), 5)
    ok[0, 0], ok[0, -1] = CLS, EOS
    with torch.no_grad():
        assert torch.isfinite(model(ok).last_hidden_state).all()
    too_long = torch.cat([ok, torch.tensor([[PAD]])], 1)
    too_long[0, -2:] = torch.tensor([5, EOS])
    with pytest.raises(ValueError, match="sequence 0 has 1025 tokens.*at most 1022 residues"):
        model(too_long)
    # padding does not count
    padded = torch.cat([ok, torch.full((1, 3), PAD)], 1)
    with torch.no_grad():
        assert torch.isfinite(model(padded).last_hidden_state).all()
    with pytest.raises(ValueError, match="at most 1022 residues"):
        model(inputs_embeds=torch.zeros(1, 1025, 8))
    with pytest.raises(ValueError, match="position_ids contains 1026"):
        model(ok, position_ids=torch.full((1, 1024), 1026))
    # rotary models have no such limit
    long = torch.full((1, 1100), 5)
    rotary = EsmModel(
        make_config("esm2", hidden_size=8, num_attention_heads=1, num_hidden_layers=1)
    )
    with torch.no_grad():
        assert rotary(long).last_hidden_state.shape == (1, 1100, 8)


def test_gelu_is_exact_erf():
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    normal_cdf = torch.distributions.Normal(0.0, 1.0).cdf(x)
    torch.testing.assert_close(gelu(x), x * normal_cdf)
    assert (gelu(x) - F.gelu(x, approximate="tanh")).abs().max() > 1e-5


def test_all_mask_sequence_without_specials_stays_finite():
    """r = 1 in token dropout (every real token is <mask>): 0 * inf would be NaN."""
    config = make_config("esm2")
    model = EsmModel(config).eval()
    tokens = torch.tensor([[config.mask_token_id, config.mask_token_id], [5, config.mask_token_id]])
    with torch.no_grad():
        out = model(tokens).last_hidden_state
    assert torch.isfinite(out).all()
    with torch.no_grad():  # the other row is unaffected by the guard
        alone = model(tokens[1:]).last_hidden_state
    torch.testing.assert_close(out[1:], alone)
