"""The four kernels as `torch.library` custom ops (`esmkernels.ops._custom_ops`).

- Fake (meta) implementations: every forward and backward op, run on FakeTensors and on meta
  tensors, gives outputs with the real run's shapes, dtypes and strides, including the saved
  statistics (LayerNorm mean / rstd, attention log-sum-exp, the ungated axial output); the
  tensors autograd saves in a fake run are those of a real run, so a fake run sees the true
  memory footprint.
- `torch.library.opcheck` on each forward op (schema, fake tensor, autograd registration).
- `torch.compile(fullgraph=True)` over each public op with the Triton backend forced (under the
  interpreter) and over an ESMFold trunk block on the kernels: no graph break (fullgraph raises
  on one), compiled == eager, forward and gradients, and the kernels ran in the compiled call.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from esmkernels.ops import (
    axial_attention,
    layer_norm,
    rotary_attention,
    triangle_multiplicative_update,
)
from esmkernels.ops.trimul.forward import PARAM_NAMES
from tests import _launches as L
from tests.tolerances import FP32_DOT

ops = torch.ops.esmkernels
EPS = 1e-5


def _rand(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype)


def rotary_inputs(varlen: bool, dtype=torch.float32):
    H, D = 2, 16
    inv_freq = 1.0 / 10000 ** (torch.arange(0, D, 2).float() / D)
    if varlen:
        T = 11
        q, k, v = (_rand(T, H, D, seed=i, dtype=dtype) for i in range(3))
        cu = torch.tensor([0, 4, 11], dtype=torch.int32)
        return (q, k, v, inv_freq, None, None, cu, 7, D**-0.5)
    q, k, v = (_rand(2, 7, H, D, seed=i, dtype=dtype) for i in range(3))
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    return (q, k, v, inv_freq, None, mask, None, None, D**-0.5)


def axial_inputs(gated: bool, with_bias: bool):
    B, R, N, H, D = 1, 3, 5, 2, 8
    q, k, v, g = (_rand(B, R, N, H, D, seed=i) for i in range(4))
    bias = _rand(B, H, N, N, seed=5) if with_bias else None
    mask = torch.ones(B, R, N, dtype=torch.bool)
    mask[0, 1, 3:] = False
    return (q, k, v, bias, mask, g if gated else None, D**-0.5)


def trimul_params(C: int = 16):
    params = []
    for i, name in enumerate(PARAM_NAMES):
        shape = (C, C) if name.endswith("weight") and not name.startswith("ln") else (C,)
        scale = 0.25 if len(shape) == 2 else 0.1
        base = 1.0 if name.startswith("ln") and name.endswith("weight") else 0.0
        params.append(base + scale * _rand(*shape, seed=10 + i))
    return params


def trimul_inputs(outgoing: bool):
    z = _rand(1, 5, 5, 16, seed=1)
    mask = torch.ones(1, 5, 5)
    mask[0, 4] = 0
    return (z, mask, trimul_params(), outgoing, EPS, None)


# (op, example inputs) for every forward op; each variant changes which outputs exist.
FORWARDS = {
    "layer_norm": (ops.layer_norm_fwd, lambda: (_rand(6, 32), _rand(32), _rand(32), EPS)),
    "layer_norm_no_affine": (ops.layer_norm_fwd, lambda: (_rand(6, 32), None, None, EPS)),
    "layer_norm_bf16": (
        ops.layer_norm_fwd,
        lambda: (_rand(6, 32, dtype=torch.bfloat16), _rand(32), _rand(32), EPS),
    ),
    "rotary_padded": (ops.rotary_attention_fwd, lambda: rotary_inputs(False)),
    "rotary_varlen": (ops.rotary_attention_fwd, lambda: rotary_inputs(True)),
    "axial_gated_bias": (ops.axial_attention_fwd, lambda: (*axial_inputs(True, True), True)),
    "axial_inference": (ops.axial_attention_fwd, lambda: (*axial_inputs(True, True), False)),
    "axial_plain": (ops.axial_attention_fwd, lambda: (*axial_inputs(False, False), True)),
    "trimul_outgoing": (ops.triangle_multiplicative_fwd, lambda: trimul_inputs(True)),
    "trimul_incoming": (ops.triangle_multiplicative_fwd, lambda: trimul_inputs(False)),
}


def _flat(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _metadata(tensors) -> list[tuple]:
    return [(tuple(t.shape), t.dtype, tuple(t.stride())) for t in tensors]


def _to_fake(mode: FakeTensorMode, args):
    def conv(a):
        if isinstance(a, torch.Tensor):
            return mode.from_tensor(a)
        if isinstance(a, list):
            return [conv(x) for x in a]
        return a

    return [conv(a) for a in args]


def _to_meta(args):
    def conv(a):
        if isinstance(a, torch.Tensor):
            return a.to("meta")
        if isinstance(a, list):
            return [conv(x) for x in a]
        return a

    return [conv(a) for a in args]


@pytest.mark.parametrize("variant", list(FORWARDS))
def test_fake_and_meta_outputs_match_the_real_run(variant):
    op, make = FORWARDS[variant]
    args = make()
    real = _flat(op(*args))
    with FakeTensorMode() as mode:
        fake = _flat(op(*_to_fake(mode, args)))
    meta = _flat(op(*_to_meta(args)))
    assert _metadata(fake) == _metadata(real), variant
    assert _metadata(meta) == _metadata(real) and all(t.is_meta for t in meta), variant


def _saved_tensors(fn, args) -> list[tuple]:
    """(shape, dtype) of every tensor autograd saves while fn(*args) runs."""
    saved = []

    def pack(t):
        saved.append((tuple(t.shape), t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return saved


def _requiring_grad(args, which):
    out = []
    for i, a in enumerate(args):
        if i in which and isinstance(a, torch.Tensor):
            a = a.detach().requires_grad_()
        elif i in which and isinstance(a, list):
            a = [t.detach().requires_grad_() for t in a]
        out.append(a)
    return out


# (variant, indices of the differentiable inputs, the statistics the forward must save)
SAVED = [
    ("layer_norm", (0, 1, 2), [((6,), torch.float32), ((6,), torch.float32)]),
    ("rotary_padded", (0, 1, 2), [((2, 2, 7), torch.float32)]),
    ("rotary_varlen", (0, 1, 2), [((2, 11), torch.float32)]),
    ("axial_gated_bias", (0, 1, 2, 3, 5), [((1, 3, 2, 5), torch.float32)]),
    ("trimul_outgoing", (0, 2), []),
]


@pytest.mark.parametrize(("variant", "differentiable", "stats"), SAVED)
def test_fake_run_saves_what_the_real_run_saves(variant, differentiable, stats):
    """The autograd footprint of a fake run is the real one: inputs, outputs, statistics."""
    op, make = FORWARDS[variant]
    args = _requiring_grad(make(), differentiable)
    real = _saved_tensors(op, args)
    with FakeTensorMode() as mode:
        fake = _saved_tensors(op, _to_fake(mode, args))
    assert fake == real
    for stat in stats:
        assert stat in real, (stat, real)


@pytest.mark.parametrize("variant", ["layer_norm", "rotary_padded", "rotary_varlen", "axial_gated_bias", "trimul_incoming"])  # fmt: skip
def test_opcheck(variant):
    op, make = FORWARDS[variant]
    differentiable = {"layer_norm": (0, 1, 2), "trimul_incoming": (0, 2)}.get(variant, (0, 1, 2))
    args = _requiring_grad(make(), differentiable)
    # test_aot_dispatch_dynamic re-traces with dynamic shapes and runs the interpreted kernels
    # several times; the compile tests below cover tracing.
    torch.library.opcheck(
        op, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor")
    )


# ------------------------------------------------------------------------------------------------
# torch.compile, Triton backend forced (interpreted on CPU)
# ------------------------------------------------------------------------------------------------


def _compiled_equals_eager(fn, inputs, kernels):
    """fn compiled with fullgraph=True (a graph break raises) == eager, outputs and gradients;
    the kernels ran in the compiled call (no torch fallback)."""
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    results = []
    for f in (fn, compiled):
        leaves = [t.detach().requires_grad_() for t in inputs]
        with L.launches() as seen:
            out = f(*leaves)
            (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        results.append((out.detach(), [t.grad for t in leaves], seen))
    (eager, eager_grads, _), (got, got_grads, seen) = results
    seen.expect(*kernels)
    torch.testing.assert_close(got, eager, **FP32_DOT)
    for i, (a, b) in enumerate(zip(got_grads, eager_grads)):
        torch.testing.assert_close(a, b, **FP32_DOT, msg=f"grad {i}")


def test_compile_layer_norm():
    w, b = _rand(32, seed=1), _rand(32, seed=2)
    fn = lambda x: layer_norm(x * 2, w, b, EPS, backend="triton").relu()
    _compiled_equals_eager(fn, [_rand(3, 5, 32)], L.LAYER_NORM)


@pytest.mark.parametrize("varlen", [False, True])
def test_compile_rotary_attention(varlen):
    q, k, v, inv_freq, _, mask, cu, max_seqlen, _ = rotary_inputs(varlen)

    def fn(q, k, v):
        side = dict(cu_seqlens=cu, max_seqlen=max_seqlen) if varlen else {"key_padding_mask": mask}
        return rotary_attention(q, k, v * 2, inv_freq=inv_freq, backend="triton", **side)

    _compiled_equals_eager(fn, [q, k, v], (*L.ROTARY_FWD, *L.ROTARY_BWD))


def test_compile_axial_attention():
    q, k, v, bias, mask, g, scale = axial_inputs(True, True)

    def fn(q, k, v, bias, g):
        return axial_attention(
            q, k, v, bias=bias, mask=mask, gate=g, scale=scale, chunk_size=2, backend="triton"
        )

    _compiled_equals_eager(fn, [q, k, v, bias, g], (*L.AXIAL_FWD, *L.AXIAL_BWD, *L.AXIAL_DBIAS))


def test_compile_triangle_multiplicative_update():
    z, mask, params, *_ = trimul_inputs(False)
    names = dict(zip(PARAM_NAMES, params))

    def fn(z):
        return triangle_multiplicative_update(z, mask, **names, outgoing=False, backend="triton")

    _compiled_equals_eager(fn, [z], L.TRIMUL_FWD)


def test_compile_trunk_block_on_the_kernels():
    """A whole ESMFold trunk block, fullgraph (no graph break), kernels forced, == eager."""
    from esmkernels.models.esmfold import KernelTrunkOps
    from esmkernels.reference.esmfold import trunk as T
    from tests.test_esmfold_trunk import randomize_, tiny_trunk_config

    block = T.EsmFoldTriangularSelfAttentionBlock(tiny_trunk_config(), ops=KernelTrunkOps("triton"))
    randomize_(block, seed=4).eval()
    mask = torch.ones(1, 5)
    mask[0, 4] = 0
    s0, z0 = _rand(1, 5, 32, seed=1), _rand(1, 5, 5, 16, seed=2)
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        want = block(s0, z0, mask=mask)
        with L.launches() as seen:
            got = compiled(s0, z0, mask=mask)
    seen.expect(*L.TRIMUL_FWD, *L.AXIAL_FWD)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **FP32_DOT)
