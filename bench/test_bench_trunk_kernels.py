"""Folding-trunk kernels: triangle multiplicative update and axial (triangle) attention.

Providers:
- `reference`: `esmkernels.reference.esmfold.trunk_functional`, unchunked (the spec; eager).
- `reference_chunked`: the same with `chunk_size=64` rows (openfold-style memory bound).
- `compile`: `torch.compile` of the unchunked reference (CUDA only).
- `triton`: the fused kernels (`backend="triton"`), CUDA only. The triangle multiplicative
  backward recomputes through the reference (see `esmkernels.ops.triangle_multiplicative_kernels`).

Ops: `trimul_out` / `trimul_in` (c_z = 128), `tri_att_start` / `tri_att_end` (4 heads x 32,
triangle bias, key mask, gate; the ending node reads transposed views). Modes: `fwd`, `bwd`
(backward of one retained forward graph). B = 1, L = 256 .. 4096 in bf16 on a GPU; one tiny
fp32 shape on a CPU. `extra_info` records `peak_mb` (peak allocated during the benchmark, CUDA)
and `oom = True` when a provider runs out of memory (recorded, not dropped).
"""

from __future__ import annotations

import pytest
import torch

from bench.conftest import on_gpu, peak_memory_mb, run_or_record_oom
from esmkernels.ops.axial_attention_kernels import axial_attention
from esmkernels.ops.triangle_multiplicative_kernels import triangle_multiplicative_update
from esmkernels.reference.esmfold import trunk_functional as ref

C_Z, HEADS, HEAD_DIM = 128, 4, 32
GPU_LENGTHS = [256, 512, 1024, 2048, 4096]
CPU_LENGTHS = [8]
PROVIDERS = ["reference", "reference_chunked", "compile", "triton"]
OPS = ["trimul_out", "trimul_in", "tri_att_start", "tri_att_end"]
MODES = ["fwd", "bwd"]
CHUNK = 64

_compiled = {}


def _trimul_inputs(L, device, dtype):
    g = torch.Generator(device="cpu").manual_seed(0)
    names = {
        "ln_in_weight": (C_Z,), "ln_in_bias": (C_Z,), "ln_out_weight": (C_Z,), "ln_out_bias": (C_Z,),
        "a_proj_weight": (C_Z, C_Z), "a_proj_bias": (C_Z,), "a_gate_weight": (C_Z, C_Z), "a_gate_bias": (C_Z,),
        "b_proj_weight": (C_Z, C_Z), "b_proj_bias": (C_Z,), "b_gate_weight": (C_Z, C_Z), "b_gate_bias": (C_Z,),
        "out_proj_weight": (C_Z, C_Z), "out_proj_bias": (C_Z,), "out_gate_weight": (C_Z, C_Z), "out_gate_bias": (C_Z,),
    }  # fmt: skip
    params = {
        n: (torch.randn(*s, generator=g) / (s[-1] ** 0.5 if len(s) == 2 else 1.0))
        .to(device, dtype)
        .requires_grad_()
        for n, s in names.items()
    }
    z = torch.randn(1, L, L, C_Z, generator=g).to(device, dtype).requires_grad_()
    seq = (torch.arange(L) < L - L // 16).to(device, dtype)
    mask = (seq[:, None] * seq[None, :])[None]
    return z, mask, params


def _attention_inputs(L, device, dtype, ending):
    g = torch.Generator(device="cpu").manual_seed(0)
    proj = torch.randn(1, L, L, 4, HEADS, HEAD_DIM, generator=g).to(device, dtype)
    leaves = [proj[..., i, :, :].detach().requires_grad_() for i in range(4)]  # q, k, v, gate
    views = [t.transpose(1, 2) if ending else t for t in leaves]
    bias = torch.randn(1, HEADS, L, L, generator=g).to(device, dtype).requires_grad_()
    seq = torch.arange(L, device=device) < L - L // 16
    mask = (seq[:, None] & seq[None, :])[None]
    return views, leaves + [bias], bias, mask


def _forward(op, provider, L, device, dtype):
    """(forward closure, leaves) for one op / provider."""
    chunk = CHUNK if provider == "reference_chunked" else None
    if op.startswith("trimul"):
        z, mask, params = _trimul_inputs(L, device, dtype)
        outgoing = op == "trimul_out"
        if provider == "triton":
            fn = lambda: triangle_multiplicative_update(
                z, mask, **params, outgoing=outgoing, backend="triton"
            )
        else:
            base = ref.triangle_multiplicative_update
            if provider == "compile":
                base = _compiled.setdefault(
                    "trimul", torch.compile(ref.triangle_multiplicative_update)
                )
            fn = lambda: base(z, mask, **params, outgoing=outgoing, chunk_size=chunk)
        return fn, [z, *params.values()]
    (q, k, v, gate), leaves, bias, mask = _attention_inputs(L, device, dtype, op == "tri_att_end")
    if provider == "triton":
        fn = lambda: axial_attention(q, k, v, bias=bias, mask=mask, gate=gate, backend="triton")
    else:
        base = ref.axial_attention
        if provider == "compile":
            base = _compiled.setdefault("attn", torch.compile(ref.axial_attention))
        fn = lambda: base(q, k, v, bias=bias, mask=mask, gate=gate, chunk_size=chunk)
    return fn, leaves


def _bench_mode(benchmark, mode, forward, leaves, sync):
    if mode == "fwd":

        def fn():
            with torch.no_grad():
                forward()
            sync()

        return run_or_record_oom(benchmark, fn)
    try:
        out = forward()
        grad = torch.randn_like(out)
    except torch.cuda.OutOfMemoryError:
        benchmark.extra_info["oom"] = True
        torch.cuda.empty_cache()
        pytest.skip("out of memory building the graph (recorded as oom)")

    def fn():
        torch.autograd.grad(out, leaves, grad, retain_graph=True)
        sync()

    return run_or_record_oom(benchmark, fn)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("L", GPU_LENGTHS if on_gpu() else CPU_LENGTHS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_bench_trunk(benchmark, bench_device, sync, provider, op, L, mode):
    if provider in ("triton", "compile") and bench_device.type != "cuda":
        pytest.skip(f"{provider} provider needs CUDA")
    dtype = torch.bfloat16 if bench_device.type == "cuda" else torch.float32
    benchmark.group = f"{op}-{mode}-L{L}"
    benchmark.extra_info.update(
        op=op, provider=provider, mode=mode, L=L, c_z=C_Z, heads=HEADS, head_dim=HEAD_DIM
    )
    if bench_device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        forward, leaves = _forward(op, provider, L, bench_device, dtype)
    except torch.cuda.OutOfMemoryError:
        benchmark.extra_info["oom"] = True
        pytest.skip("out of memory allocating inputs (recorded as oom)")
    _bench_mode(benchmark, mode, forward, leaves, sync)
    benchmark.extra_info["peak_mb"] = peak_memory_mb(bench_device)
