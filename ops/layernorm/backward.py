"""LayerNorm backward: the fused kernel and its launcher.

With g = dy * w (or dy when there is no weight), xhat = (x - mean) * rstd:

    dx = rstd * (g - xhat * mean(g * xhat) - mean(g))
    dw = sum_rows(dy * xhat),   db = sum_rows(dy)

Grid: a persistent grid of G programs (about two per SM) walks the row blocks with stride G;
each program writes dx for its rows and keeps fp32 partial sums of dw and db in registers,
stored once as a `[G, N]` slab that a `sum(0)` reduces afterwards. That avoids atomics
(deterministic) at the price of one small extra reduction, as Liger-Kernel and flash-attn's
`layer_norm.py` do.

Sources: flash-attn `ops/triton/layer_norm.py` (partial-sum backward), Liger-Kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from esmkernels.ops._dispatch import poison_empty
from esmkernels.ops.layernorm.forward import _check_fused_n, _launch_shape


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
