"""Fused rotary flash attention (Triton, interpreted on CPU) against the reference op."""

import re

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from esmkernels.ops import _dispatch
from esmkernels.ops.rotary import rotary_attention
from esmkernels.ops.rotary.backward import rotary_attention_bwd
from esmkernels.ops.rotary.forward import rotary_attention_fwd
from esmkernels.reference import functional as ref
from tests._launches import ROTARY_BWD, ROTARY_FWD, launches, tiles
from tests._sm90 import Job, assert_no_spills, compile_report
from tests.tolerances import FP32_DOT, assert_within_rule

# The `device` fixture is constant across examples, so reusing it is safe.
FIXTURE_OK = settings(
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ]
)


def inv_freq_for(d, device, base=10000.0):
    return 1.0 / base ** (torch.arange(0, d, 2, device=device).float() / d)


def qkv(shape, dtype, device, requires_grad=True):
    return [
        torch.randn(*shape, device=device).to(dtype).requires_grad_(requires_grad) for _ in range(3)
    ]


def make_mask(kind, B, L, device):
    """'none', 'random' (first key always kept), or 'empty_row' (sequence 0 fully padded)."""
    if kind == "none":
        return None
    keep = torch.rand(B, L, device=device) > 0.3
    keep[:, 0] = True
    if kind == "empty_row":
        keep[0] = False
    return keep


def make_positions(kind, B, L, device):
    if kind == "default":
        return None
    if kind == "shared":  # [L]
        return torch.randperm(L, device=device) + 3
    return torch.randint(0, 2 * L + 5, (B, L), device=device)  # [B, L]


def eager_at_dtype(q, k, v, *, inv_freq=None, key_padding_mask=None, position_ids=None):
    """PyTorch eager attention with every op at q.dtype (scores, softmax, probs, output): the
    "torch at dtype" baseline of the low-precision tolerance rule, as flash-attn's tests use."""
    B, L, H, D = q.shape
    q = q * D**-0.5
    if inv_freq is not None:
        pos = torch.arange(L, device=q.device) if position_ids is None else position_ids
        cos, sin = ref.rotary_cos_sin(pos if pos.dim() == 2 else pos[None], inv_freq)
        q, k = ref.apply_rotary(q, cos, sin), ref.apply_rotary(k, cos, sin)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k)
    if key_padding_mask is not None:
        scores = scores.masked_fill(~key_padding_mask.bool()[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v)


def grads(out, do, tensors):
    return torch.autograd.grad(out, tensors, do)


@st.composite
def padded_cases(draw):
    return dict(
        B=draw(st.integers(1, 2)),
        L=draw(st.integers(1, 40)),
        H=draw(st.integers(1, 2)),
        D=draw(st.sampled_from([16, 32, 64])),
        rotary=draw(st.booleans()),
        mask=draw(st.sampled_from(["none", "random", "empty_row"])),
        pos=draw(st.sampled_from(["default", "shared", "per_batch"])),
    )


@FIXTURE_OK
@given(case=padded_cases())
@example(case=dict(B=2, L=33, H=2, D=32, rotary=True, mask="empty_row", pos="default"))
@example(case=dict(B=1, L=1, H=1, D=16, rotary=True, mask="none", pos="per_batch"))
@example(case=dict(B=2, L=17, H=1, D=64, rotary=False, mask="random", pos="default"))
@example(case=dict(B=2, L=21, H=2, D=16, rotary=True, mask="random", pos="per_batch"))
@example(case=dict(B=2, L=19, H=1, D=32, rotary=True, mask="none", pos="shared"))
def test_padded_fp32_forward_backward(device, case):
    B, L, H, D = case["B"], case["L"], case["H"], case["D"]
    q, k, v = qkv((B, L, H, D), torch.float32, device)
    kw = dict(
        inv_freq=inv_freq_for(D, device) if case["rotary"] else None,
        position_ids=make_positions(case["pos"], B, L, device),
        key_padding_mask=make_mask(case["mask"], B, L, device),
    )
    with launches() as seen:
        out = rotary_attention(q, k, v, backend="triton", **kw)
        do = torch.randn_like(out)
        got = grads(out, do, (q, k, v))
    seen.expect(*ROTARY_FWD, *ROTARY_BWD, exactly=1)
    want = ref.rotary_attention(q, k, v, **kw)
    torch.testing.assert_close(out, want, **FP32_DOT)
    for name, g, r in zip("qkv", got, grads(want, do, (q, k, v))):
        torch.testing.assert_close(g, r, **FP32_DOT, msg=lambda m, n=name: f"d{n}: {m}")


@FIXTURE_OK
@given(
    L=st.integers(1, 40),
    D=st.sampled_from([16, 32, 64]),
    dtype=st.sampled_from([torch.float16, torch.bfloat16]),
    mask=st.sampled_from(["none", "random", "empty_row"]),
)
@example(L=37, D=64, dtype=torch.bfloat16, mask="random")
def test_padded_low_precision_rule(device, L, D, dtype, mask):
    B, H = 2, 2
    q, k, v = qkv((B, L, H, D), dtype, device)
    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    kw = dict(inv_freq=inv_freq_for(D, device), key_padding_mask=make_mask(mask, B, L, device))
    out = rotary_attention(q, k, v, backend="triton", **kw)
    at_dtype = eager_at_dtype(q, k, v, **kw)
    want = ref.rotary_attention(qf, kf, vf, **kw)
    assert out.dtype == dtype
    assert_within_rule(out, at_dtype, want, dtype, "out")
    do = torch.randn_like(out)
    got = grads(out, do, (q, k, v))
    g_dtype = grads(at_dtype, do, (q, k, v))
    g_ref = grads(want, do.float(), (qf, kf, vf))
    for name, g, t, r in zip("qkv", got, g_dtype, g_ref):
        assert g.dtype == dtype
        assert_within_rule(g, t, r, dtype, f"d{name}")


def pack(lengths, H, D, dtype, device):
    """Packed [T, H, D] q, k, v, cu_seqlens, and the same sequences padded [B, Lmax, H, D]."""
    cu = torch.tensor(
        [0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device
    )
    T, Lmax = int(cu[-1]), max(max(lengths), 1)
    packed = qkv((T, H, D), dtype, device)
    padded, keep = [], torch.zeros(len(lengths), Lmax, dtype=torch.bool, device=device)
    for t in packed:
        p = torch.zeros(len(lengths), Lmax, H, D, dtype=dtype, device=device)
        for b, (s, n) in enumerate(zip(cu[:-1].tolist(), lengths)):
            p[b, :n] = t.detach()[s : s + n]
            keep[b, :n] = True
        padded.append(p.requires_grad_())
    return packed, cu, padded, keep


def unpad(x, keep):
    return x[keep]


@FIXTURE_OK
@given(
    lengths=st.lists(st.integers(0, 23), min_size=1, max_size=4).filter(lambda ls: sum(ls) > 0),
    D=st.sampled_from([16, 32]),
    rotary=st.booleans(),
)
@example(lengths=[1, 0, 23, 5], D=32, rotary=True)
@example(lengths=[7, 18, 3], D=16, rotary=False)
def test_varlen_equals_reference_and_padded(device, lengths, D, rotary):
    H = 2
    (q, k, v), cu, (qp, kp, vp), keep = pack(lengths, H, D, torch.float32, device)
    inv = inv_freq_for(D, device) if rotary else None
    with launches() as seen:
        out = rotary_attention(q, k, v, cu_seqlens=cu, inv_freq=inv, backend="triton")
    seen.expect(*ROTARY_FWD, exactly=1)
    want = ref.varlen_rotary_attention(q, k, v, cu, inv_freq=inv)
    torch.testing.assert_close(out, want, **FP32_DOT)
    # Batch invariance: packing == the padded computation with a key mask, on the valid rows.
    padded = rotary_attention(qp, kp, vp, key_padding_mask=keep, inv_freq=inv, backend="triton")
    torch.testing.assert_close(out, unpad(padded, keep), **FP32_DOT)
    torch_path = rotary_attention(q, k, v, cu_seqlens=cu, inv_freq=inv, backend="torch")
    torch.testing.assert_close(torch_path, want, **FP32_DOT)

    do = torch.randn_like(out)
    do_pad = torch.zeros_like(padded)
    do_pad[keep] = do
    g_var = grads(out, do, (q, k, v))
    g_ref = grads(want, do, (q, k, v))
    g_pad = grads(padded, do_pad, (qp, kp, vp))
    g_torch = grads(torch_path, do, (q, k, v))
    for name, a, r, p, t in zip("qkv", g_var, g_ref, g_pad, g_torch):
        torch.testing.assert_close(a, r, **FP32_DOT, msg=lambda m, n=name: f"d{n}: {m}")
        torch.testing.assert_close(a, unpad(p, keep), **FP32_DOT)
        torch.testing.assert_close(t, r, **FP32_DOT)


RECT_TILES = [
    pytest.param({"BLOCK_M": 16, "BLOCK_N": 32}, id="m16-n32"),
    pytest.param({"BLOCK_M": 32, "BLOCK_N": 16}, id="m32-n16"),
]


@pytest.mark.parametrize("blocks", RECT_TILES)
def test_rectangular_tiles_padded_and_varlen(device, blocks):
    """The GPU's tiles are rectangular; under the interpreter the default one is square, where
    a loop stepping by BLOCK_M instead of BLOCK_N cannot fail. Every kernel here runs with
    BLOCK_M != BLOCK_N (both orders) on sequences spanning several tiles in both directions,
    padding and sequence ends inside tiles, per-batch positions."""
    B, L, H, D = 2, 71, 2, 16
    q, k, v = qkv((B, L, H, D), torch.float32, device)
    keep = make_mask("random", B, L, device)
    keep[1, 40:] = False  # a padded tail starting inside a tile
    kw = dict(
        inv_freq=inv_freq_for(D, device),
        position_ids=make_positions("per_batch", B, L, device),
        key_padding_mask=keep,
    )
    lengths = [37, 5, 50]
    (vq, vk, vv), cu, _, _ = pack(lengths, H, D, torch.float32, device)
    pos = torch.randint(0, 90, (sum(lengths),), device=device)
    with tiles(**blocks) as kernels, launches() as seen:
        out = rotary_attention(q, k, v, backend="triton", **kw)
        do = torch.randn_like(out)
        got = grads(out, do, (q, k, v))
        vout = rotary_attention(
            vq, vk, vv, cu_seqlens=cu, inv_freq=kw["inv_freq"], position_ids=pos, backend="triton"
        )
        vdo = torch.randn_like(vout)
        vgot = grads(vout, vdo, (vq, vk, vv))
    assert set(ROTARY_FWD + ROTARY_BWD[1:]) <= set(kernels)
    seen.expect(*ROTARY_FWD, *ROTARY_BWD, exactly=2)
    want = ref.rotary_attention(q, k, v, **kw)
    torch.testing.assert_close(out, want, **FP32_DOT)
    for name, g, r in zip("qkv", got, grads(want, do, (q, k, v))):
        torch.testing.assert_close(g, r, **FP32_DOT, msg=lambda m, n=name: f"padded d{n}: {m}")
    vwant = ref.varlen_rotary_attention(vq, vk, vv, cu, inv_freq=kw["inv_freq"], position_ids=pos)
    torch.testing.assert_close(vout, vwant, **FP32_DOT)
    for name, g, r in zip("qkv", vgot, grads(vwant, vdo, (vq, vk, vv))):
        torch.testing.assert_close(g, r, **FP32_DOT, msg=lambda m, n=name: f"varlen d{n}: {m}")


def test_varlen_position_ids_and_max_seqlen(device):
    lengths, H, D = [5, 11, 3], 1, 32
    (q, k, v), cu, _, _ = pack(lengths, H, D, torch.float32, device)
    pos = torch.randint(0, 50, (sum(lengths),), device=device)
    inv = inv_freq_for(D, device)
    out = rotary_attention(
        q, k, v, cu_seqlens=cu, max_seqlen=16, inv_freq=inv, position_ids=pos, backend="triton"
    )
    want = ref.varlen_rotary_attention(q, k, v, cu, inv_freq=inv, position_ids=pos)
    torch.testing.assert_close(out, want, **FP32_DOT)
    do = torch.randn_like(out)
    for g, r in zip(grads(out, do, (q, k, v)), grads(want, do, (q, k, v))):
        torch.testing.assert_close(g, r, **FP32_DOT)


def test_strided_views_of_a_fused_projection(device):
    # q, k, v as slices of one [B, L, H, 3 * D] buffer (token and head strides != contiguous).
    B, L, H, D = 2, 19, 2, 16
    qkv_buf = torch.randn(B, L, H, 3 * D, device=device, requires_grad=True)
    q, k, v = qkv_buf[..., :D], qkv_buf[..., D : 2 * D], qkv_buf[..., 2 * D :]
    assert not q.is_contiguous()
    inv = inv_freq_for(D, device)
    mask = make_mask("random", B, L, device)
    out = rotary_attention(q, k, v, inv_freq=inv, key_padding_mask=mask, backend="triton")
    want = ref.rotary_attention(q, k, v, inv_freq=inv, key_padding_mask=mask)
    torch.testing.assert_close(out, want, **FP32_DOT)
    do = torch.randn_like(out)
    (g,), (r,) = grads(out, do, (qkv_buf,)), grads(want, do, (qkv_buf,))
    torch.testing.assert_close(g, r, **FP32_DOT)

    # Varlen view: [T, 3, H, D] packed projection, q = buf[:, 0].
    buf = torch.randn(12, 3, H, D, device=device)
    cu = torch.tensor([0, 7, 12], dtype=torch.int32, device=device)
    args = (buf[:, 0], buf[:, 1], buf[:, 2])
    out = rotary_attention(*args, cu_seqlens=cu, inv_freq=inv, backend="triton")
    torch.testing.assert_close(
        out, ref.varlen_rotary_attention(*args, cu, inv_freq=inv), **FP32_DOT
    )


def test_fully_masked_sequence_gives_zeros_and_finite_grads(device):
    B, L, H, D = 2, 20, 2, 32
    q, k, v = qkv((B, L, H, D), torch.float32, device)
    keep = torch.ones(B, L, dtype=torch.bool, device=device)
    keep[1] = False
    inv = inv_freq_for(D, device)
    for backend in ("triton", "torch"):
        out = rotary_attention(q, k, v, inv_freq=inv, key_padding_mask=keep, backend=backend)
        assert torch.equal(out[1], torch.zeros_like(out[1])), backend
        gq, gk, gv = grads(out, torch.randn_like(out), (q, k, v))
        for g in (gq, gk, gv):
            assert torch.isfinite(g).all(), backend
            assert torch.equal(g[1], torch.zeros_like(g[1])), backend
    _, lse = rotary_attention_fwd(
        q.detach(), k.detach(), v.detach(), inv_freq=inv, position_ids=None,
        key_padding_mask=keep, cu_seqlens=None, max_seqlen=None, scale=D**-0.5,
    )  # fmt: skip
    assert torch.isneginf(lse[1]).all() and torch.isfinite(lse[0]).all()


def test_launchers_lse_and_backward_without_autograd(device):
    B, L, H, D = 1, 23, 2, 16
    q, k, v = qkv((B, L, H, D), torch.float32, device, requires_grad=False)
    inv = inv_freq_for(D, device)
    side = dict(
        inv_freq=inv,
        position_ids=None,
        key_padding_mask=None,
        cu_seqlens=None,
        max_seqlen=None,
        scale=0.3,
    )
    out, lse = rotary_attention_fwd(q, k, v, **side)
    cos, sin = ref.rotary_cos_sin(torch.arange(L, device=device)[None], inv)
    qr, kr = ref.apply_rotary(q * 0.3, cos, sin), ref.apply_rotary(k, cos, sin)
    scores = torch.einsum("bqhd,bkhd->bhqk", qr, kr)
    torch.testing.assert_close(lse, scores.logsumexp(-1), **FP32_DOT)
    torch.testing.assert_close(
        out, ref.rotary_attention(q, k, v, inv_freq=inv, scale=0.3), **FP32_DOT
    )
    do = torch.randn_like(out)
    dq, dk, dv = rotary_attention_bwd(do, q, k, v, out, lse, **side)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    want = grads(ref.rotary_attention(*leaves, inv_freq=inv, scale=0.3), do, leaves)
    for g, r in zip((dq, dk, dv), want):
        torch.testing.assert_close(g, r, **FP32_DOT)


def test_relative_position_invariance(device):
    # Rotary scores depend only on position differences: shifting every position changes nothing.
    B, L, H, D = 1, 13, 1, 32
    q, k, v = qkv((B, L, H, D), torch.float32, device, requires_grad=False)
    inv = inv_freq_for(D, device)
    base = rotary_attention(q, k, v, inv_freq=inv, backend="triton")
    pos = torch.arange(L, device=device) + 17
    shifted = rotary_attention(q, k, v, inv_freq=inv, position_ids=pos, backend="triton")
    torch.testing.assert_close(shifted, base, atol=1e-4, rtol=1e-4)
    moved = rotary_attention(q, k, v, inv_freq=inv, position_ids=pos.flip(0), backend="triton")
    assert not torch.allclose(moved, base, atol=1e-3)


def test_errors_name_the_value(device):
    q, k, v = qkv((1, 4, 1, 16), torch.float32, device, requires_grad=False)
    with pytest.raises(ValueError, match="D=24"):
        x = torch.randn(1, 4, 1, 24, device=device)
        rotary_attention(x, x, x, backend="triton")
    with pytest.raises(TypeError, match="k.dtype"):
        rotary_attention(q, k.half(), v, backend="triton")
    with pytest.raises(ValueError, match=r"v.shape=\(1, 5, 1, 16\)"):
        rotary_attention(q, k, torch.randn(1, 5, 1, 16, device=device), backend="triton")
    with pytest.raises(ValueError, match=r"inv_freq.shape=\(16,\)"):
        rotary_attention(q, k, v, inv_freq=torch.ones(16, device=device), backend="triton")
    with pytest.raises(ValueError, match="dropout_p=0.1"):
        rotary_attention(q, k, v, dropout_p=0.1, backend="triton")
    with pytest.raises(ValueError, match="got shape"):
        rotary_attention(q[0], k[0], v[0], backend="triton")
    with pytest.raises(ValueError, match=r"key_padding_mask.shape=\(1, 3\)"):
        rotary_attention(
            q, k, v, key_padding_mask=torch.ones(1, 3, device=device), backend="triton"
        )
    t = torch.randn(6, 1, 16, device=device)
    with pytest.raises(ValueError, match=r"cu_seqlens=\[0, 4, 5\]"):
        rotary_attention(
            t, t, t, cu_seqlens=torch.tensor([0, 4, 5], device=device), backend="triton"
        )
    with pytest.raises(ValueError, match=r"cu_seqlens=\[0, 4, 2, 6\]"):
        rotary_attention(
            t, t, t, cu_seqlens=torch.tensor([0, 4, 2, 6], device=device), backend="triton"
        )
    with pytest.raises(ValueError, match="max_seqlen=3"):
        rotary_attention(
            t,
            t,
            t,
            cu_seqlens=torch.tensor([0, 4, 6], device=device),
            max_seqlen=3,
            backend="triton",
        )
    with pytest.raises(ValueError, match="not used with cu_seqlens"):
        cu = torch.tensor([0, 6], device=device)
        rotary_attention(
            t,
            t,
            t,
            cu_seqlens=cu,
            key_padding_mask=torch.ones(1, 6, device=device),
            backend="triton",
        )


def test_forced_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_dispatch, "interpreting", lambda: False)
    x = torch.randn(1, 4, 1, 16)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        rotary_attention(x, x, x, backend="triton")


def test_torch_backend_padded_matches_reference(device):
    B, L, H, D = 2, 9, 2, 16
    q, k, v = qkv((B, L, H, D), torch.float32, device)
    kw = dict(
        inv_freq=inv_freq_for(D, device),
        position_ids=make_positions("per_batch", B, L, device),
        key_padding_mask=make_mask("random", B, L, device),
        scale=0.17,
    )
    out = rotary_attention(q, k, v, backend="torch", **kw)
    want = ref.rotary_attention(q, k, v, **kw)
    torch.testing.assert_close(out, want, **FP32_DOT)
    do = torch.randn_like(out)
    for g, r in zip(grads(out, do, (q, k, v)), grads(want, do, (q, k, v))):
        torch.testing.assert_close(g, r, **FP32_DOT)


@pytest.mark.gpu
@pytest.mark.parametrize("L", [128, 1000, 4096])
@pytest.mark.parametrize("H,D", [(20, 64), (40, 64), (8, 128)])
def test_gpu_model_shapes_bf16(device, L, H, D):
    B = 2 if L <= 1024 else 1
    q, k, v = qkv((B, L, H, D), torch.bfloat16, device)
    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    keep = torch.ones(B, L, dtype=torch.bool, device=device)
    keep[0, L - L // 3 :] = False
    kw = dict(inv_freq=inv_freq_for(D, device), key_padding_mask=keep)
    out = rotary_attention(q, k, v, backend="triton", **kw)
    at_dtype = eager_at_dtype(q, k, v, **kw)
    want = ref.rotary_attention(qf, kf, vf, **kw)
    assert_within_rule(out, at_dtype, want, torch.bfloat16, "out")
    do = torch.randn_like(out)
    got = grads(out, do, (q, k, v))
    g_dtype = grads(at_dtype, do, (q, k, v))
    g_ref = grads(want, do.float(), (qf, kf, vf))
    for name, g, t, r in zip("qkv", got, g_dtype, g_ref):
        assert_within_rule(g, t, r, torch.bfloat16, f"d{name}")


@pytest.mark.gpu
@pytest.mark.parametrize("D", [16, 32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gpu_varlen_head_dims(device, D, dtype):
    lengths, H = [1, 300, 77, 1024, 0, 5], 4
    (q, k, v), cu, _, _ = pack(lengths, H, D, dtype, device)
    inv = inv_freq_for(D, device)
    out = rotary_attention(q, k, v, cu_seqlens=cu, inv_freq=inv, backend="triton")
    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    want = ref.varlen_rotary_attention(qf, kf, vf, cu, inv_freq=inv)
    if dtype == torch.float32:
        torch.testing.assert_close(out, want, **FP32_DOT)
    else:
        at_dtype = rotary_attention(q, k, v, cu_seqlens=cu, inv_freq=inv, backend="torch")
        assert_within_rule(out, at_dtype, want, dtype, "out")


def _aligned_args(args, constexprs):
    """Pointers and q/k/v/o/do/dq/dk strides: 16-divisible for real model shapes."""
    tensor_strides = re.compile(r"stride_(q|k|v|o|do|dq|dk)[bth]$")
    return [
        a for a in args if a not in constexprs and (a.endswith("_ptr") or tensor_strides.match(a))
    ]


# Variants known to spill registers on sm_90 under the running Triton: none (an autotune config
# that spills under one release only is left out of the space there: esmkernels.ops._spills).
KNOWN_SPILLS: tuple[str, ...] = ()


@pytest.mark.slow
def test_attention_kernels_compile_for_sm90():
    """Each flag variant compiles for sm_90 (see tests/_sm90.py), and so does every fp32
    autotune config an ESM launch can pick (D = 16, 32, 64, 128) and every bf16 / fp16 one,
    without register spills under the running Triton and within the 227 KB of shared memory an
    sm_90 block can have."""
    from esmkernels.ops.rotary import backward as bwd
    from esmkernels.ops.rotary import forward as fwd

    variants = [  # dtype, D, ROTARY, HAS_POS, HAS_MASK, IS_VARLEN, BLOCK_M, BLOCK_N, warps, stages
        ("bf16", 64, True, False, True, False, 64, 64, 8, 3),
        ("bf16", 128, True, True, True, False, 64, 32, 8, 3),
        ("fp16", 16, True, True, False, True, 64, 32, 4, 2),
        ("fp32", 128, False, False, True, False, 16, 16, 8, 2),
    ]
    jobs = []
    for name, module in (
        ("_rotary_attention_fwd_kernel", fwd),
        ("_rotary_attention_bwd_dkdv_kernel", bwd),
        ("_rotary_attention_bwd_dq_kernel", bwd),
    ):
        args = getattr(module, name).fn.arg_names
        for dt, D, rot, pos, mask, varlen, bm, bn, w, s in variants:
            constexprs = dict(
                D=D, ROTARY=rot, HAS_POS=pos, HAS_MASK=mask, IS_VARLEN=varlen,
                DOT_PRECISION="tf32x3" if dt == "fp32" else "tf32", BLOCK_M=bm, BLOCK_N=bn,
            )  # fmt: skip
            absent = {"freq_ptr": rot, "pos_ptr": pos, "mask_ptr": mask, "cu_ptr": varlen}
            constexprs.update({p: None for p, present in absent.items() if not present})
            # fp16 runs unhinted: the path a launch with odd strides (a sliced view) takes.
            aligned = _aligned_args(args, constexprs) if dt != "fp16" else []
            jobs.append(Job(module.__name__, name, constexprs, dt, aligned=aligned, num_warps=w,
                            num_stages=s))  # fmt: skip
        # every config the early prune keeps for this dtype and D (bf16: the largest D of each
        # list, where registers are tightest), under the running Triton
        for dt, D in [("fp32", 16), ("fp32", 32), ("fp32", 64), ("fp32", 128), ("bf16", 64),
                      ("bf16", 128)]:  # fmt: skip
            constexprs = dict(D=D, ROTARY=True, HAS_POS=False, HAS_MASK=True, IS_VARLEN=False,
                              DOT_PRECISION="tf32x3" if dt == "fp32" else "tf32", pos_ptr=None,
                              cu_ptr=None)  # fmt: skip
            aligned = _aligned_args(args, constexprs)
            jobs.append(Job(module.__name__, name, constexprs, dt, aligned=aligned))
    pre_name = "_rotary_attention_bwd_preprocess_kernel"
    pre = getattr(bwd, pre_name).arg_names
    for varlen in (False, True):
        constexprs = dict(D=64, IS_VARLEN=varlen, BLOCK_M=64)
        if not varlen:
            constexprs["cu_ptr"] = None
        aligned = _aligned_args(pre, constexprs)
        jobs.append(Job(bwd.__name__, pre_name, constexprs, aligned=aligned, num_warps=4,
                        num_stages=2))  # fmt: skip
    report = compile_report(jobs)
    assert len(report) > len(jobs)
    too_big = {k: v["shared"] for k, v in report.items() if v["shared"] > 227 * 1024}
    assert not too_big, f"shared memory over 227 KB (cannot launch on sm_90): {too_big}"
    assert_no_spills(report, known=KNOWN_SPILLS)
