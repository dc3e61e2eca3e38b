"""The packed CPU inference stack (models/packed_cpu.py): equal to the reference, run only when
it should, bf16 within the tolerance rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from esmkernels import EsmConfig
from esmkernels.models import packed_cpu
from esmkernels.models.esm import EsmForMaskedLM
from esmkernels.reference import esm as ref
from tests.tolerances import FP32, MODEL_FP32, assert_within_rule


def config(rotary: bool = True) -> EsmConfig:
    return EsmConfig(
        vocab_size=33, pad_token_id=1, mask_token_id=32, hidden_size=48, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=96,
        position_embedding_type="rotary" if rotary else "absolute",
        token_dropout=rotary, emb_layer_norm_before=not rotary, max_position_embeddings=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip


def skewed_batch(lengths=(19, 3, 1, 11)):
    """<cls> residues <eos>, right padded (a one-residue row included)."""
    g = torch.Generator().manual_seed(0)
    width = max(lengths) + 2
    ids = torch.full((len(lengths), width), 1)
    for b, n in enumerate(lengths):
        ids[b, 0], ids[b, n + 1] = 0, 2
        ids[b, 1 : n + 1] = torch.randint(4, 24, (n,), generator=g)
    ids[1, 2] = 32  # a <mask>
    return ids, ids.ne(1).long()


def pair(rotary: bool = True, ffn_gain: float = 1.0, attn_gain: float = 1.0):
    """(reference, fast) with equal weights; ffn_gain scales the feed-forward projections (up by
    ffn_gain, down by 2 * ffn_gain) so that GELU sees O(1) inputs and its output matters (at the
    default init GELU is nearly linear and a tanh approximation goes unseen); attn_gain scales
    the query and key projections so that attention is sharp and rotary errors show."""
    torch.manual_seed(0)
    reference = ref.EsmForMaskedLM(config(rotary)).eval()
    with torch.no_grad():
        for layer in reference.esm.encoder.layer:
            layer.intermediate.dense.weight.mul_(ffn_gain)
            layer.output.dense.weight.mul_(2 * ffn_gain)
            for lin in (layer.attention.self.query, layer.attention.self.key):
                lin.weight.mul_(attn_gain)
    fast = EsmForMaskedLM(config(rotary), backend="torch").eval()
    fast.load_state_dict(reference.state_dict())
    return reference, fast


def at_dtype(reference, fast, dtype):
    """Logits at real tokens of the skewed batch: (reference fp32, reference run at dtype, fast
    model at dtype); `fast` is cast to dtype in place."""
    ids, mask = skewed_batch()
    keep = mask.bool()
    low = ref.EsmForMaskedLM(reference.config).eval()
    low.load_state_dict(reference.state_dict())
    low.to_device_dtype(dtype=dtype)
    fast.to_device_dtype(dtype=dtype)
    with torch.inference_mode():
        return tuple(m(ids, attention_mask=mask).logits[keep] for m in (reference, low, fast))


class Spy:
    def __init__(self, monkeypatch):
        self.calls = 0
        real = packed_cpu.layer_forward

        def counted(*args):
            self.calls += 1
            return real(*args)

        monkeypatch.setattr(packed_cpu, "layer_forward", counted)


@pytest.mark.parametrize("rotary", [True, False])
def test_packed_equals_reference_and_ran(monkeypatch, rotary):
    reference, fast = pair(rotary)
    ids, mask = skewed_batch()
    spy = Spy(monkeypatch)
    with torch.no_grad():
        want = reference(ids, attention_mask=mask, output_hidden_states=True)
        got = fast(ids, attention_mask=mask, output_hidden_states=True)
    assert spy.calls == 2  # one per layer: the packed stack ran
    keep = mask.bool()
    torch.testing.assert_close(got.logits[keep], want.logits[keep], **MODEL_FP32)
    for g, w in zip(got.hidden_states, want.hidden_states):
        torch.testing.assert_close(g[keep], w[keep], **MODEL_FP32)
        assert g[~keep].abs().max() == 0  # zeros at padding


def test_batch_invariance():
    _, fast = pair()
    ids, mask = skewed_batch()
    with torch.inference_mode():
        batch = fast(ids, attention_mask=mask).logits
        alone = fast(ids[:1], attention_mask=mask[:1]).logits
    torch.testing.assert_close(batch[0], alone[0], **MODEL_FP32)


def test_grad_enabled_uses_layer_modules(monkeypatch):
    """With gradients wanted the reference layers run (the packed stack has no backward)."""
    _, fast = pair()
    ids, mask = skewed_batch()
    spy = Spy(monkeypatch)
    fast(ids, attention_mask=mask).logits.sum().backward()
    assert spy.calls == 0
    assert fast.esm.encoder.layer[0].attention.self.query.weight.grad is not None


def test_fused_qkv_cache_follows_weights():
    reference, fast = pair()
    ids, mask = skewed_batch()
    with torch.no_grad():
        fast(ids, attention_mask=mask)
        for model in (reference, fast):  # in-place change after the cache was built
            model.esm.encoder.layer[0].attention.self.key.weight.mul_(1.5)
        want, got = reference(ids, attention_mask=mask), fast(ids, attention_mask=mask)
    keep = mask.bool()
    torch.testing.assert_close(got.logits[keep], want.logits[keep], **MODEL_FP32)


def test_wrapped_linear_is_called_as_module():
    """A projection that is not a plain nn.Linear (LoRA, int8) is called, not bypassed."""
    reference, fast = pair()

    class Wrapped(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, x):
            self.calls += 1
            return self.inner(x)

    core = fast.esm.encoder.layer[1].attention.self
    core.value = Wrapped(core.value)
    ids, mask = skewed_batch()
    with torch.no_grad():
        want, got = reference(ids, attention_mask=mask), fast(ids, attention_mask=mask)
    assert core.value.calls == 1
    keep = mask.bool()
    torch.testing.assert_close(got.logits[keep], want.logits[keep], **MODEL_FP32)


def test_bf16_within_tolerance_rule():
    want, torch_at_dtype, got = at_dtype(*pair(), torch.bfloat16)
    assert got.dtype == torch.bfloat16
    assert_within_rule(got, torch_at_dtype, want, torch.bfloat16, name="bf16 logits")


def test_cli_embed_quantize_int8(tmp_path):
    from esmkernels import open_embeddings
    from tests._cli import fasta, lm_checkpoint, run

    ckpt = lm_checkpoint(tmp_path / "ckpt")
    fa = fasta(tmp_path / "in.fasta", [("a", "MKTAYIAKQRQISFVKSHFSRQ"), ("b", "MVLSPADKTNV")])
    args = ("embed", fa, "-m", ckpt, "--device", "cpu", "-q")
    assert run(*args, "-o", tmp_path / "fp32") == 0
    assert run(*args, "-o", tmp_path / "int8", "--quantize", "int8") == 0
    fp32, int8 = open_embeddings(tmp_path / "fp32"), open_embeddings(tmp_path / "int8")
    for name in ("a", "b"):
        want = fp32[name]["mean_representations"]
        got = int8[name]["mean_representations"]
        layer = max(want)
        assert not torch.equal(got[layer], want[layer])  # quantization did happen ...
        cos = torch.nn.functional.cosine_similarity(got[layer], want[layer], dim=0)
        assert cos > 0.99  # ... and stays close
    bad = run(*args, "-o", tmp_path / "bad", "--quantize", "int8", "--dtype", "bfloat16")
    assert bad == 2


def test_lm_head_runs_on_real_rows_only():
    """Packed inference: the LM head's one GEMM sees the real tokens plus one zero row (the
    padding value), and padding logits are still the head applied to zeros."""
    reference, fast = pair()
    ids, mask = skewed_batch()
    seen = []
    fast.lm_head.dense.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    with torch.inference_mode():
        got = fast(ids, attention_mask=mask).logits
        rows = sorted(s[0] for s in seen)
        want = reference(ids, attention_mask=mask).logits
        at_zero = fast.lm_head(torch.zeros(1, fast.config.hidden_size))[0]
    keep = mask.bool()
    assert rows == [int(keep.sum()) + 1]
    torch.testing.assert_close(got[keep], want[keep], **MODEL_FP32)
    torch.testing.assert_close(got[~keep], at_zero.expand(int((~keep).sum()), -1), **MODEL_FP32)


def test_feed_forward_in_uneven_blocks_equals_reference(monkeypatch):
    """A block budget of 5 rows splits the 38 packed tokens into 8 blocks (the last one short);
    every block is computed (a skipped or misplaced block breaks the reference comparison)."""
    reference, fast = pair(ffn_gain=7.0)
    ids, mask = skewed_batch()
    tokens = int(mask.sum())
    monkeypatch.setattr(packed_cpu, "FFN_BLOCK_BYTES", 4 * fast.config.intermediate_size * 5)
    ups = []
    real = packed_cpu._affine

    def counted(x, w, b, gelu=False):
        if gelu:
            ups.append(x.shape[0])
        return real(x, w, b, gelu)

    monkeypatch.setattr(packed_cpu, "_affine", counted)
    with torch.inference_mode():
        want = reference(ids, attention_mask=mask).logits
        got = fast(ids, attention_mask=mask).logits
    layers = fast.config.num_hidden_layers
    assert len(ups) == layers * -(-tokens // 5) and sum(ups) == layers * tokens
    keep = mask.bool()
    torch.testing.assert_close(got[keep], want[keep], **MODEL_FP32)


@pytest.mark.parametrize("onednn", [True, False])
def test_onednn_and_plain_linear_paths_equal_reference(monkeypatch, onednn):
    """The oneDNN projections (gelu fused into the up-projection) run when PyTorch has them, and
    the F.linear fallback gives the same results."""
    if onednn and packed_cpu.ONEDNN_LINEAR is None:
        pytest.skip("this PyTorch build has no torch.ops.mkldnn._linear_pointwise")
    calls = []
    if onednn:
        real = packed_cpu.ONEDNN_LINEAR

        def counted(x, w, b, attr, scalars, algorithm):
            calls.append(attr)
            return real(x, w, b, attr, scalars, algorithm)

        monkeypatch.setattr(packed_cpu, "ONEDNN_LINEAR", counted)
    else:
        monkeypatch.setattr(packed_cpu, "ONEDNN_LINEAR", None)
    reference, fast = pair(ffn_gain=7.0)
    ids, mask = skewed_batch()
    with torch.inference_mode():
        want = reference(ids, attention_mask=mask).logits
        got = fast(ids, attention_mask=mask).logits
    keep = mask.bool()
    torch.testing.assert_close(got[keep], want[keep], **MODEL_FP32)
    if onednn:  # per layer: QKV, W_o, W_1 (+ gelu), W_2
        assert calls == ["none", "none", "gelu", "none"] * fast.config.num_hidden_layers


@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("gelu", [True, False])
def test_affine_is_linear_then_exact_gelu(monkeypatch, onednn, gelu):
    """`_affine` on either path equals F.linear (+ exact-erf GELU) at fp32 precision, on inputs
    where the tanh approximation is off by ~1e-4 and more."""
    if onednn and packed_cpu.ONEDNN_LINEAR is None:
        pytest.skip("this PyTorch build has no torch.ops.mkldnn._linear_pointwise")
    if not onednn:
        monkeypatch.setattr(packed_cpu, "ONEDNN_LINEAR", None)
    g = torch.Generator().manual_seed(0)
    x, w, b = (
        torch.randn(37, 24, generator=g),
        torch.randn(40, 24, generator=g) / 5,
        torch.randn(40),
    )
    want = F.linear(x, w, b)
    want = F.gelu(want) if gelu else want
    got = packed_cpu._affine(x, w, b, gelu)
    torch.testing.assert_close(got, want, **FP32)
    if gelu:
        assert (F.gelu(F.linear(x, w, b), approximate="tanh") - want).abs().max() > 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_with_sharp_attention(monkeypatch, dtype):
    """With sharp attention, the packed rotary (bf16: tables expanded over heads) matches the
    reference, and leaving rotary out would not (the test can see rotary errors)."""
    reference, fast = pair(attn_gain=12.0)
    want, torch_at_dtype, got = at_dtype(reference, fast, dtype)
    ids, mask = skewed_batch()
    monkeypatch.setattr(packed_cpu, "rotate", lambda x, cos, sin: x)
    with torch.inference_mode():
        unrotated = fast(ids, attention_mask=mask).logits[mask.bool()]
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, **MODEL_FP32)
    else:
        assert_within_rule(got, torch_at_dtype, want, dtype, name="bf16 logits")
    with pytest.raises(AssertionError):
        assert_within_rule(unrotated, torch_at_dtype, want, torch.bfloat16, name="no rotary")


def test_bf16_without_onednn_bf16_uses_plain_linear(monkeypatch):
    """Where oneDNN has no bf16 on this CPU (ONEDNN_DTYPES without bf16), bf16 projections go
    through F.linear and stay within the tolerance rule."""
    if packed_cpu.ONEDNN_LINEAR is None:
        pytest.skip("this PyTorch build has no torch.ops.mkldnn._linear_pointwise")
    calls = []
    real = packed_cpu.ONEDNN_LINEAR

    def counted(x, *args):
        calls.append(x.dtype)
        return real(x, *args)

    monkeypatch.setattr(packed_cpu, "ONEDNN_LINEAR", counted)
    monkeypatch.setattr(packed_cpu, "ONEDNN_DTYPES", frozenset({torch.float32}))
    want, torch_at_dtype, got = at_dtype(*pair(ffn_gain=7.0), torch.bfloat16)
    assert calls == []
    assert_within_rule(got, torch_at_dtype, want, torch.bfloat16, name="bf16 logits, F.linear")
