"""Fused LayerNorm over the last dimension (forward and backward) in Triton.

Math, for one row x of length N (statistics in fp32 whatever the input dtype):

    mean = sum(x) / N
    rstd = 1 / sqrt(sum((x - mean)^2) / N + eps)
    xhat = (x - mean) * rstd
    y    = xhat * w + b

Backward, with g = dy * w (or dy when there is no weight):

    dx = rstd * (g - xhat * mean(g * xhat) - mean(g))
    dw = sum_rows(dy * xhat),   db = sum_rows(dy)

Grid mapping. Forward: one program per block of `BLOCK_M` rows; the whole row (`BLOCK_N`, the
next power of two >= N) sits in registers, so the row is read once and written once. Small
hidden sizes (ESMFold's pair dimension 128, many rows) get several rows per program so each
program still moves a few KiB; large ones (ESM-2 15B's 5120) get one row per program and more
warps. Backward: a persistent grid of G programs (about two per SM) walks the row blocks with
stride G; each program writes dx for its rows and keeps fp32 partial sums of dw and db in
registers, stored once as a `[G, N]` slab that a `sum(0)` reduces afterwards. That avoids
atomics (deterministic) at the price of one small extra reduction, as Liger-Kernel and
flash-attn's `layer_norm.py` do.

Limits: N <= 16384 for the fused kernel (the row lives in registers); larger hidden sizes go to
the torch path under backend="auto" and raise a ValueError naming N under a forced "triton".
The last dimension must have stride 1; any leading layout that `reshape(-1, N)` can view is
read in place through the row stride, otherwise the input is copied once.

Autograd and `torch.compile`: the launchers are the custom ops `esmkernels::layer_norm_fwd` /
`layer_norm_bwd` (`esmkernels.ops._custom_ops`), with fake implementations (y, and the fp32 mean
and rstd saved for the backward) and the backward registered as the forward op's autograd.

Sources: Liger-Kernel `ops/layer_norm.py` (layering), flash-attn `ops/triton/layer_norm.py`
(partial-sum backward), the Triton layer-norm tutorial.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from esmkernels.ops._custom_ops import define
from esmkernels.ops._dispatch import default_backend, poison_empty, resolve_backend
from esmkernels.reference import functional as ref

MAX_FUSED_N = 16384
# Elements one program keeps in registers per tensor: 4096 fp32 over 8 warps is 16 per thread.
_TILE_ELEMS = 4096


def _launch_shape(n: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) for hidden size n: a power-of-two row tile, ~16 fp32/thread."""
    block_n = triton.next_power_of_2(n)
    block_m = max(1, min(64, _TILE_ELEMS // block_n))
    num_warps = max(1, min(16, block_m * block_n // 512))
    return block_m, block_n, num_warps


@triton.jit
def _layer_norm_fwd_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    mean_ptr,
    rstd_ptr,
    stride_xm,
    stride_ym,
    M,
    N,
    eps,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    i_m = tl.program_id(0).to(tl.int64)
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)  # [BLOCK_M]
    o_n = tl.arange(0, BLOCK_N)  # [BLOCK_N]
    m_m = o_m < M
    m_n = o_n < N
    m_x = m_m[:, None] & m_n[None, :]

    b_x = tl.load(x_ptr + o_m[:, None] * stride_xm + o_n[None, :], mask=m_x, other=0.0)
    b_x = b_x.to(tl.float32)  # [BLOCK_M, BLOCK_N]
    b_mean = tl.sum(b_x, axis=1) / N  # [BLOCK_M]
    b_xc = tl.where(m_x, b_x - b_mean[:, None], 0.0)  # [BLOCK_M, BLOCK_N]
    b_var = tl.sum(b_xc * b_xc, axis=1) / N  # [BLOCK_M]
    b_rstd = 1.0 / tl.sqrt(b_var + eps)  # [BLOCK_M]
    b_y = b_xc * b_rstd[:, None]
    if HAS_WEIGHT:
        b_w = tl.load(w_ptr + o_n, mask=m_n, other=0.0).to(tl.float32)  # [BLOCK_N]
        b_y = b_y * b_w[None, :]
    if HAS_BIAS:
        b_b = tl.load(b_ptr + o_n, mask=m_n, other=0.0).to(tl.float32)  # [BLOCK_N]
        b_y = b_y + b_b[None, :]

    tl.store(
        y_ptr + o_m[:, None] * stride_ym + o_n[None, :], b_y.to(y_ptr.dtype.element_ty), mask=m_x
    )
    tl.store(mean_ptr + o_m, b_mean, mask=m_m)
    tl.store(rstd_ptr + o_m, b_rstd, mask=m_m)


@triton.jit
def _layer_norm_bwd_kernel(
    x_ptr,
    w_ptr,
    dy_ptr,
    mean_ptr,
    rstd_ptr,
    dx_ptr,
    dw_part_ptr,
    db_part_ptr,
    stride_xm,
    stride_dym,
    stride_dxm,
    M,
    N,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    i_g = tl.program_id(0).to(tl.int64)
    n_programs = tl.num_programs(0)
    n_row_blocks = tl.cdiv(M, BLOCK_M)
    o_n = tl.arange(0, BLOCK_N)  # [BLOCK_N]
    m_n = o_n < N
    if HAS_WEIGHT:
        b_w = tl.load(w_ptr + o_n, mask=m_n, other=0.0).to(tl.float32)  # [BLOCK_N]
    b_dw = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    b_db = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    for i_blk in range(i_g, n_row_blocks, n_programs):
        o_m = i_blk * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)  # [BLOCK_M]
        m_m = o_m < M
        m_x = m_m[:, None] & m_n[None, :]
        b_x = tl.load(x_ptr + o_m[:, None] * stride_xm + o_n[None, :], mask=m_x, other=0.0)
        b_x = b_x.to(tl.float32)  # [BLOCK_M, BLOCK_N]
        b_dy = tl.load(dy_ptr + o_m[:, None] * stride_dym + o_n[None, :], mask=m_x, other=0.0)
        b_dy = b_dy.to(tl.float32)  # [BLOCK_M, BLOCK_N]
        b_mean = tl.load(mean_ptr + o_m, mask=m_m, other=0.0)  # [BLOCK_M]
        b_rstd = tl.load(rstd_ptr + o_m, mask=m_m, other=0.0)  # [BLOCK_M]

        b_xhat = tl.where(m_x, (b_x - b_mean[:, None]) * b_rstd[:, None], 0.0)
        if HAS_WEIGHT:
            b_g = b_dy * b_w[None, :]
        else:
            b_g = b_dy
        c1 = tl.sum(b_xhat * b_g, axis=1) / N  # [BLOCK_M]
        c2 = tl.sum(b_g, axis=1) / N  # [BLOCK_M]
        b_dx = (b_g - (b_xhat * c1[:, None] + c2[:, None])) * b_rstd[:, None]
        p_dx = dx_ptr + o_m[:, None] * stride_dxm + o_n[None, :]
        tl.store(p_dx, b_dx.to(dx_ptr.dtype.element_ty), mask=m_x)

        if HAS_WEIGHT:
            b_dw += b_dy * b_xhat
        if HAS_BIAS:
            b_db += b_dy

    # Partial sums for this program: [N] each, in fp32.
    if HAS_WEIGHT:
        tl.store(dw_part_ptr + i_g * N + o_n, tl.sum(b_dw, axis=0), mask=m_n)
    if HAS_BIAS:
        tl.store(db_part_ptr + i_g * N + o_n, tl.sum(b_db, axis=0), mask=m_n)


def _check_fused_n(n: int) -> None:
    if n > MAX_FUSED_N:
        raise ValueError(
            f"layer_norm: hidden size N={n} exceeds the fused kernel's limit {MAX_FUSED_N} "
            "(the row lives in registers); use backend='torch'"
        )


def layer_norm_fwd(
    x2d: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward kernel. x2d: [M, N] with stride(1) == 1.

    Returns y [M, N] (x2d.dtype, contiguous), mean [M] and rstd [M] (fp32).
    """
    M, N = x2d.shape
    _check_fused_n(N)
    if x2d.stride(1) != 1:
        x2d = x2d.contiguous()
    y = poison_empty(M, N, dtype=x2d.dtype, device=x2d.device)
    mean = poison_empty(M, dtype=torch.float32, device=x2d.device)
    rstd = poison_empty(M, dtype=torch.float32, device=x2d.device)
    if M == 0:
        return y, mean, rstd
    block_m, block_n, num_warps = _launch_shape(N)
    grid = (triton.cdiv(M, block_m),)
    _layer_norm_fwd_kernel[grid](
        x2d,
        weight,
        bias,
        y,
        mean,
        rstd,
        x2d.stride(0),
        y.stride(0),
        M,
        N,
        eps,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        num_warps=num_warps,
    )
    return y, mean, rstd


def _num_bwd_programs(device: torch.device, n_row_blocks: int) -> int:
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(n_row_blocks, 2 * sms))
    # Interpreter: a few programs still exercise the strided row loop and the partial reduction.
    return max(1, min(n_row_blocks, 3))


def layer_norm_bwd(
    dy2d: torch.Tensor,
    x2d: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Launch the backward kernel. dy2d, x2d: [M, N] (stride(1) == 1); mean, rstd: [M] fp32.

    Returns dx [M, N] (x2d.dtype), dweight [N] and dbias [N] (their parameter's dtype, None when
    the parameter is None).
    """
    M, N = x2d.shape
    _check_fused_n(N)
    if x2d.stride(1) != 1:
        x2d = x2d.contiguous()
    if dy2d.stride(1) != 1:
        dy2d = dy2d.contiguous()
    device = x2d.device
    dx = poison_empty(M, N, dtype=x2d.dtype, device=device)
    block_m, block_n, num_warps = _launch_shape(N)
    n_row_blocks = triton.cdiv(M, block_m)
    n_prog = _num_bwd_programs(device, n_row_blocks)
    dw_part = torch.zeros(n_prog, N, dtype=torch.float32, device=device)
    db_part = torch.zeros(n_prog, N, dtype=torch.float32, device=device)
    if M > 0:
        _layer_norm_bwd_kernel[(n_prog,)](
            x2d,
            weight,
            dy2d,
            mean,
            rstd,
            dx,
            dw_part,
            db_part,
            x2d.stride(0),
            dy2d.stride(0),
            dx.stride(0),
            M,
            N,
            HAS_WEIGHT=weight is not None,
            HAS_BIAS=bias is not None,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            num_warps=num_warps,
        )
    dw = None if weight is None else dw_part.sum(0).to(weight.dtype)
    db = None if bias is None else db_part.sum(0).to(bias.dtype)
    return dx, dw, db


# ------------------------------------------------------------------------------------------------
# Custom ops (torch.library): fake implementations and autograd, see esmkernels.ops._custom_ops
# ------------------------------------------------------------------------------------------------


def _fwd_fake(x2d, weight, bias, eps):
    M, N = x2d.shape
    stats = [x2d.new_empty(M, dtype=torch.float32) for _ in range(2)]
    return (x2d.new_empty(M, N), *stats)


def _bwd_fake(dy2d, x2d, weight, bias, mean, rstd):
    return [x2d.new_empty(x2d.shape)] + [
        torch.empty_like(p) for p in (weight, bias) if p is not None
    ]


@define("layer_norm_bwd", fake=_bwd_fake)
def _layer_norm_bwd_op(
    dy2d: torch.Tensor,
    x2d: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
) -> list[torch.Tensor]:
    """[dx, dweight (if weight), dbias (if bias)]: custom ops cannot return None."""
    dx, dw, db = layer_norm_bwd(dy2d, x2d, weight, bias, mean, rstd)
    return [dx] + [g for g in (dw, db) if g is not None]


def _setup_context(ctx, inputs, output):
    x2d, weight, bias, _ = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x2d, weight, bias, mean, rstd)
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, dy, _dmean, _drstd):
    x2d, weight, bias, mean, rstd = ctx.saved_tensors
    grads = iter(_layer_norm_bwd_op(dy, x2d, weight, bias, mean, rstd))
    dx = next(grads)
    dw = None if weight is None else next(grads)
    db = None if bias is None else next(grads)
    return dx, dw, db, None


@define("layer_norm_fwd", fake=_fwd_fake, backward=_backward, setup_context=_setup_context)
def _layer_norm_fwd_op(
    x2d: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y [M, N], mean [M] fp32, rstd [M] fp32); differentiable in x2d, weight and bias."""
    return layer_norm_fwd(x2d, weight, bias, eps)


def _validate(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"layer_norm: x must be a tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise ValueError("layer_norm: x must have at least one dimension, got a scalar")
    if not x.is_floating_point():
        raise TypeError(f"layer_norm: x.dtype={x.dtype} is not a floating dtype")
    n = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is None:
            continue
        if p.shape != (n,):
            raise ValueError(f"layer_norm: {name}.shape={tuple(p.shape)}, expected ({n},)")
        if p.device != x.device:
            raise ValueError(
                f"layer_norm: {name}.device={p.device} differs from x.device={x.device}"
            )
        if not p.is_floating_point():
            raise TypeError(f"layer_norm: {name}.dtype={p.dtype} is not a floating dtype")


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """LayerNorm over the last dimension, fused forward and backward.

    Args:
        x: [..., N], fp32 / fp16 / bf16, any leading shape. The Triton path takes N <= 16384:
            "auto" sends wider rows to the torch path, a forced "triton" raises ValueError.
        weight, bias: [N] or None (no affine scale / shift).
        eps: added to the variance.
        backend: "auto" | "triton" | "torch" (None: env ESMKERNELS_BACKEND, default "auto").

    Returns:
        y: [..., N] in x.dtype. Mean and variance are computed in fp32.

    Example:
        >>> x = torch.randn(2, 7, 320)
        >>> w, b = torch.ones(320), torch.zeros(320)
        >>> layer_norm(x, w, b, 1e-5, backend="torch").shape
        torch.Size([2, 7, 320])
    """
    _validate(x, weight, bias)
    chosen = resolve_backend(backend, x, weight, bias, op="layer_norm")
    if chosen == "triton" and x.shape[-1] > MAX_FUSED_N:
        requested = default_backend() if backend is None else str(backend).lower()
        if requested == "triton":
            _check_fused_n(x.shape[-1])
        chosen = "torch"  # "auto": rows too wide for registers run on the torch path
    if chosen == "torch":
        return ref.layer_norm(x, weight, bias, eps)
    y, _, _ = _layer_norm_fwd_op(x.reshape(-1, x.shape[-1]), weight, bias, float(eps))
    return y.view(x.shape)
