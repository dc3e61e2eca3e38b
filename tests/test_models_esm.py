"""Fast ESM language models (`esmkernels.models.esm`) against the reference classes.

Both backends: "torch" and "triton" (interpreted on CPU). Tiny configs (hidden 32, 2 layers,
2 heads of 16). Fast models leave zeros at padding where the reference holds values computed from
padding, so hidden states and token logits are compared at real positions only.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from esmkernels.core.configuration import EsmConfig
from esmkernels.models import esm as fast
from esmkernels.reference import esm as ref
from tests._configs import tiny_lm_config
from tests._launches import LAYER_NORM, ROTARY_BWD, ROTARY_FWD, Launches, launches
from tests.tolerances import MODEL_FP32, assert_within_rule

PAD, MASK, CLS, EOS = 1, 32, 0, 2
CLASSES = (
    "EsmModel",
    "EsmForMaskedLM",
    "EsmForSequenceClassification",
    "EsmForTokenClassification",
)
BACKENDS = ("torch", "triton")
STYLES = ("esm2", "esm1b")
FIXTURE_OK = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
GRAD_TOL = {"atol": 2e-4, "rtol": 2e-4}
# The interpreter is slow: two drawn batch compositions (plus the pinned ones) there.
TRITON_EXAMPLES = 2 if os.environ.get("TRITON_INTERPRET") == "1" else settings().max_examples


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny shapes: one intra-op thread. On a loaded machine a second OpenMP thread makes each
    small op wait for a descheduled worker (milliseconds per op instead of microseconds)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(style: str = "esm2", **overrides) -> EsmConfig:
    """ESM-2 style: rotary, token dropout. ESM-1b style: absolute positions, embedding LN."""
    return tiny_lm_config(style, **{"max_position_embeddings": 40, "num_labels": 3, **overrides})


def make_pair(name: str, style: str, backend: str, device, **overrides):
    """(reference, fast) models of class `name` with the same random weights, in eval mode."""
    config = tiny_config(style, **overrides)
    torch.manual_seed(1)
    reference = getattr(ref, name)(config)
    with torch.no_grad():  # non-trivial LayerNorm affine and biases, so every parameter matters
        for n, p in reference.named_parameters():
            if n.endswith(
                ("bias", "LayerNorm.weight", "layer_norm.weight", "emb_layer_norm_after.weight")
            ):
                p.add_(0.1 * torch.randn_like(p))
    model = getattr(fast, name)(config, backend=backend)
    model.load_state_dict(reference.state_dict())
    return reference.to(device).eval(), model.to(device).eval()


def batch(device):
    """Three right-padded sequences, `<mask>` tokens in two of them. [3, 9]."""
    tokens = torch.tensor(
        [
            [CLS, 5, MASK, 7, 9, 11, 4, 6, EOS],
            [CLS, 8, 9, MASK, EOS, PAD, PAD, PAD, PAD],
            [CLS, 13, EOS, PAD, PAD, PAD, PAD, PAD, PAD],
        ],
        device=device,
    )
    return tokens, tokens.ne(PAD)


def labels_for(name: str, tokens: torch.Tensor) -> torch.Tensor | None:
    g = torch.Generator().manual_seed(3)
    B, L = tokens.shape
    if name == "EsmForMaskedLM":
        labels = torch.randint(4, 24, (B, L), generator=g)
    elif name == "EsmForTokenClassification":
        labels = torch.randint(0, 3, (B, L), generator=g)
    elif name == "EsmForSequenceClassification":
        return torch.randint(0, 3, (B,), generator=g).to(tokens.device)
    else:
        return None
    return labels.to(tokens.device).masked_fill(tokens.eq(PAD), -100)


def scalar(name: str, out, keep: torch.Tensor) -> torch.Tensor:
    """A loss to differentiate: the model's own loss, or a weighted sum of real hidden states."""
    loss = getattr(out, "loss", None)
    if loss is not None:
        return loss
    h = out.last_hidden_state[keep]
    w = torch.linspace(-1, 1, h.numel(), device=h.device).view_as(h)
    return (h * w).sum() + out.pooler_output[:, 0].sum()


def main_output(name: str, out) -> torch.Tensor:
    return out.last_hidden_state if name == "EsmModel" else out.logits


def assert_path(seen: Launches, backend: str, model, *, backward: bool, attention: bool = True):
    """The kernels ran (one LayerNorm launch per LayerNorm module, one attention launch per
    layer, and their backward kernels) on "triton"; none ran and the torch path did on
    "torch"."""
    if backend == "torch":
        assert not seen.kernels, seen
        assert seen.fallbacks["layer_norm"] > 0
        return
    n_ln = sum(isinstance(m, fast.EsmLayerNorm) for m in model.modules())
    n_layers = model.config.num_hidden_layers
    seen.expect(*LAYER_NORM[: 1 + backward], exactly=n_ln)
    if attention:
        seen.expect(*(ROTARY_FWD + ROTARY_BWD)[: 1 + 3 * backward], exactly=n_layers)


def assert_real_close(a: torch.Tensor, b: torch.Tensor, keep: torch.Tensor, **tol) -> None:
    """Compare [B, L, ...] tensors at real positions; [B, ...] tensors fully."""
    if a.dim() >= 2 and a.shape[:2] == keep.shape:
        a, b = a[keep], b[keep]
    torch.testing.assert_close(a, b, **(tol or MODEL_FP32))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("name", CLASSES)
def test_fast_matches_reference_forward_backward(name, style, backend, device):
    reference, model = make_pair(name, style, backend, device)
    reference.train(), model.train()  # dropout is 0: train == eval, and the kernels' backward runs
    tokens, keep = batch(device)
    labels = labels_for(name, tokens)
    kwargs = {} if labels is None else {"labels": labels}
    want = reference(tokens, output_hidden_states=True, **kwargs)
    scalar(name, want, keep).backward()
    with launches() as seen:
        got = model(tokens, output_hidden_states=True, **kwargs)
        scalar(name, got, keep).backward()
    assert_path(seen, backend, model, backward=True)
    assert type(got) is type(want)
    assert_real_close(main_output(name, got), main_output(name, want), keep)
    assert len(got.hidden_states) == len(want.hidden_states) == 3
    for h_got, h_want in zip(got.hidden_states, want.hidden_states):
        assert_real_close(h_got, h_want, keep)
    # Documented: padding positions hold zeros in the fast model's hidden states.
    assert got.hidden_states[-1][~keep].abs().max() == 0
    if labels is not None:
        torch.testing.assert_close(got.loss, want.loss, **MODEL_FP32)
    if name == "EsmModel":
        torch.testing.assert_close(got.pooler_output, want.pooler_output, **MODEL_FP32)

    # A small fine-tuning step: the gradient of every parameter matches the reference's.
    ref_params = dict(reference.named_parameters())
    n_checked = 0
    for key, p in model.named_parameters():
        r = ref_params[key]
        if r.grad is None:
            assert p.grad is None or p.grad.abs().max() == 0, key
            continue
        torch.testing.assert_close(p.grad, r.grad, **GRAD_TOL, msg=lambda m, k=key: f"{k}: {m}")
        n_checked += 1
    assert n_checked >= 20


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("style", STYLES)
def test_attentions_and_contacts_use_the_exact_path_for_that_call(style, backend, device):
    reference, model = make_pair("EsmForMaskedLM", style, backend, device)
    tokens, keep = batch(device)
    want = reference(tokens, output_attentions=True, output_hidden_states=True)
    with launches() as seen:
        got = model(tokens, output_attentions=True, output_hidden_states=True)
    # Probabilities requested: the reference attention core for this call, LayerNorm kernels.
    assert_path(seen, backend, model, backward=False, attention=False)
    assert not seen.kernels[ROTARY_FWD[0]]
    assert len(got.attentions) == 2
    for a_got, a_want in zip(got.attentions, want.attentions):
        assert a_got.shape == (3, 2, 9, 9)
        torch.testing.assert_close(a_got, a_want, **MODEL_FP32)
    # Padded path for this call: every position (padding too) equals the reference.
    torch.testing.assert_close(got.hidden_states[-1], want.hidden_states[-1], **MODEL_FP32)
    torch.testing.assert_close(
        model.predict_contacts(tokens), reference.predict_contacts(tokens), **MODEL_FP32
    )
    # The next call without attentions is packed again (zeros at padding).
    with launches() as seen:
        again = model(tokens, output_hidden_states=True)
    assert_path(seen, backend, model, backward=False)
    assert again.attentions is None
    assert again.hidden_states[-1][~keep].abs().max() == 0


@pytest.mark.parametrize("style", STYLES)
def test_padding_is_removed_before_every_layer(style, device, monkeypatch):
    """No FLOP on padding: projections and attention see exactly the real tokens."""
    _, model = make_pair("EsmForMaskedLM", style, "torch", device)
    tokens, keep = batch(device)
    seen_linear, seen_attention = [], []
    for layer in model.esm.encoder.layer:
        layer.attention.self.query.register_forward_hook(
            lambda m, args, out: seen_linear.append(tuple(args[0].shape))
        )
    real = fast.rotary_attention

    def spy(q, k, v, **kw):
        seen_attention.append((tuple(q.shape), kw.get("cu_seqlens")))
        return real(q, k, v, **kw)

    monkeypatch.setattr(fast, "rotary_attention", spy)
    model(tokens)
    T = int(keep.sum())
    assert seen_linear == [(1, T, 32)] * 2
    assert [s for s, _ in seen_attention] == [(T, 2, 16)] * 2
    assert seen_attention[0][1].tolist() == [0, 9, 14, 17]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("style", STYLES)
def test_unusual_masks_left_padding_and_holes(style, backend, device):
    """Rotary positions are column indices, so any mask gives the reference's values."""
    reference, model = make_pair("EsmModel", style, backend, device)
    tokens = torch.tensor(
        [
            [PAD, PAD, CLS, 5, 6, 7, EOS],
            [CLS, 8, 4, 9, 10, 11, EOS],
            [CLS, 5, MASK, 9, EOS, PAD, PAD],
        ],
        device=device,
    )
    mask = tokens.ne(PAD).long()
    mask[1, 3] = 0  # a hole in the middle of a sequence
    keep = mask.bool()
    want = reference(tokens, attention_mask=mask).last_hidden_state
    with launches() as seen:
        got = model(tokens, attention_mask=mask).last_hidden_state
    assert_path(seen, backend, model, backward=False)
    assert_real_close(got, want, keep)


@pytest.mark.parametrize("style", STYLES)
def test_inputs_embeds_and_explicit_position_ids(style, device):
    reference, model = make_pair("EsmModel", style, "torch", device)
    tokens, keep = batch(device)
    embeds = torch.randn(3, 9, 32, device=device)
    positions = torch.arange(9, device=device)[None].expand(3, 9) + (
        2 if style == "esm2" else PAD + 1
    )
    for kwargs in (
        {"inputs_embeds": embeds, "attention_mask": keep.long()},
        {"inputs_embeds": embeds},
        {"input_ids": tokens, "position_ids": positions},
        {"input_ids": tokens, "position_ids": positions[:1]},
        {"input_ids": tokens[:, :3], "position_ids": positions[:1, :3]},  # nothing to unpad
    ):
        want = reference(**kwargs).last_hidden_state
        got = model(**kwargs).last_hidden_state
        mask = kwargs.get("attention_mask", keep if "input_ids" in kwargs else None)
        mask = None if mask is None else mask[:, : got.shape[1]]
        if mask is None:
            torch.testing.assert_close(got, want, **MODEL_FP32)
        else:
            assert_real_close(got, want, mask.bool())


LENGTHS = st.lists(st.integers(1, 14), min_size=1, max_size=3)


@FIXTURE_OK
@given(
    lengths=LENGTHS, extra=st.integers(0, 3), style=st.sampled_from(STYLES), seed=st.integers(0, 99)
)
@example(lengths=[1], extra=0, style="esm2", seed=0)
@example(lengths=[14, 1, 5], extra=2, style="esm1b", seed=1)
def test_batch_invariance_and_varlen_equals_padded_torch(device, lengths, extra, style, seed):
    """A sequence's outputs do not depend on its batch or padding length; packed == padded."""
    check_batch_invariance("torch", device, lengths, extra, style, seed)


@settings(FIXTURE_OK, max_examples=TRITON_EXAMPLES)
@given(
    lengths=LENGTHS, extra=st.integers(0, 3), style=st.sampled_from(STYLES), seed=st.integers(0, 99)
)
@example(lengths=[14, 1, 5], extra=2, style="esm2", seed=1)
@example(lengths=[3, 14, 9], extra=0, style="esm1b", seed=2)
def test_batch_invariance_and_varlen_equals_padded_triton(device, lengths, extra, style, seed):
    check_batch_invariance("triton", device, lengths, extra, style, seed)


def check_batch_invariance(backend, device, lengths, extra, style, seed):
    _, model = make_pair("EsmForMaskedLM", style, backend, device)
    g = torch.Generator().manual_seed(seed)
    L = max(lengths) + extra
    tokens = torch.full((len(lengths), L), PAD)
    for b, n in enumerate(lengths):
        body = torch.randint(4, 24, (n,), generator=g)
        body[torch.rand(n, generator=g) < 0.2] = MASK
        tokens[b, :n] = body
    tokens = tokens.to(device)
    keep = tokens.ne(PAD)
    with launches() as seen:
        packed = model(tokens).logits
    assert_path(seen, backend, model, backward=False)
    model.esm.encoder.unpad = False
    with launches() as seen:
        padded = model(tokens).logits
    assert_path(seen, backend, model, backward=False)
    model.esm.encoder.unpad = True
    assert_real_close(packed, padded, keep)
    for b, n in enumerate(lengths):
        alone = model(tokens[b : b + 1, :n]).logits[0]
        torch.testing.assert_close(packed[b, :n], alone, **MODEL_FP32)


def test_packed_rotary_positions_are_column_indices(device):
    """Packing keeps each token's column in the padded batch as its rotary position (left
    padding and holes included); the caller's [1, L] or [B, L] positions are gathered alike."""
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 0, 1, 0], [1, 1, 1, 1, 1]], device=device)
    pack = fast.PackedBatch.from_mask(mask, None, rotary=True)
    columns = torch.arange(5, device=device).expand(3, 5)[mask.bool()]
    assert pack.position_ids.tolist() == columns.tolist()
    assert pack.cu_seqlens.tolist() == [0, 3, 6, 11] and pack.max_seqlen == 5
    given = torch.arange(5, device=device)[None] * 10 + 3
    assert fast.PackedBatch.from_mask(mask, given, rotary=True).position_ids.tolist() == [
        23, 33, 43, 3, 13, 33, 3, 13, 23, 33, 43,
    ]  # fmt: skip
    assert fast.PackedBatch.from_mask(mask, None, rotary=False).position_ids is None


def test_checkpoint_dir_loads_into_both_and_round_trips(tmp_path, device):
    config = tiny_config("esm2")
    torch.manual_seed(2)
    ref.EsmForMaskedLM(config).save_pretrained(tmp_path / "ref")
    reference = ref.EsmForMaskedLM.from_pretrained(tmp_path / "ref", device=device)
    model = fast.EsmForMaskedLM.from_pretrained(tmp_path / "ref", device=device)
    assert isinstance(model, fast.EsmForMaskedLM) and not model.training
    ref_state, state = reference.state_dict(), model.state_dict()
    assert list(state) == list(ref_state)
    for key in state:
        torch.testing.assert_close(state[key], ref_state[key], atol=0, rtol=0)
    # Tied decoder stays tied in the fast model.
    assert model.lm_head.decoder.weight is model.esm.embeddings.word_embeddings.weight
    tokens, keep = batch(device)
    assert_real_close(model(tokens).logits, reference(tokens).logits, keep)
    # Fast -> disk -> reference is lossless; a base-class load drops the head (prefix fitting).
    model.save_pretrained(tmp_path / "fast")
    back = ref.EsmForMaskedLM.from_pretrained(tmp_path / "fast", device=device)
    for key, value in back.state_dict().items():
        torch.testing.assert_close(value, ref_state[key], atol=0, rtol=0)
    base = fast.EsmModel.from_pretrained(tmp_path / "ref", device=device, backend="torch")
    assert isinstance(base, fast.EsmModel) and base.backend == "torch"
    assert "backend" not in base.config.to_dict()
    assert base.encoder.layer[1].attention.LayerNorm.backend == "torch"
    assert_real_close(base(tokens).last_hidden_state, reference.esm(tokens).last_hidden_state, keep)
    with pytest.raises(ValueError, match="'cpu'"):
        fast.EsmModel.from_pretrained(tmp_path / "ref", backend="cpu")


def test_half_precision_loading_and_autocast(tmp_path, device):
    torch.manual_seed(4)
    ref.EsmForMaskedLM(tiny_config("esm2")).save_pretrained(tmp_path)
    tokens, keep = batch(device)
    want = ref.EsmForMaskedLM.from_pretrained(tmp_path, device=device)(tokens).logits
    dtype = torch.bfloat16
    ref_low = ref.EsmForMaskedLM.from_pretrained(tmp_path, device=device, dtype=dtype)
    model = fast.EsmForMaskedLM.from_pretrained(tmp_path, device=device, dtype=dtype)
    model.backend = "torch"
    assert (
        model.esm.encoder.layer[0].attention.self.rotary_embeddings.inv_freq.dtype == torch.float32
    )
    got = model(tokens).logits
    assert got.dtype == dtype
    assert_within_rule(got[keep], ref_low(tokens).logits[keep], want[keep], dtype, "bf16 load")
    # .to(dtype) and autocast on an fp32 model.
    fp32 = fast.EsmForMaskedLM.from_pretrained(tmp_path, device=device)
    fp32.backend = "torch"
    with torch.autocast(device.type, dtype=dtype):
        auto = fp32(tokens).logits
    assert_within_rule(auto[keep], ref_low(tokens).logits[keep], want[keep], dtype, "autocast")
    cast = fp32.to(dtype)(tokens).logits
    assert cast.dtype == dtype and torch.isfinite(cast).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_stays_finite_at_real_activation_scales(backend, device):
    """Large hidden norms (embeddings x 1e4, LayerNorm gains x 8): no inf/NaN in fp16."""
    reference, model = make_pair("EsmForMaskedLM", "esm2", backend, device)
    with torch.no_grad():
        reference.esm.embeddings.word_embeddings.weight.mul_(1e4)
        for n, p in reference.named_parameters():
            if n.endswith("LayerNorm.weight"):
                p.mul_(8.0)
    model.load_state_dict(reference.state_dict())
    tokens, keep = batch(device)
    out = reference(tokens, output_hidden_states=True)
    # Mean hidden norm > 300: its sum of squares would overflow fp16 (max 65504).
    assert out.hidden_states[1][keep].norm(dim=-1).mean() > 300
    half = torch.float16
    ref_half = make_pair("EsmForMaskedLM", "esm2", "torch", device)[0]
    ref_half.load_state_dict(reference.state_dict())
    with launches() as seen:
        got = model.to_device_dtype(dtype=half)(tokens).logits
    assert_path(seen, backend, model, backward=False)
    torch_half = ref_half.to_device_dtype(dtype=half)(tokens).logits
    assert torch.isfinite(got).all()
    assert_within_rule(got[keep], torch_half[keep], out.logits[keep], half, "fp16 logits")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_checkpointing_recomputes_and_matches(backend, device):
    _, model = make_pair("EsmForTokenClassification", "esm2", backend, device)
    tokens, _ = batch(device)
    labels = labels_for("EsmForTokenClassification", tokens)
    model.train()
    model(tokens, labels=labels).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    calls = []
    # The layer's first op; non-reentrant recomputation stops early, so a hook on the layer
    # itself would not see the second call.
    model.esm.encoder.layer[0].attention.self.query.register_forward_hook(
        lambda *a: calls.append(1)
    )
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    with launches() as seen:
        model(tokens, labels=labels).loss.backward()
    assert len(calls) == 2  # forward + recomputation in backward
    if backend == "triton":  # each layer's attention runs twice, its backward once
        layers = model.config.num_hidden_layers
        seen.expect(*ROTARY_FWD, exactly=2 * layers)
        seen.expect(*ROTARY_BWD, exactly=layers)
    for n, p in model.named_parameters():
        if n in plain:
            torch.testing.assert_close(p.grad, plain[n], **GRAD_TOL)


def test_attention_dropout_in_training_uses_the_reference_attention(device):
    """With attention dropout the call is padded through the reference core: same RNG stream,
    so the same seed gives the reference's values."""
    overrides = dict(attention_probs_dropout_prob=0.3, hidden_dropout_prob=0.1)
    reference, model = make_pair("EsmForMaskedLM", "esm2", "torch", device, **overrides)
    tokens, keep = batch(device)
    reference.train(), model.train()
    torch.manual_seed(7)
    want = reference(tokens).logits
    torch.manual_seed(7)
    got = model(tokens).logits
    torch.testing.assert_close(got, want, **MODEL_FP32)
    model.eval(), reference.eval()
    assert_real_close(model(tokens).logits, reference(tokens).logits, keep)


def test_backend_is_validated_and_reaches_every_op(device, monkeypatch):
    config = tiny_config("esm2")
    with pytest.raises(ValueError, match="'cuda'"):
        fast.EsmModel(config, backend="cuda")
    with pytest.raises(ValueError, match="'fast'"):
        fast.EsmForMaskedLM(config, backend="fast")
    model = fast.EsmForSequenceClassification(config, backend="triton").to(device)
    with pytest.raises(ValueError, match="'gpu'"):
        model.backend = "gpu"
    assert model.backend == "triton"
    model.backend = "torch"
    seen = []
    real_ln, real_attn = fast.layer_norm, fast.rotary_attention
    monkeypatch.setattr(
        fast,
        "layer_norm",
        lambda *a, backend=None: seen.append(("ln", backend)) or real_ln(*a, backend=backend),
    )
    monkeypatch.setattr(
        fast,
        "rotary_attention",
        lambda *a, backend=None, **k: (
            seen.append(("attn", backend)) or real_attn(*a, backend=backend, **k)
        ),
    )
    tokens, _ = batch(device)
    model.eval()(tokens)
    assert ("attn", "torch") in seen and ("ln", "torch") in seen
    assert {b for _, b in seen} == {"torch"}
    assert len(seen) == 2 * 3 + 1  # per layer: 2 LayerNorms + attention; final LayerNorm
    assert model.esm.backend == "torch"


@pytest.mark.parametrize("env", ["triton", "torch"])
def test_backend_none_follows_the_environment_at_call_time(env, device, monkeypatch):
    """A model built without a backend reads ESMKERNELS_BACKEND at each call."""
    model = fast.EsmForMaskedLM(tiny_config("esm2")).to(device).eval()
    assert model.backend is None
    monkeypatch.setenv("ESMKERNELS_BACKEND", env)
    with launches() as seen:
        model(batch(device)[0])
    assert_path(seen, env, model, backward=False)


def test_input_errors_are_the_references(device):
    _, model = make_pair("EsmForMaskedLM", "esm2", "torch", device)
    tokens, _ = batch(device)
    with pytest.raises(ValueError, match="token id 40"):
        model(tokens.masked_fill(tokens.eq(MASK), 40))
    with pytest.raises(ValueError, match=r"sequence\(s\) \[1\]"):
        model(
            tokens,
            attention_mask=torch.ones_like(tokens).index_fill(
                0, torch.tensor([1], device=device), 0
            ),
        )
    with pytest.raises(TypeError, match="EsmConfig"):
        fast.EsmModel({"hidden_size": 32})


@pytest.mark.gpu
def test_gpu_esm2_650m_shape_bf16_against_fp32_reference(device):
    """ESM-2 650M shape, random weights: fast bf16 (Triton) within the rule of the fp32
    reference, tolerance: 2 x the reference's own bf16 error + 8e-3 (tests/tolerances.py)."""
    config = EsmConfig(
        vocab_size=33, pad_token_id=PAD, mask_token_id=MASK, hidden_size=1280,
        num_hidden_layers=33, num_attention_heads=20, intermediate_size=5120,
        position_embedding_type="rotary", token_dropout=True, emb_layer_norm_before=False,
        layer_norm_eps=1e-5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    reference = ref.EsmForMaskedLM(config).to(device).eval()
    lengths = [300, 57, 211, 1022]
    tokens = torch.full((4, max(lengths) + 2), PAD, device=device)
    for b, n in enumerate(lengths):
        tokens[b, 0], tokens[b, n + 1] = CLS, EOS
        tokens[b, 1 : n + 1] = torch.randint(4, 24, (n,), device=device)
    keep = tokens.ne(PAD)
    with torch.no_grad():
        want = reference(tokens).logits
        ref_low = ref.EsmForMaskedLM(config).to(device).eval()
        ref_low.load_state_dict(reference.state_dict())
        ref_low.to_device_dtype(dtype=torch.bfloat16)
        torch_low = ref_low(tokens).logits
        del ref_low
        model = fast.EsmForMaskedLM(config, backend="triton").to(device).eval()
        model.load_state_dict(reference.state_dict())
        model.to_device_dtype(dtype=torch.bfloat16)
        got = model(tokens).logits
    assert_within_rule(got[keep], torch_low[keep], want[keep], torch.bfloat16, "650M bf16")


@pytest.mark.gpu
def test_gpu_training_step_bf16_autocast(device):
    config = tiny_config("esm2", hidden_size=320, num_attention_heads=20, intermediate_size=1280,
                         num_hidden_layers=6, max_position_embeddings=1026)  # fmt: skip
    torch.manual_seed(0)
    model = fast.EsmForMaskedLM(config, backend="triton").to(device).train()
    tokens = torch.randint(4, 24, (4, 200), device=device)
    tokens[2:, 150:] = PAD
    labels = tokens.masked_fill(tokens.eq(PAD), -100)
    model.gradient_checkpointing_enable()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(tokens, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
