"""Fused LayerNorm (Triton, interpreted on CPU) against the reference op."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from esmkernels.ops import _dispatch
from esmkernels.ops.layernorm import layer_norm
from esmkernels.ops.layernorm.backward import layer_norm_bwd
from esmkernels.ops.layernorm.forward import layer_norm_fwd
from esmkernels.reference import functional as ref
from tests._launches import LAYER_NORM, launches
from tests._sm90 import Job, assert_no_spills, compile_report
from tests.tolerances import FP32, FP32_DOT, assert_within_rule

# Hidden sizes the models use (ESM-2 320/480/640/1280, ESMFold pair 128) and awkward ones.
HIDDEN = st.sampled_from([16, 24, 33, 100, 128, 320, 480, 640, 1000, 1280])
LEADING = st.lists(st.integers(1, 5), min_size=1, max_size=3)
# The `device` fixture is constant across examples, so reusing it is safe.
FIXTURE_OK = settings(
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ]
)


def _inputs(lead, n, dtype, affine, device, requires_grad=True, spread=2.0):
    """x [*lead, n] with row std `spread` around 0.5; weight / bias as `affine` says ("wb",
    "w", "b" or "none")."""
    x = (torch.randn(*lead, n, device=device) * spread + 0.5).to(dtype)
    x.requires_grad_(requires_grad)
    w = b = None
    if "w" in affine:
        w = (1 + 0.3 * torch.randn(n, device=device)).to(dtype).requires_grad_(requires_grad)
    if "b" in affine:
        b = (0.3 * torch.randn(n, device=device)).to(dtype).requires_grad_(requires_grad)
    return x, w, b


def naive_layer_norm(x, w, b, eps):
    """float64, from the formula: (x - mean) / sqrt(var + eps) * w + b (biased variance)."""
    x = x.double()
    mean = x.mean(-1, keepdim=True)
    y = (x - mean) / torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + eps)
    y = y if w is None else y * w.double()
    return y if b is None else y + b.double()


def _grads(out, dy, tensors):
    present = [t for t in tensors if t is not None]
    got = torch.autograd.grad(out, present, dy)
    it = iter(got)
    return [None if t is None else next(it) for t in tensors]


@settings(FIXTURE_OK, max_examples=2 * settings().max_examples)  # cheap: twice the profile's
@given(lead=LEADING, n=HIDDEN, affine=st.sampled_from(["wb", "w", "b", "none"]))
@example(lead=[1], n=16, affine="wb")
@example(lead=[3, 1, 2], n=1280, affine="none")
@example(lead=[5, 7], n=33, affine="b")  # bias only, odd width, several row blocks
@example(lead=[2, 3], n=100, affine="w")  # weight only
def test_layer_norm_fp32_forward_backward(device, lead, n, affine):
    x, w, b = _inputs(lead, n, torch.float32, affine, device)
    with launches() as seen:
        y = layer_norm(x, w, b, 1e-5, backend="triton")
        dy = torch.randn_like(y)
        got = _grads(y, dy, (x, w, b))
    seen.expect(*LAYER_NORM, exactly=1)
    y_ref = F.layer_norm(x, (n,), w, b, 1e-5)
    torch.testing.assert_close(y, y_ref, **FP32)
    want = _grads(y_ref, dy, (x, w, b))
    for name, g, r in zip(("dx", "dw", "db"), got, want):
        if r is not None:
            torch.testing.assert_close(g, r, **{k: 4 * v for k, v in FP32.items()}, msg=name)


@FIXTURE_OK
@given(
    lead=LEADING,
    n=st.sampled_from([24, 128, 320, 640]),
    dtype=st.sampled_from([torch.float16, torch.bfloat16]),
)
@example(lead=[2, 3], n=320, dtype=torch.bfloat16)
def test_layer_norm_low_precision_rule(device, lead, n, dtype):
    x, w, b = _inputs(lead, n, dtype, "wb", device)
    xf, wf, bf = (t.detach().float().requires_grad_() for t in (x, w, b))
    y = layer_norm(x, w, b, 1e-5, backend="triton")
    y_ref = ref.layer_norm(xf, wf, bf, 1e-5)
    y_torch = F.layer_norm(x, (n,), w, b, 1e-5)  # PyTorch at the low dtype
    assert y.dtype == dtype
    assert_within_rule(y, y_torch, y_ref, dtype, "y")
    dy = torch.randn_like(y)
    got = _grads(y, dy, (x, w, b))
    want = _grads(y_ref, dy.float(), (xf, wf, bf))
    at_dtype = _grads(y_torch, dy, (x, w, b))
    for name, g, t, r in zip(("dx", "dw", "db"), got, at_dtype, want):
        assert g.dtype == dtype
        assert_within_rule(g, t, r, dtype, name)


def test_layer_norm_strided_rows_and_mixed_param_dtype(device):
    # A view with a row stride (a slice of a wider buffer) and fp32 params on bf16 activations.
    base = torch.randn(6, 200, device=device)
    x = base[:, 20:148].requires_grad_()  # [6, 128], stride (200, 1)
    w = torch.randn(128, device=device, requires_grad=True)
    y = layer_norm(x, w, None, 1e-6, backend="triton")
    y_ref = F.layer_norm(x, (128,), w, None, 1e-6)
    torch.testing.assert_close(y, y_ref, **FP32)
    dy = torch.randn(128, 6, device=device).t()  # non-contiguous upstream gradient
    (gx, gw), (rx, rw) = _grads(y, dy, (x, w)), _grads(y_ref, dy, (x, w))
    torch.testing.assert_close(gx, rx, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gw, rw, atol=1e-4, rtol=1e-4)

    xb = torch.randn(3, 5, 64, device=device).to(torch.bfloat16)
    yb = layer_norm(xb, w.detach()[:64], None, backend="triton")
    assert yb.dtype == torch.bfloat16
    assert_within_rule(
        yb,
        F.layer_norm(xb.float(), (64,), w.detach()[:64], None).to(torch.bfloat16),
        ref.layer_norm(xb.float(), w.detach()[:64], None, 1e-5),
        torch.bfloat16,
    )


def test_launchers_return_fp32_statistics(device):
    x = torch.randn(37, 100, device=device) * 3 + 1
    y, mean, rstd = layer_norm_fwd(x, None, None, 1e-5)
    assert mean.dtype == rstd.dtype == torch.float32
    torch.testing.assert_close(mean, x.mean(-1), **FP32)
    torch.testing.assert_close(rstd, (x.var(-1, unbiased=False) + 1e-5).rsqrt(), **FP32)
    dy = torch.randn_like(x)
    dx, dw, db = layer_norm_bwd(dy, x, None, None, mean, rstd)
    assert dw is None and db is None
    xr = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(F.layer_norm(xr, (100,)), xr, dy)
    torch.testing.assert_close(dx, want, atol=1e-4, rtol=1e-4)


def test_empty_and_constant_rows(device):
    x = torch.empty(0, 5, 32, device=device)
    assert layer_norm(x, None, None, backend="triton").shape == (0, 5, 32)
    c = torch.full((4, 48), 3.0, device=device)  # zero variance: y = bias, finite
    b = torch.randn(48, device=device)
    y = layer_norm(c, None, b, 1e-5, backend="triton")
    torch.testing.assert_close(y, b.expand(4, 48), **FP32)


@pytest.mark.parametrize("eps", [1e-5, 1e-6, 1e-3])
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_small_variance_rows_where_eps_matters(device, backend, eps):
    """Rows with variance ~1e-6, comparable to eps: moving eps (outside the square root, scaled)
    changes rstd by far more than the tolerance. The tolerance is the fp32 cancellation error
    of (x - mean) for these values, scaled by rstd, not a fixed guess."""
    x, w, b = _inputs([4, 9], 100, torch.float32, "wb", device, spread=1e-3)
    with launches() as seen:
        y = layer_norm(x, w, b, eps, backend=backend)
        dy = torch.randn_like(y)
        got = _grads(y, dy, (x, w, b))
    if backend == "triton":
        seen.expect(*LAYER_NORM, exactly=1)
    else:
        assert not seen.kernels and seen.fallbacks["layer_norm"] == 1
    leaves = [t.detach().double().requires_grad_() for t in (x, w, b)]
    want_y = naive_layer_norm(*leaves, eps)
    want = _grads(want_y, dy.double(), leaves)
    rstd = 1 / torch.sqrt(x.detach().double().var(-1, unbiased=False) + eps).min()
    scale = float(x.detach().abs().max() * rstd * torch.finfo(torch.float32).eps)
    torch.testing.assert_close(y.double(), want_y, atol=16 * scale, rtol=0)
    for name, g, r in zip(("dx", "dw", "db"), got, want):
        tol = 64 * scale * float(r.abs().max() + 1)
        torch.testing.assert_close(g.double(), r, atol=tol, rtol=1e-5, msg=name)


def test_errors_name_the_value(device):
    x = torch.randn(2, 8, device=device)
    with pytest.raises(ValueError, match=r"weight.shape=\(9,\)"):
        layer_norm(x, torch.ones(9, device=device), None, backend="triton")
    with pytest.raises(TypeError, match="int64"):
        layer_norm(x.long(), None, None, backend="triton")
    with pytest.raises(ValueError, match="N=20000"):
        layer_norm(torch.randn(1, 20000, device=device), None, None, backend="triton")
    with pytest.raises(ValueError, match="backend='cuda'"):
        layer_norm(x, None, None, backend="cuda")


@pytest.mark.parametrize(
    "env, kernel", [("triton", True), (" Triton ", True), ("torch", False), ("", False)]
)
def test_backend_none_reads_the_environment(monkeypatch, device, env, kernel):
    """backend=None means ESMKERNELS_BACKEND (default "auto": the torch path on CPU tensors); an
    explicit backend wins over the variable."""
    monkeypatch.setenv("ESMKERNELS_BACKEND", env)
    x = torch.randn(3, 24, device=device)
    on_gpu = device.type == "cuda" and env.strip() != "torch"
    with launches() as seen:
        layer_norm(x, None, None)
    assert bool(seen.kernels) == (kernel or on_gpu), seen
    with launches() as seen:
        layer_norm(x, None, None, backend="torch" if kernel else "triton")
    assert bool(seen.kernels) != kernel, seen


def test_bad_environment_backend_is_named(monkeypatch):
    monkeypatch.setenv("ESMKERNELS_BACKEND", "cuda")
    with pytest.raises(ValueError, match="ESMKERNELS_BACKEND='cuda'"):
        layer_norm(torch.randn(2, 8), None, None)


def test_forced_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    # The interpreter flag is read at call time by the dispatcher; Triton itself is untouched.
    monkeypatch.setattr(_dispatch, "interpreting", lambda: False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        layer_norm(torch.randn(2, 8), None, None, backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("n", [320, 1280, 2560, 5120, 8192, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_layer_norm_gpu_model_sizes(device, n, dtype):
    x, w, b = _inputs([4, 1023], n, dtype, "wb", device)
    xf, wf, bf = (t.detach().float().requires_grad_() for t in (x, w, b))
    y = layer_norm(x, w, b, backend="triton")
    y_ref = ref.layer_norm(xf, wf, bf, 1e-5)
    y_torch = F.layer_norm(x, (n,), w, b, 1e-5)
    dy = torch.randn_like(y)
    got = _grads(y, dy, (x, w, b))
    want = _grads(y_ref, dy.float(), (xf, wf, bf))
    at_dtype = _grads(y_torch, dy, (x, w, b))
    if dtype == torch.float32:
        # dw and db sum over 4092 rows: the summation order differs from PyTorch's.
        torch.testing.assert_close(y, y_ref, **FP32_DOT)
        for g, r in zip(got, want):
            torch.testing.assert_close(g, r, atol=1e-3, rtol=1e-4)
        return
    assert_within_rule(y, y_torch, y_ref, dtype, "y")
    for name, g, t, r in zip(("dx", "dw", "db"), got, at_dtype, want):
        assert_within_rule(g, t, r, dtype, name)


@pytest.mark.slow
@pytest.mark.parametrize("n", [128, 1280, 8192])
def test_layer_norm_kernels_compile_for_sm90(n):
    """Both kernels compile for sm_90 at the launch shape for n (pointers and row strides
    16-divisible, as for the model sizes), also with fp32 parameters on bf16 rows, and ptxas
    reports no register spills. See tests/_sm90.py."""
    from esmkernels.ops.layernorm import backward, forward

    block_m, block_n, num_warps = forward._launch_shape(n)
    jobs = []
    for name, ln in (("_layer_norm_fwd_kernel", forward), ("_layer_norm_bwd_kernel", backward)):
        has_b = "b_ptr" in getattr(ln, name).arg_names
        for params in ("bf16", "fp32", None):  # None: no affine parameters
            constexprs = dict(
                HAS_WEIGHT=params is not None, HAS_BIAS=params is not None, BLOCK_M=block_m,
                BLOCK_N=block_n,
            )  # fmt: skip
            if params is None:
                constexprs.update(w_ptr=None, **({"b_ptr": None} if has_b else {}))
            types = {"w_ptr": "*fp32", "b_ptr": "*fp32"} if params == "fp32" else {}
            jobs.append(Job(ln.__name__, name, constexprs, "bf16", types, num_warps=num_warps,
                            num_stages=1))  # fmt: skip
    report = compile_report(jobs)
    assert len(report) == len(jobs)
    assert_no_spills(report)
