"""LayerNorm forward: the fused kernel and its launcher.

Grid: one program per block of `BLOCK_M` rows; the whole row (`BLOCK_N`, the next power of two
>= N) sits in registers, so the row is read once and written once. Small hidden sizes
(ESMFold's pair dimension 128, many rows) get several rows per program so each program still
moves a few KiB; large ones (ESM-2 15B's 5120) get one row per program and more warps.
Statistics (mean, rstd) are computed and saved in fp32 for the backward.

Limits: N <= MAX_FUSED_N (the row lives in registers). The last dimension must have stride 1;
any leading layout that `reshape(-1, N)` can view is read in place through the row stride,
otherwise the input is copied once.

Sources: Liger-Kernel `ops/layer_norm.py` (layering), the Triton layer-norm tutorial.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from esmkernels.ops._dispatch import poison_empty

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
