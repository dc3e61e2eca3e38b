"""Axial (triangle) attention: functional reference vs an independent per-(b, r, h) formulation,
the Triton kernels (interpreted on CPU) vs the reference, forward and every gradient, and a
structural check that every kernel address computation is 64-bit."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from esmkernels.ops.axial import axial_attention
from esmkernels.ops.axial.backward import axial_attention_bwd, axial_attention_bwd_preprocess
from esmkernels.reference.esmfold import trunk_functional as ref
from tests._launches import AXIAL_BWD, AXIAL_DBIAS, AXIAL_FWD, launches, tiles
from tests._sm90 import (
    Job,
    addptr_offset_types,
    assert_all_offsets_int64,
    assert_no_spills,
    compile_report,
)
from tests.tolerances import FP32, FP32_DOT, assert_within_rule

LAYOUTS = ("contiguous", "transposed", "packed")
# The `device` fixture is constant across examples, so reusing it is safe.
FIXTURE_OK = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
# Reference-only tests are cheap: more examples than the profile gives interpreted kernels.
CHEAP = settings(max_examples=3 * settings().max_examples)


def make_inputs(B, R, N, H, D, *, layout, dtype=torch.float32, seed=0, device="cpu"):
    """q, k, v, gate as [B, R, N, H, D] leaves with the given memory layout:
    contiguous; transposed (the ending-node view x.transpose(1, 2)); packed (slices of one
    [.., H, 4D] projection, stride_h = 4D)."""
    g = torch.Generator().manual_seed(seed)
    if layout == "contiguous":
        ts = torch.randn(4, B, R, N, H, D, generator=g).to(device).unbind(0)
    elif layout == "transposed":
        ts = torch.randn(4, B, N, R, H, D, generator=g).to(device).transpose(2, 3).unbind(0)
    else:
        ts = torch.randn(B, R, N, H, 4 * D, generator=g).to(device).split(D, dim=-1)
    return [t.to(dtype).detach().requires_grad_() for t in ts]


def make_bias(B, H, N, *, permuted, dtype=torch.float32, seed=1, device="cpu"):
    """[B, H, N, N] bias, contiguous or the pair-bias view [B, N, N, H].permute(0, 3, 1, 2)."""
    g = torch.Generator().manual_seed(seed)
    if permuted:
        b = torch.randn(B, N, N, H, generator=g).to(device).permute(0, 3, 1, 2)
    else:
        b = torch.randn(B, H, N, N, generator=g).to(device)
    return b.to(dtype).detach().requires_grad_()


def make_mask(B, R, N, *, kind, seed=2, device="cpu"):
    if kind == "none":
        return None
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(B, R, N, generator=g) > 0.35
    if kind == "empty_rows":  # some rows with every key masked, some keys masked in all rows
        m[:, ::2] = False
        m[..., -1] = False
    return m.to(device)


def naive_attention(q, k, v, bias, mask, gate, scale):
    """Per (b, r, h) in float64, openfold style: bias 1e9 * (mask - 1); all-masked rows -> 0."""
    B, R, N, H, D = q.shape
    out = torch.zeros(B, R, N, H, D, dtype=torch.float64)
    for b in range(B):
        for r in range(R):
            if mask is not None and not bool(mask[b, r].any()):
                continue
            for h in range(H):
                logits = (q[b, r, :, h].double() * scale) @ k[b, r, :, h].double().T
                if bias is not None:
                    logits = logits + bias[b, h].double()
                if mask is not None:
                    logits = logits + 1e9 * (mask[b, r].double() - 1.0)[None, :]
                o = torch.softmax(logits, dim=-1) @ v[b, r, :, h].double()
                if gate is not None:
                    o = o * torch.sigmoid(gate[b, r, :, h].double())
                out[b, r, :, h] = o
    return out


shapes = st.tuples(
    st.integers(1, 2),  # B
    st.integers(1, 5),  # R
    st.integers(1, 12),  # N
    st.integers(1, 2),  # H
    st.sampled_from([8, 16, 32]),  # D
)


# ------------------------------------------------------------------------------------------------
# Reference vs independent formulation
# ------------------------------------------------------------------------------------------------


@CHEAP
@given(
    shape=shapes,
    mask_kind=st.sampled_from(["none", "random", "empty_rows"]),
    has_bias=st.booleans(),
    has_gate=st.booleans(),
)
@example(shape=(1, 1, 1, 1, 8), mask_kind="empty_rows", has_bias=True, has_gate=True)
@example(shape=(2, 4, 7, 2, 8), mask_kind="empty_rows", has_bias=False, has_gate=False)
def test_reference_matches_naive(shape, mask_kind, has_bias, has_gate):
    B, R, N, H, D = shape
    q, k, v, gate = make_inputs(B, R, N, H, D, layout="contiguous")
    bias = make_bias(B, H, N, permuted=False) if has_bias else None
    mask = make_mask(B, R, N, kind=mask_kind)
    gate = gate if has_gate else None
    out = ref.axial_attention(q, k, v, bias=bias, mask=mask, gate=gate, scale=0.7)
    expected = naive_attention(q, k, v, bias, mask, gate, 0.7)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_reference_chunked_equals_unchunked():
    q, k, v, gate = make_inputs(2, 7, 5, 2, 8, layout="transposed")
    bias, mask = make_bias(2, 2, 5, permuted=True), make_mask(2, 7, 5, kind="empty_rows")
    full = ref.axial_attention(q, k, v, bias=bias, mask=mask, gate=gate)
    for cs in (1, 3, 7, 100):
        torch.testing.assert_close(
            ref.axial_attention(q, k, v, bias=bias, mask=mask, gate=gate, chunk_size=cs), full
        )


def _randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for prm in module.parameters():
            prm.copy_(torch.randn(prm.shape, generator=g) / max(1, prm.shape[-1]) ** 0.5)


@pytest.mark.peer
@pytest.mark.parametrize("starting", [True, False])
def test_reference_composes_to_transformers_triangle_attention(starting):
    """HF EsmFoldTriangleAttention == layer_norm -> projections -> axial_attention (ending node
    on transposed views) -> linear_o, with every row keeping at least one key."""
    esmfold = pytest.importorskip("transformers.models.esm.modeling_esmfold")
    import torch.nn.functional as F

    B, L, C, H, D = 2, 6, 8, 2, 4
    module = esmfold.EsmFoldTriangleAttention(C, D, H, starting=starting)
    _randomize(module)
    x = torch.randn(B, L, L, C)
    mask = (torch.rand(B, L, L) > 0.4).float()
    mask[:, :, 0] = 1
    mask[:, 0, :] = 1
    with torch.no_grad():
        expected = module(x, mask=mask)
        xs, ms = (x, mask) if starting else (x.transpose(1, 2), mask.transpose(1, 2))
        xn = F.layer_norm(xs, (C,), module.layer_norm.weight, module.layer_norm.bias, 1e-5)
        mha = module.mha
        heads = lambda t: t.view(B, L, L, H, D)
        out = ref.axial_attention(
            heads(F.linear(xn, mha.linear_q.weight)),
            heads(F.linear(xn, mha.linear_k.weight)),
            heads(F.linear(xn, mha.linear_v.weight)),
            bias=F.linear(xn, module.linear.weight).permute(0, 3, 1, 2),
            mask=ms,
            gate=heads(F.linear(xn, mha.linear_g.weight, mha.linear_g.bias)),
        )
        out = F.linear(out.reshape(B, L, L, H * D), mha.linear_o.weight, mha.linear_o.bias)
        out = out if starting else out.transpose(1, 2)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.peer
def test_reference_composes_to_transformers_sequence_attention():
    """HF EsmFoldSelfAttention (gated, pair bias, key padding) is the R = 1 case."""
    esmfold = pytest.importorskip("transformers.models.esm.modeling_esmfold")
    import torch.nn.functional as F

    B, L, H, D = 2, 7, 2, 4
    module = esmfold.EsmFoldSelfAttention(H * D, H, D, gated=True)
    _randomize(module)
    x, pair_bias = torch.randn(B, L, H * D), torch.randn(B, L, L, H)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 5:] = False
    with torch.no_grad():
        expected, _ = module(x, mask=mask, bias=pair_bias)
        q, k, v = F.linear(x, module.proj.weight).view(B, L, H, 3 * D).split(D, dim=-1)
        gate = F.linear(x, module.g_proj.weight, module.g_proj.bias).view(B, L, H, D)
        out = ref.axial_attention(
            q[:, None], k[:, None], v[:, None],
            bias=pair_bias.permute(0, 3, 1, 2), mask=mask[:, None], gate=gate[:, None],
        )[:, 0]  # fmt: skip
        out = F.linear(out.reshape(B, L, H * D), module.o_proj.weight, module.o_proj.bias)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Kernels vs reference
# ------------------------------------------------------------------------------------------------


def _run(q, k, v, bias, mask, gate, backend, chunk_size=None, scale=None):
    out = axial_attention(
        q,
        k,
        v,
        bias=bias,
        mask=mask,
        gate=gate,
        scale=scale,
        chunk_size=chunk_size,
        backend=backend,
    )
    leaves = [t for t in (q, k, v, bias, gate) if t is not None]
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad(out, leaves, dout.to(out.device, out.dtype))
    return out, grads


def _run_kernel(*args, chunk_size=None, has_bias=True):
    """`_run` on the Triton path, asserting that every kernel launched once, whatever the
    chunk size (dbias only with a bias), and that the torch path never ran."""
    with launches() as seen:
        result = _run(*args, "triton", chunk_size=chunk_size)
    seen.expect(*AXIAL_FWD, *AXIAL_BWD, exactly=1)
    seen.expect(*AXIAL_DBIAS, exactly=1 if has_bias else 0)
    return result


@FIXTURE_OK
@given(
    shape=shapes,
    layout=st.sampled_from(LAYOUTS),
    mask_kind=st.sampled_from(["none", "random", "empty_rows"]),
    has_bias=st.booleans(),
    permuted_bias=st.booleans(),
    has_gate=st.booleans(),
)
@example(
    shape=(1, 1, 1, 1, 8), layout="contiguous", mask_kind="none",
    has_bias=True, permuted_bias=False, has_gate=True,
)  # fmt: skip
@example(
    shape=(1, 2, 2, 2, 16), layout="transposed", mask_kind="empty_rows",
    has_bias=True, permuted_bias=True, has_gate=True,
)  # fmt: skip
@example(
    shape=(2, 3, 11, 1, 32), layout="packed", mask_kind="random",
    has_bias=True, permuted_bias=False, has_gate=False,
)  # fmt: skip
@example(
    shape=(1, 2, 12, 2, 8), layout="contiguous", mask_kind="empty_rows",
    has_bias=False, permuted_bias=False, has_gate=False,
)  # fmt: skip
def test_kernel_matches_reference_fp32(
    device, shape, layout, mask_kind, has_bias, permuted_bias, has_gate
):
    B, R, N, H, D = shape
    q, k, v, gate = make_inputs(B, R, N, H, D, layout=layout, device=device)
    bias = make_bias(B, H, N, permuted=permuted_bias, device=device) if has_bias else None
    mask = make_mask(B, R, N, kind=mask_kind, device=device)
    gate = gate if has_gate else None
    out, grads = _run_kernel(q, k, v, bias, mask, gate, has_bias=has_bias)
    out_ref, grads_ref = _run(q, k, v, bias, mask, gate, "torch")
    assert out.stride() == q.stride() or not q.is_contiguous()
    torch.testing.assert_close(out, out_ref, **FP32_DOT)
    for name, g, gr in zip("q k v bias gate".split(), grads, grads_ref):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, gr, **FP32_DOT, msg=lambda m, n=name: f"grad {n}: {m}")


def test_kernel_fully_masked_rows_give_zeros(device):
    q, k, v, gate = make_inputs(1, 3, 9, 1, 16, layout="contiguous", device=device)
    bias = make_bias(1, 1, 9, permuted=False, device=device)
    mask = torch.ones(1, 3, 9, dtype=torch.bool, device=device)
    mask[0, 1] = False  # row 1: no key at all
    out, (dq, dk, dv, dbias, dgate) = _run_kernel(q, k, v, bias, mask, gate)
    assert torch.isfinite(out).all() and torch.isfinite(dbias).all()
    assert torch.count_nonzero(out[0, 1]) == 0
    for g in (dq, dk, dv, dgate):
        assert torch.count_nonzero(g[0, 1]) == 0
    assert torch.count_nonzero(out[0, 0]) > 0


def test_kernels_need_no_chunk(device):
    """chunk_size counts queries for the torch path; the kernels hold one tile of logits and
    launch once whatever it is (asserted by `_run_kernel`), with the same results."""
    q, k, v, gate = make_inputs(1, 5, 9, 1, 8, layout="transposed", device=device)
    bias = make_bias(1, 1, 9, permuted=True, device=device)
    mask = make_mask(1, 5, 9, kind="random", device=device)
    out, grads = _run_kernel(q, k, v, bias, mask, gate)
    out_c, grads_c = _run_kernel(q, k, v, bias, mask, gate, chunk_size=2)
    torch.testing.assert_close(out_c, out, atol=0, rtol=0)
    for g, gc in zip(grads, grads_c):
        torch.testing.assert_close(gc, g, atol=0, rtol=0)


def test_reference_chunks(monkeypatch):
    """The reference's chunk_size is observable too: its chunking utility calls the block
    function once per chunk of 2 (rows or queries: both are 5 here)."""
    q, k, v, gate = (t.detach() for t in make_inputs(1, 5, 5, 1, 8, layout="contiguous"))
    calls = []
    real = ref.chunk_rows

    def counting(fn, *args, **kwargs):
        return real(lambda *a, **kw: calls.append(1) or fn(*a, **kw), *args, **kwargs)

    monkeypatch.setattr(ref, "chunk_rows", counting)
    full = ref.axial_attention(q, k, v, gate=gate)
    assert len(calls) == 1
    calls.clear()
    torch.testing.assert_close(ref.axial_attention(q, k, v, gate=gate, chunk_size=2), full)
    assert len(calls) == 3


RECT_TILES = [
    pytest.param({"BLOCK_M": 16, "BLOCK_N": 32}, id="m16-n32"),
    pytest.param({"BLOCK_M": 32, "BLOCK_N": 16}, id="m32-n16"),
]


@pytest.mark.parametrize("blocks", RECT_TILES)
def test_rectangular_tiles(device, blocks):
    """GPU tiles are rectangular; the interpreter's default one is square, where a loop or a
    dbias tile offset using BLOCK_M for BLOCK_N cannot fail. Every kernel here runs with
    BLOCK_M != BLOCK_N (both orders), N spanning several tiles both ways, a mask edge inside
    a tile, a fully masked row, and several dbias row splits."""
    B, R, N, H, D = 1, 3, 37, 2, 16
    q, k, v, gate = make_inputs(B, R, N, H, D, layout="transposed", device=device)
    bias = make_bias(B, H, N, permuted=True, device=device)
    mask = make_mask(B, R, N, kind="random", device=device)
    mask[0, 1, 20:] = False
    mask[0, 2] = False
    with tiles(**blocks) as kernels:
        out, grads = _run_kernel(q, k, v, bias, mask, gate)
    assert set(AXIAL_FWD + AXIAL_BWD[1:] + AXIAL_DBIAS) <= set(kernels)
    out_ref, grads_ref = _run(q, k, v, bias, mask, gate, "torch")
    torch.testing.assert_close(out, out_ref, **FP32_DOT)
    for name, g, gr in zip("q k v bias gate".split(), grads, grads_ref):
        torch.testing.assert_close(g, gr, **FP32_DOT, msg=lambda m, n=name: f"grad {n}: {m}")


def test_kernel_batch_invariance(device):
    """A batch element's output and gradients do not depend on the rest of the batch."""
    q, k, v, gate = make_inputs(2, 3, 7, 2, 8, layout="transposed", device=device)
    bias = make_bias(2, 2, 7, permuted=True, device=device)
    mask = make_mask(2, 3, 7, kind="random", device=device)
    out, grads = _run_kernel(q, k, v, bias, mask, gate)
    alone = [t[:1].detach().requires_grad_() for t in (q, k, v, bias, gate)]
    a_q, a_k, a_v, a_bias, a_gate = alone
    out1 = axial_attention(a_q, a_k, a_v, bias=a_bias, mask=mask[:1], gate=a_gate, backend="triton")
    torch.testing.assert_close(out1, out[:1], **FP32)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))  # as in _run
    grads1 = torch.autograd.grad(out1, alone, dout[:1].to(device))
    for g1, g in zip(grads1, grads):
        torch.testing.assert_close(g1, g[:1], **FP32_DOT)


def test_dbias_row_splits_agree(device):
    """The launcher-level dbias reduction gives the same sum for any number of row splits."""
    B, R, N, H, D = 1, 3, 9, 1, 8
    q, k, v, gate = (t.detach() for t in make_inputs(B, R, N, H, D, layout="packed", device=device))
    bias = make_bias(B, H, N, permuted=False, device=device).detach()
    mask = make_mask(B, R, N, kind="random", device=device)
    out = ref.axial_attention(q, k, v, bias=bias, mask=mask)
    dout = torch.randn_like(out)
    dou, _, delta = axial_attention_bwd_preprocess(dout, out, None)
    # lse from the reference logits (base 2), so this test exercises only the backward kernels.
    s = torch.einsum("brqhd,brkhd->brhqk", q * D**-0.5, k) + bias[:, None]
    s = s.masked_fill(~mask[:, :, None, None, :], float("-inf"))
    lse = (torch.logsumexp(s, -1) / torch.log(torch.tensor(2.0, device=device))).contiguous()
    results = [
        axial_attention_bwd(
            dou, q, k, v, bias, mask, lse, delta, D**-0.5, need_dbias=True, splits=s_
        )[3]
        for s_ in (1, 2, 3)
    ]
    leaf = bias.clone().requires_grad_()
    (expected,) = torch.autograd.grad(
        ref.axial_attention(q, k, v, bias=leaf, mask=mask), leaf, dout
    )
    for db in results:
        torch.testing.assert_close(db, expected, **FP32_DOT)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_low_precision_within_rule(device, dtype):
    B, R, N, H, D = 1, 2, 11, 1, 32
    q, k, v, gate = make_inputs(B, R, N, H, D, layout="transposed", device=device)
    bias = make_bias(B, H, N, permuted=True, device=device)
    mask = make_mask(B, R, N, kind="random", device=device)
    out_ref, grads_ref = _run(q, k, v, bias, mask, gate, "torch")  # fp32 truth
    low = [t.detach().to(dtype).requires_grad_() for t in (q, k, v, bias, gate)]
    with launches() as seen:
        out_k, grads_k = _run(*low[:4], mask, low[4], "triton")
    seen.expect(*AXIAL_FWD, *AXIAL_BWD, *AXIAL_DBIAS, exactly=1)
    low_t = [t.detach().clone().requires_grad_() for t in low]
    out_t, grads_t = _run(*low_t[:4], mask, low_t[4], "torch")
    assert out_k.dtype == dtype
    assert_within_rule(out_k, out_t, out_ref, dtype, "out")
    for name, gk, gt, gr in zip("q k v bias gate".split(), grads_k, grads_t, grads_ref):
        assert gk.dtype == dtype
        assert_within_rule(gk, gt, gr, dtype, f"grad {name}")


def test_auto_on_cpu_takes_the_torch_path_and_inference_needs_no_grad():
    """ "auto" on CPU tensors runs no kernel (the interpreter is a test tool); a no-grad call on
    the Triton path launches the forward kernel only (no autograd node, nothing kept for a
    backward), and both agree with the independent float64 formulation."""
    q, k, v, gate = (t.detach() for t in make_inputs(1, 2, 6, 2, 8, layout="contiguous"))
    bias = torch.randn(1, 2, 6, 6)
    expected = naive_attention(q, k, v, bias, None, gate, 8**-0.5)
    with launches() as seen:
        auto = axial_attention(q, k, v, bias=bias, gate=gate, backend="auto")
    assert not seen.kernels and seen.fallbacks["axial_attention"] == 1
    torch.testing.assert_close(auto.double(), expected, **FP32)
    with torch.no_grad(), launches() as seen:
        out = axial_attention(q, k, v, bias=bias, gate=gate, backend="triton")
    assert out.grad_fn is None
    seen.expect(*AXIAL_FWD, exactly=1)
    assert set(seen.kernels) == set(AXIAL_FWD)
    torch.testing.assert_close(out.double(), expected, **FP32_DOT)


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"q": torch.zeros(1, 2, 3, 4)}, ValueError),
        ({"k": torch.zeros(1, 2, 3, 2, 9)}, ValueError),
        ({"bias": torch.zeros(1, 2, 3, 4)}, ValueError),
        ({"mask": torch.ones(1, 3, 3)}, ValueError),
        ({"chunk_size": 0}, ValueError),
        ({"q": torch.zeros(1, 2, 3, 2, 8, dtype=torch.float64)}, TypeError),
        ({"v": torch.zeros(1, 2, 3, 2, 8, dtype=torch.float16)}, TypeError),
        ({"backend": "cuda"}, ValueError),
    ],
)
def test_bad_arguments_raise_before_launch(kwargs, exc):
    args = {
        "q": torch.zeros(1, 2, 3, 2, 8),
        "k": torch.zeros(1, 2, 3, 2, 8),
        "v": torch.zeros(1, 2, 3, 2, 8),
    }
    args.update(kwargs)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    args.setdefault("backend", "triton")
    with pytest.raises(exc):
        axial_attention(q, k, v, **args)


# ------------------------------------------------------------------------------------------------
# 64-bit index arithmetic, checked in the compiled IR (no GPU, no huge allocation)
# ------------------------------------------------------------------------------------------------


def test_kernel_offsets_are_int64():
    """ESMFold at L = 4096 reads ending-node views with stride_n = L * H * D: n * stride_n passes
    2^31. Every pointer offset in every kernel must be computed in 64 bits even when all
    strides arrive as i32."""
    mod, bwd = "esmkernels.ops.axial.forward", "esmkernels.ops.axial.backward"
    flags = {"HAS_BIAS": True, "HAS_MASK": True, "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_D": 32}
    kernels = [
        Job(mod, "_axial_attn_fwd_kernel", {**flags, "HAS_GATE": True, "STORE_UNGATED": True}),
        Job(bwd, "_axial_attn_bwd_pre_kernel", {"HAS_GATE": True, "BLOCK_M": 64, "BLOCK_D": 32}),
        Job(bwd, "_axial_attn_bwd_dkdv_kernel", flags),
        Job(bwd, "_axial_attn_bwd_dq_kernel", flags),
        Job(bwd, "_axial_attn_bwd_dbias_kernel", {k: flags[k] for k in flags if k != "HAS_BIAS"}),
    ]
    assert_all_offsets_int64(addptr_offset_types(kernels))


ATTENTION_KERNELS = [
    Job("esmkernels.ops.axial.forward", "_axial_attn_fwd_kernel",
     {"HAS_BIAS": True, "HAS_MASK": True, "HAS_GATE": True, "STORE_UNGATED": True, "BLOCK_D": 32}),
    Job("esmkernels.ops.axial.backward", "_axial_attn_bwd_pre_kernel",
     {"HAS_GATE": True, "BLOCK_M": 64, "BLOCK_D": 32}),
    Job("esmkernels.ops.axial.backward", "_axial_attn_bwd_dkdv_kernel",
     {"HAS_BIAS": True, "HAS_MASK": True, "BLOCK_D": 32}),
    Job("esmkernels.ops.axial.backward", "_axial_attn_bwd_dq_kernel",
     {"HAS_BIAS": True, "HAS_MASK": True, "BLOCK_D": 32}),
    Job("esmkernels.ops.axial.backward", "_axial_attn_bwd_dbias_kernel",
     {"HAS_MASK": True, "BLOCK_D": 32}),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_gpu_configs_compile_without_spills(dtype):
    """Every GPU autotune config compiles for sm_90 (D = 32) and ptxas reports no register
    spills. CPU only: the CUDA backend and ptxas ship with Triton (tests/_sm90.py)."""
    jobs = [dataclasses.replace(job, dtype=dtype) for job in ATTENTION_KERNELS]
    assert_no_spills(compile_report(jobs))


# ------------------------------------------------------------------------------------------------
# GPU (real compilation) at ESMFold sizes
# ------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("L", [512, 1024, 2048])
def test_gpu_triangle_attention_large(device, L):
    torch.backends.cuda.matmul.allow_tf32 = False
    B, H, D = 1, 4, 32
    x = torch.randn(B, L, L, 4, H, D, device=device)
    q, k, v, gate = (x[..., i, :, :].transpose(1, 2) for i in range(4))  # ending-node views
    bias = torch.randn(B, H, L, L, device=device)
    mask = torch.rand(B, L, L, device=device) > 0.1
    out = axial_attention(q, k, v, bias=bias, mask=mask, gate=gate, backend="triton")
    expected = ref.axial_attention(q, k, v, bias=bias, mask=mask, gate=gate, chunk_size=8)
    torch.testing.assert_close(out, expected, atol=2e-4, rtol=2e-4)
    # gradients on a few rows (the reference graph at R = L would not fit)
    rows = [t[:, :4].detach().requires_grad_() for t in (q, k, v, gate)]
    b_leaf = bias.detach().requires_grad_()
    got = _run(rows[0], rows[1], rows[2], b_leaf, mask[:, :4], rows[3], "triton")
    want = _run(rows[0], rows[1], rows[2], b_leaf, mask[:, :4], rows[3], "torch")
    for g, w in zip(got[1], want[1]):
        torch.testing.assert_close(g, w, atol=5e-4, rtol=5e-4)
