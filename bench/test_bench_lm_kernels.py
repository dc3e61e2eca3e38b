"""Language-model kernels: fused LayerNorm and fused rotary flash attention.

Providers:
- `reference`: `esmkernels.reference.functional` (eager, fp32 math), the spec.
- `torch`: the ops' torch path (`backend="torch"`): `F.layer_norm` via the reference, and for
  attention a separate rotary pass followed by `scaled_dot_product_attention` at the input dtype.
- `triton`: the fused kernels (`backend="triton"`), CUDA only.

Modes: `fwd`, `bwd` (backward of one retained forward graph), `fwd+bwd`.

Shapes: ESM-2 650M (H=20, D=64, hidden 1280) and 3B (H=40, D=64, hidden 2560), (B, L) from
(32, 128) to (1, 4096) on a GPU in bf16; one tiny fp32 shape on a CPU so the file runs in seconds.

`extra_info` carries `flops` and `bytes` (the minimum HBM traffic) so TFLOP/s and TB/s follow
from the timings, plus `tflops` / `tbps` at the median; an out-of-memory is recorded as
`extra_info["oom"] = True` (see `bench.conftest.run_or_record_oom`).
"""

from __future__ import annotations

import pytest
import torch

from bench.conftest import on_gpu, run_or_record_oom
from esmkernels.ops.layer_norm_kernels import layer_norm
from esmkernels.ops.rotary_attention_kernels import rotary_attention
from esmkernels.reference import functional as ref

MODELS = {"esm2_650m": (20, 64, 1280), "esm2_3b": (40, 64, 2560)}  # heads, head dim, hidden
GPU_BATCHES = [(32, 128), (8, 512), (4, 1024), (2, 2048), (1, 4096)]  # (B, L)
CPU_BATCHES = [(2, 48)]
CPU_MODELS = {"tiny": (2, 16, 64)}

PROVIDERS = ["reference", "torch", "triton"]
MODES = ["fwd", "bwd", "fwd+bwd"]


def _cases():
    if on_gpu():
        return [(m, b, L) for m in MODELS for b, L in GPU_BATCHES]
    return [(m, b, L) for m in CPU_MODELS for b, L in CPU_BATCHES]


def _dims(model):
    return (MODELS if on_gpu() else CPU_MODELS)[model]


def _dtype(device):
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _skip_unavailable(provider, device):
    if provider == "triton" and device.type != "cuda":
        pytest.skip("triton provider needs CUDA (the interpreter is not a benchmark)")


def _timed(benchmark, mode, forward, leaves, sync, flops, nbytes):
    """Benchmark one mode of `forward()` (returns a tensor whose grads flow to `leaves`)."""
    flops_per_mode = {"fwd": flops, "bwd": 2.5 * flops, "fwd+bwd": 3.5 * flops}
    bytes_per_mode = {"fwd": nbytes[0], "bwd": nbytes[1], "fwd+bwd": nbytes[0] + nbytes[1]}
    benchmark.extra_info.update(mode=mode, flops=flops_per_mode[mode], bytes=bytes_per_mode[mode])
    try:
        if mode == "fwd":

            def fn():
                with torch.no_grad():
                    forward()
                sync()

        else:
            out = forward()
            grad = torch.randn_like(out)

            def fn():
                if mode == "fwd+bwd":
                    torch.autograd.grad(forward(), leaves, grad)
                else:
                    torch.autograd.grad(out, leaves, grad, retain_graph=True)
                sync()
    except torch.cuda.OutOfMemoryError:
        benchmark.extra_info["oom"] = True
        torch.cuda.empty_cache()
        pytest.skip("out of memory before timing (recorded as oom)")
    run_or_record_oom(benchmark, fn)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and stats.stats.median > 0:
        median = stats.stats.median
        benchmark.extra_info["tflops"] = benchmark.extra_info["flops"] / median / 1e12
        benchmark.extra_info["tbps"] = benchmark.extra_info["bytes"] / median / 1e12


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("model,B,L", _cases())
def test_bench_rotary_attention(benchmark, bench_device, sync, model, B, L, provider, mode):
    _skip_unavailable(provider, bench_device)
    H, D, _ = _dims(model)
    dtype = _dtype(bench_device)
    benchmark.group = f"rotary_attention-{model}-B{B}-L{L}-{mode}"
    benchmark.extra_info.update(op="rotary_attention", provider=provider, B=B, L=L, H=H, D=D)
    benchmark.extra_info["dtype"] = str(dtype)
    q, k, v = (
        torch.randn(B, L, H, D, device=bench_device, dtype=dtype, requires_grad=True)
        for _ in range(3)
    )
    inv_freq = 1.0 / 10000 ** (torch.arange(0, D, 2, device=bench_device).float() / D)
    keep = torch.ones(B, L, dtype=torch.bool, device=bench_device)
    keep[0, (3 * L) // 4 :] = False  # some padding, as in a real batch

    def forward():
        if provider == "reference":
            return ref.rotary_attention(q, k, v, inv_freq=inv_freq, key_padding_mask=keep)
        return rotary_attention(q, k, v, inv_freq=inv_freq, key_padding_mask=keep, backend=provider)

    tensor_bytes = B * L * H * D * q.element_size()
    flops = 4.0 * B * H * L * L * D  # QK^T and PV, 2 flops per multiply-add
    _timed(benchmark, mode, forward, (q, k, v), sync, flops, (4 * tensor_bytes, 8 * tensor_bytes))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("model,B,L", _cases())
def test_bench_layer_norm(benchmark, bench_device, sync, model, B, L, provider, mode):
    _skip_unavailable(provider, bench_device)
    _, _, N = _dims(model)
    dtype = _dtype(bench_device)
    benchmark.group = f"layer_norm-{model}-B{B}-L{L}-{mode}"
    benchmark.extra_info.update(op="layer_norm", provider=provider, B=B, L=L, N=N)
    benchmark.extra_info["dtype"] = str(dtype)
    x = torch.randn(B, L, N, device=bench_device, dtype=dtype, requires_grad=True)
    w = torch.randn(N, device=bench_device, dtype=dtype, requires_grad=True)
    b = torch.randn(N, device=bench_device, dtype=dtype, requires_grad=True)

    def forward():
        if provider == "reference":
            return ref.layer_norm(x, w, b, 1e-5)
        return layer_norm(x, w, b, 1e-5, backend=provider)

    act_bytes = x.numel() * x.element_size()
    # bwd "flops" are scaled by 2.5 in _timed; LayerNorm is bandwidth-bound, bytes matter here.
    _timed(
        benchmark, mode, forward, (x, w, b), sync, 8.0 * x.numel(), (2 * act_bytes, 3 * act_bytes)
    )
