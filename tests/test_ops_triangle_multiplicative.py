"""Triangle multiplicative update: functional reference vs an independent float64 formulation
(and the transformers module when installed), the fused Triton kernels (interpreted on CPU) vs
the reference, forward and gradients, and 64-bit index arithmetic in the compiled IR."""

from __future__ import annotations

import types

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from esmkernels.ops.trimul import triangle_multiplicative_update
from esmkernels.ops.trimul.forward import PARAM_NAMES, channel_slice
from esmkernels.reference.esmfold import trunk_functional as ref
from tests._launches import TRIMUL_FWD, launches, tiles
from tests._sm90 import (
    Job,
    addptr_offset_types,
    assert_all_offsets_int64,
    assert_no_spills,
    compile_report,
)
from tests.tolerances import FP32_DOT, assert_within_rule

# The `device` fixture is constant across examples, so reusing it is safe.
FIXTURE_OK = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
# Reference-only tests are cheap: more examples than the profile gives interpreted kernels.
CHEAP = settings(max_examples=3 * settings().max_examples)


def make_params(C, Ch, *, dtype=torch.float32, seed=0, device="cpu"):
    """Random parameters, scaled so activations stay O(1), as leaves requiring grad."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "ln_in_weight": (C,), "ln_in_bias": (C,),
        "a_proj_weight": (Ch, C), "a_proj_bias": (Ch,), "a_gate_weight": (Ch, C), "a_gate_bias": (Ch,),
        "b_proj_weight": (Ch, C), "b_proj_bias": (Ch,), "b_gate_weight": (Ch, C), "b_gate_bias": (Ch,),
        "ln_out_weight": (Ch,), "ln_out_bias": (Ch,),
        "out_proj_weight": (C, Ch), "out_proj_bias": (C,), "out_gate_weight": (C, C), "out_gate_bias": (C,),
    }  # fmt: skip
    params = {}
    for name, shape in shapes.items():
        t = torch.randn(*shape, generator=g)
        t = (
            t / shape[1] ** 0.5
            if len(shape) == 2
            else (1 + 0.3 * t if "ln_" in name and "weight" in name else 0.3 * t)
        )
        params[name] = t.to(device, dtype).requires_grad_()
    return params


def make_z(B, L, C, *, layout, dtype=torch.float32, seed=1, device="cpu"):
    """z [B, L, L, C]: contiguous, a transposed view, or a channel slice of a wider tensor."""
    g = torch.Generator().manual_seed(seed)
    if layout == "contiguous":
        z = torch.randn(B, L, L, C, generator=g)
    elif layout == "transposed":
        z = torch.randn(B, L, L, C, generator=g).transpose(1, 2)
    else:
        z = torch.randn(B, L, L, 2 * C, generator=g)[..., C:]
    return z.to(device, dtype).detach().requires_grad_()


def make_mask(B, L, *, kind, seed=2, device="cpu"):
    """None, random, or the outer product of a padded sequence mask (whole rows and columns 0)."""
    if kind == "none":
        return None
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        return (torch.rand(B, L, L, generator=g) > 0.3).float().to(device)
    seq = torch.ones(B, L)
    seq[:, (L + 1) // 2 :] = 0
    return (seq[:, :, None] * seq[:, None, :]).to(device)


def naive_trimul(z, mask, p, outgoing, eps=1e-5):
    """Float64, written from the AlphaFold 2 supplement (Algorithms 11 / 12) independently."""
    d = {k: v.double() for k, v in p.items()}

    def ln(x, w, b):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + eps) * w + b

    def lin(x, name):
        return x @ d[f"{name}_weight"].T + d[f"{name}_bias"]

    zn = ln(z.double(), d["ln_in_weight"], d["ln_in_bias"])
    m = 1.0 if mask is None else mask.double()[..., None]
    a = m * torch.sigmoid(lin(zn, "a_gate")) * lin(zn, "a_proj")
    b = m * torch.sigmoid(lin(zn, "b_gate")) * lin(zn, "b_proj")
    x = torch.einsum("bikc,bjkc->bijc", a, b) if outgoing else torch.einsum("bkic,bkjc->bijc", a, b)
    x = ln(x, d["ln_out_weight"], d["ln_out_bias"])
    return torch.sigmoid(lin(zn, "out_gate")) * lin(x, "out_proj")


def _run(z, mask, p, outgoing, backend, chunk_size=None):
    out = triangle_multiplicative_update(
        z, mask, **p, outgoing=outgoing, chunk_size=chunk_size, backend=backend
    )
    leaves = [z, *p.values()]
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    return out, torch.autograd.grad(out, leaves, dout.to(out.device, out.dtype))


def _naive_grads(z, mask, p, outgoing):
    """Output and gradients of the independent float64 formulation (same upstream gradient)."""
    leaves = [z.detach().double().requires_grad_(), *(t.detach().double() for t in p.values())]
    leaves[1:] = [t.requires_grad_() for t in leaves[1:]]
    out = naive_trimul(leaves[0], mask, dict(zip(p, leaves[1:])), outgoing)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    return out, torch.autograd.grad(out, leaves, dout.to(out.device, out.dtype))


def _kernel_chunks(ch, chunk_size, L):
    """Projection / contraction launches for `chunk_size` rows: one per channel slice."""
    return -(-ch // channel_slice(chunk_size, L, ch))


# ------------------------------------------------------------------------------------------------
# Reference
# ------------------------------------------------------------------------------------------------


@CHEAP
@given(
    B=st.integers(1, 2),
    L=st.integers(1, 9),
    C=st.sampled_from([4, 8]),
    Ch=st.sampled_from([4, 6]),
    outgoing=st.booleans(),
    mask_kind=st.sampled_from(["none", "random", "padded"]),
    chunk_size=st.sampled_from([None, 1, 4]),
)
@example(B=1, L=1, C=4, Ch=4, outgoing=False, mask_kind="padded", chunk_size=None)
@example(B=2, L=7, C=8, Ch=6, outgoing=False, mask_kind="random", chunk_size=4)
def test_reference_matches_naive(B, L, C, Ch, outgoing, mask_kind, chunk_size):
    p = make_params(C, Ch)
    z = make_z(B, L, C, layout="contiguous")
    mask = make_mask(B, L, kind=mask_kind)
    out = ref.triangle_multiplicative_update(z, mask, **p, outgoing=outgoing, chunk_size=chunk_size)
    torch.testing.assert_close(
        out.double(), naive_trimul(z, mask, p, outgoing), atol=1e-5, rtol=1e-5
    )


@pytest.mark.peer
@pytest.mark.parametrize("outgoing", [True, False])
def test_reference_matches_transformers(outgoing):
    esmfold = pytest.importorskip("transformers.models.esm.modeling_esmfold")
    C = 8
    module = esmfold.EsmFoldTriangleMultiplicativeUpdate(
        types.SimpleNamespace(pairwise_state_dim=C), _outgoing=outgoing
    )
    p = make_params(C, C)
    hf_names = {
        "ln_in": "layer_norm_in", "a_proj": "linear_a_p", "a_gate": "linear_a_g",
        "b_proj": "linear_b_p", "b_gate": "linear_b_g", "ln_out": "layer_norm_out",
        "out_proj": "linear_z", "out_gate": "linear_g",
    }  # fmt: skip
    with torch.no_grad():
        for name, t in p.items():
            stem, kind = name.rsplit("_", 1)
            getattr(getattr(module, hf_names[stem]), kind).copy_(t)
    z, mask = make_z(2, 7, C, layout="contiguous"), make_mask(2, 7, kind="padded")
    with torch.no_grad():
        expected = module(z, mask=mask, inplace_safe=False)
        out = ref.triangle_multiplicative_update(z, mask, **p, outgoing=outgoing)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Kernels vs reference
# ------------------------------------------------------------------------------------------------


@FIXTURE_OK
@given(
    B=st.integers(1, 2),
    L=st.integers(1, 12),
    C=st.sampled_from([8, 16, 32]),
    Ch=st.sampled_from([8, 12, 16]),
    outgoing=st.booleans(),
    layout=st.sampled_from(["contiguous", "transposed", "sliced"]),
    mask_kind=st.sampled_from(["none", "random", "padded"]),
    chunk_size=st.sampled_from([None, 5]),
)
@example(B=1, L=1, C=8, Ch=8, outgoing=True, layout="contiguous", mask_kind="none", chunk_size=None)
@example(
    B=1, L=2, C=16, Ch=12, outgoing=False, layout="transposed", mask_kind="padded", chunk_size=5
)
@example(B=1, L=11, C=32, Ch=16, outgoing=False, layout="sliced", mask_kind="random", chunk_size=5)
@example(B=2, L=9, C=8, Ch=12, outgoing=True, layout="contiguous", mask_kind="random", chunk_size=5)
def test_kernel_matches_reference_fp32(
    device, B, L, C, Ch, outgoing, layout, mask_kind, chunk_size
):
    """Forward against the reference; gradients (the backward recomputes through the
    reference's functions, see the module docstring) against autograd of the independent
    float64 formulation, so a recompute that drops or misroutes a gradient fails."""
    p = make_params(C, Ch, device=device)
    z = make_z(B, L, C, layout=layout, device=device)
    mask = make_mask(B, L, kind=mask_kind, device=device)
    with launches() as seen:
        out, grads = _run(z, mask, p, outgoing, "triton", chunk_size)
    n = _kernel_chunks(Ch, chunk_size, L)
    seen.expect("_trimul_proj_kernel", "_trimul_contract_kernel", exactly=n)
    seen.expect("_trimul_out_kernel", exactly=1)
    out_ref = triangle_multiplicative_update(z, mask, **p, outgoing=outgoing, backend="torch")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, out_ref, **FP32_DOT)
    _, grads_naive = _naive_grads(z, mask, p, outgoing)
    for name, g, gr in zip(("z", *PARAM_NAMES), grads, grads_naive):
        torch.testing.assert_close(
            g.double(), gr, **FP32_DOT, msg=lambda m, n=name: f"grad {n}: {m}"
        )


def test_kernel_chunked_equals_unchunked(device):
    """chunk_size counts rows; the kernels derive channel slices from it (the last one
    smaller), which reproduce the unchunked kernel bit for bit and are observed: 3 rows of 10
    give slices of 3 of the Ch = 10 channels, four projections and contractions."""
    assert channel_slice(3, 10, 10) == 3
    p, z, mask = (
        make_params(8, 10, device=device),
        make_z(1, 10, 8, layout="contiguous", device=device),
        make_mask(1, 10, kind="random", device=device),
    )
    for outgoing in (True, False):
        with torch.no_grad():
            full = triangle_multiplicative_update(z, mask, **p, outgoing=outgoing, backend="triton")
            for cs, n in ((3, 4), (64, 1)):
                with launches() as seen:
                    chunked = triangle_multiplicative_update(
                        z, mask, **p, outgoing=outgoing, chunk_size=cs, backend="triton"
                    )
                seen.expect("_trimul_proj_kernel", "_trimul_contract_kernel", exactly=n)
                seen.expect("_trimul_out_kernel", exactly=1)
                torch.testing.assert_close(chunked, full, atol=0, rtol=0)


def test_backward_recomputes_in_row_chunks(device, monkeypatch):
    """The recomputing backward builds one graph per block of `chunk_size` output rows (its
    memory bound), BWD_ROWS rows without a chunk size; the gradients do not depend on it."""
    import esmkernels.ops.trimul.backward as tm

    p, z = make_params(8, 8, device=device), make_z(1, 7, 8, layout="contiguous", device=device)
    rows = []
    real = tm.ref.triangle_update_rows
    monkeypatch.setattr(
        tm.ref,
        "triangle_update_rows",
        lambda zn, *a, **k: rows.append(zn.shape[1]) or real(zn, *a, **k),
    )
    _, whole = _run(z, None, p, False, "triton")
    assert rows == [7]
    rows.clear()
    _, chunked = _run(z, None, p, False, "triton", chunk_size=3)
    assert rows == [3, 3, 1]
    for g, gc in zip(whole, chunked):
        torch.testing.assert_close(gc, g, **FP32_DOT)
    monkeypatch.setattr(tm, "BWD_ROWS", 2)
    rows.clear()
    _run(z, None, p, False, "triton")
    assert rows == [2, 2, 2, 1]


@pytest.mark.parametrize(
    "blocks, outgoing",
    [
        pytest.param(
            dict(BLOCK_I=16, BLOCK_J=32, BLOCK_K=16, BLOCK_P=64, BLOCK_H=16, BLOCK_N=16),
            True,
            id="i16-j32-outgoing",
        ),
        pytest.param(
            dict(BLOCK_I=32, BLOCK_J=16, BLOCK_K=16, BLOCK_P=64, BLOCK_H=32, BLOCK_N=32),
            False,
            id="i32-j16-incoming",
        ),
    ],
)
def test_rectangular_tiles(device, blocks, outgoing):
    """GPU tiles are rectangular: the contraction with BLOCK_I != BLOCK_J in both orders (its
    grouped tile order too), the projection and output kernels with other pixel / channel
    tiles, on L = 37 (several tiles each way, partial ones), Ch = 24 and a mask."""
    B, L, C, Ch = 1, 37, 32, 24
    p = make_params(C, Ch, device=device)
    z = make_z(B, L, C, layout="transposed", device=device).detach()
    mask = make_mask(B, L, kind="random", device=device)
    p = {k: v.detach() for k, v in p.items()}
    with torch.no_grad(), tiles(**blocks) as kernels, launches() as seen:
        out = triangle_multiplicative_update(z, mask, **p, outgoing=outgoing, backend="triton")
    assert set(TRIMUL_FWD) <= set(kernels)
    seen.expect(*TRIMUL_FWD, exactly=1)
    torch.testing.assert_close(out.double(), naive_trimul(z, mask, p, outgoing), **FP32_DOT)


def test_kernel_padding_invariance(device):
    """A length-5 sequence padded to 9 (pair mask = outer product of the sequence mask) and
    batched with another sequence gives, on its valid 5 x 5 block, what it gives alone: masked
    pairs contribute nothing to the triangle sums."""
    p = make_params(8, 8, device=device)
    z = make_z(2, 9, 8, layout="contiguous", device=device).detach()
    seq = torch.ones(2, 9, device=device)
    seq[0, 5:] = 0
    mask = seq[:, :, None] * seq[:, None, :]
    for outgoing in (True, False):
        with torch.no_grad():
            batched = triangle_multiplicative_update(
                z, mask, **p, outgoing=outgoing, backend="triton"
            )
            alone = triangle_multiplicative_update(
                z[:1, :5, :5], None, **p, outgoing=outgoing, backend="triton"
            )
        torch.testing.assert_close(batched[:1, :5, :5], alone, **FP32_DOT)


def test_kernel_masked_rows_and_columns_are_finite(device):
    """A padded sequence masks whole rows and columns: a = b = 0 there, x = 0, LN_out(0) = bias."""
    p, z = make_params(8, 8, device=device), make_z(1, 9, 8, layout="contiguous", device=device)
    mask = make_mask(1, 9, kind="padded", device=device)
    with torch.no_grad():
        out = triangle_multiplicative_update(z, mask, **p, outgoing=True, backend="triton")
        expected = naive_trimul(z, mask, p, True)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), expected, **FP32_DOT)


@pytest.mark.parametrize(
    "dtype, outgoing", [(torch.float16, True), (torch.bfloat16, False), (torch.bfloat16, True)]
)
def test_kernel_low_precision_within_rule(device, dtype, outgoing):
    B, L, C = 1, 7, 16
    p32, z32, mask = (
        make_params(C, C, device=device),
        make_z(B, L, C, layout="transposed", device=device),
        make_mask(B, L, kind="random", device=device),
    )
    with torch.no_grad():
        ref32 = ref.triangle_multiplicative_update(z32, mask, **p32, outgoing=outgoing)
        p = {k: v.detach().to(dtype) for k, v in p32.items()}
        z = z32.detach().to(dtype)
        at_dtype = ref.triangle_multiplicative_update(z, mask, **p, outgoing=outgoing)
        with launches() as seen:
            out = triangle_multiplicative_update(z, mask, **p, outgoing=outgoing, backend="triton")
    seen.expect(*TRIMUL_FWD, exactly=1)
    assert out.dtype == dtype
    assert_within_rule(out, at_dtype, ref32, dtype, "update")


def test_auto_on_cpu_takes_the_torch_path():
    """ "auto" on CPU tensors runs no kernel (the interpreter is a test tool): the memory-lean
    path when nothing needs a gradient, the reference (differentiable) otherwise; both give the
    independent float64 formulation's result."""
    p, z = make_params(8, 8), make_z(1, 5, 8, layout="contiguous")
    expected = naive_trimul(z, None, p, True)
    with torch.no_grad(), launches() as seen:
        out = triangle_multiplicative_update(z, None, **p, outgoing=True, backend="auto")
    assert not seen.kernels and dict(seen.fallbacks) == {"triangle_multiplicative_update_lean": 1}
    torch.testing.assert_close(out.double(), expected, **FP32_DOT)
    with launches() as seen:
        out = triangle_multiplicative_update(z, None, **p, outgoing=True, backend="auto")
    assert not seen.kernels and dict(seen.fallbacks) == {"triangle_multiplicative_update": 1}
    assert out.requires_grad
    torch.testing.assert_close(out.double(), expected, **FP32_DOT)


@pytest.mark.parametrize(
    "change, exc",
    [
        (lambda a: a.update(z=torch.zeros(1, 4, 5, 8)), ValueError),
        (lambda a: a.update(mask=torch.ones(1, 4, 4)), ValueError),
        (lambda a: a.update(a_gate_weight=torch.zeros(8, 7)), ValueError),
        (lambda a: a.update(out_proj_weight=torch.zeros(8, 9)), ValueError),
        (lambda a: a.update(chunk_size=-1), ValueError),
        (lambda a: a.update(z=torch.zeros(1, 5, 5, 8, dtype=torch.float64)), TypeError),
        (lambda a: a.update(backend="gpu"), ValueError),
    ],
)
def test_bad_arguments_raise_before_launch(change, exc):
    args = {k: v.detach() for k, v in make_params(8, 8).items()}
    args.update(z=torch.zeros(1, 5, 5, 8), mask=None, outgoing=True, backend="triton")
    change(args)
    z, mask = args.pop("z"), args.pop("mask")
    with pytest.raises(exc):
        triangle_multiplicative_update(z, mask, **args)


def test_kernel_offsets_are_int64():
    """z at L = 4,096, C = 128 has 2^31 elements: every pointer offset must be 64-bit even when
    every stride arrives as i32."""
    mod = "esmkernels.ops.trimul.forward"
    sizes = {"BLOCK_C": 128, "BLOCK_CH": 128}
    kernels = [
        Job(
            mod,
            "_trimul_proj_kernel",
            {**sizes, "HAS_MASK": True, "BLOCK_K": 32, "BLOCK_P": 32, "BLOCK_H": 64},
        ),
        Job(
            mod,
            "_trimul_contract_kernel",
            {"OUTGOING": True, "GROUP_I": 8, "BLOCK_I": 64, "BLOCK_J": 64, "BLOCK_K": 32},
        ),
        Job(
            mod,
            "_trimul_contract_kernel",
            {"OUTGOING": False, "GROUP_I": 8, "BLOCK_I": 64, "BLOCK_J": 64, "BLOCK_K": 32},
        ),
        Job(mod, "_trimul_out_kernel", {**sizes, "BLOCK_P": 32, "BLOCK_N": 32}),
    ]
    assert_all_offsets_int64(addptr_offset_types(kernels))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_gpu_configs_compile_without_spills(dtype):
    """Every GPU autotune config compiles for sm_90 (C = Ch = 128, ESMFold's c_z) and ptxas
    reports no register spills."""
    mod = "esmkernels.ops.trimul.forward"
    sizes = {"BLOCK_C": 128, "BLOCK_CH": 128}
    kernels = [
        Job(mod, "_trimul_proj_kernel", {**sizes, "HAS_MASK": True, "BLOCK_K": 32}, dtype),
        Job(mod, "_trimul_contract_kernel", {"OUTGOING": True, "GROUP_I": 8}, dtype),
        Job(mod, "_trimul_contract_kernel", {"OUTGOING": False, "GROUP_I": 8}, dtype),
        Job(mod, "_trimul_out_kernel", sizes, dtype),
    ]
    assert_no_spills(compile_report(kernels))


# ------------------------------------------------------------------------------------------------
# GPU (real compilation) at ESMFold sizes
# ------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("L", [512, 1024, 2048])
@pytest.mark.parametrize("outgoing", [True, False])
def test_gpu_trimul_large(device, L, outgoing):
    torch.backends.cuda.matmul.allow_tf32 = False
    C = 128
    p = {k: v.detach().to(device) for k, v in make_params(C, C).items()}
    z = torch.randn(1, L, L, C, device=device)
    seq = (torch.arange(L, device=device) < L - 7).float()
    mask = (seq[:, None] * seq[None, :])[None]
    with torch.no_grad():
        out = triangle_multiplicative_update(z, mask, **p, outgoing=outgoing, backend="triton")
        expected = ref.triangle_multiplicative_update(
            z, mask, **p, outgoing=outgoing, chunk_size=256
        )
    torch.testing.assert_close(out, expected, atol=5e-4, rtol=5e-4)
