"""Axial attention backward: preprocess, dk/dv, dq and dbias kernels and their launchers.

With the saved base-2 log-sum-exp `lse` and the ungated output o, every backward kernel
recomputes a [BLOCK_M, BLOCK_N] tile of the softmax exactly,

    p  = exp2(s * log2 e - lse)                 s = scale * q k^T + bias, -inf on masked keys
    dp = dO_u v^T,    ds = p * (dp - delta),    delta = rowsum(dO_u * o)     (FlashAttention-2)
    dq = scale * ds k,   dk = scale * ds^T q,   dv = p^T dO_u,   dbias = sum over rows r of ds

where dO_u = dout * sigmoid(gate) and dgate = dout * o * sigmoid'(gate) come from a small
preprocessing kernel that also computes delta.

Three kernels, each owning its outputs (no atomics, deterministic):
- `_axial_attn_bwd_dkdv_kernel`, program (r, key block, b*H+h), loops over query blocks;
- `_axial_attn_bwd_dq_kernel`, program (r, query block, b*H+h), loops over key blocks;
- `_axial_attn_bwd_dbias_kernel`, program (bias tile, split s, b*H+h), loops over rows
  r = s, s + S, s + 2S, ... and sums ds in registers. The bias tile is loaded once per program.
  S row splits write fp32 partials [S, B, H, N, N] that torch sums; S is chosen so that small
  N still fills the GPU (S = 1 for N >= ~1k, where the tiles alone give enough programs).
The price of no atomics is recomputing s and dp three times (6 extra [BM, D] x [D, BN] dots
per tile); at D = 32 those dots are cheap next to the bias and q/k/v traffic, and fp32 atomics
on dbias would serialise: every row's program hits the same [N, N] tile of a head at once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from esmkernels.ops._dispatch import interpreting, poison_empty
from esmkernels.ops.axial.forward import (
    AUTOTUNE_KEY,
    DBIAS_TUNING,
    DKDV_TUNING,
    DQ_TUNING,
    LOG2E,
    _bias_tile,
    _key_keep,
    _load_rows,
    block_d,
    dot,
    empty_like_poisoned,
    mask_as_uint8,
    round_key,
)

# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------


@triton.jit
def _p_ds_tile(b_q, b_k, b_v, b_do, b_lse, b_delta, b_bias, keep, qk_scale, HAS_BIAS: tl.constexpr):
    """Recompute p and ds for one [BM, BN] tile. keep: [BN] or [BM, BN] kept keys."""
    b_s = dot(b_q, tl.trans(b_k)) * qk_scale  # [BM, BN]
    if HAS_BIAS:
        b_s += b_bias
    b_s = tl.where(keep, b_s, float("-inf"))
    b_p = tl.exp2(b_s - b_lse[:, None])  # [BM, BN]; lse = +inf on empty / padding rows -> 0
    b_dp = dot(b_do, tl.trans(b_v))  # [BM, BN]
    b_ds = b_p * (b_dp - b_delta[:, None])
    return b_p, b_ds


@triton.jit
def _axial_attn_bwd_pre_kernel(
    do_ptr, ou_ptr, gate_ptr, dou_ptr, dgate_ptr, delta_ptr,
    stride_dob, stride_dor, stride_don, stride_doh, stride_dod,
    stride_ub, stride_ur, stride_un, stride_uh, stride_ud,
    stride_gb, stride_gr, stride_gn, stride_gh, stride_gd,
    stride_db, stride_dr, stride_dn, stride_dh, stride_dd,
    stride_dgb, stride_dgr, stride_dgn, stride_dgh, stride_dgd,
    stride_lb, stride_lr, stride_lh,
    H, N, D,
    HAS_GATE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    i_r = tl.program_id(0).to(tl.int64)
    i_m = tl.program_id(1).to(tl.int64)
    i_bh = tl.program_id(2).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    o_d = tl.arange(0, BLOCK_D).to(tl.int64)
    m_m = o_m < N
    m_d = o_d < D
    m_md = m_m[:, None] & m_d[None, :]
    do_base = i_b * stride_dob + i_r * stride_dor + i_h * stride_doh
    u_base = i_b * stride_ub + i_r * stride_ur + i_h * stride_uh
    b_do = _load_rows(do_ptr, do_base, o_m, stride_don, o_d, stride_dod, m_m, m_d).to(tl.float32)
    b_u = _load_rows(ou_ptr, u_base, o_m, stride_un, o_d, stride_ud, m_m, m_d).to(tl.float32)
    if HAS_GATE:
        g_base = i_b * stride_gb + i_r * stride_gr + i_h * stride_gh
        b_g = _load_rows(gate_ptr, g_base, o_m, stride_gn, o_d, stride_gd, m_m, m_d)  # [BM, BD]
        b_sig = tl.sigmoid(b_g.to(tl.float32))
        b_dgate = b_do * b_u * b_sig * (1.0 - b_sig)
        p_dg = (
            dgate_ptr + i_b * stride_dgb + i_r * stride_dgr + i_h * stride_dgh
            + o_m[:, None] * stride_dgn + o_d[None, :] * stride_dgd
        )  # fmt: skip
        tl.store(p_dg, b_dgate.to(dgate_ptr.dtype.element_ty), mask=m_md)
        # The dots below read dO_u in the input dtype: delta uses the same rounded values.
        b_dou = (b_do * b_sig).to(dou_ptr.dtype.element_ty)
        p_du = (
            dou_ptr + i_b * stride_db + i_r * stride_dr + i_h * stride_dh
            + o_m[:, None] * stride_dn + o_d[None, :] * stride_dd
        )  # fmt: skip
        tl.store(p_du, b_dou, mask=m_md)
        b_do = b_dou.to(tl.float32)
    b_delta = tl.sum(b_do * b_u, 1)  # [BM]
    tl.store(
        delta_ptr + i_b * stride_lb + i_r * stride_lr + i_h * stride_lh + o_m, b_delta, mask=m_m
    )


@triton.autotune(key=AUTOTUNE_KEY, **DKDV_TUNING)
@triton.jit
def _axial_attn_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, bias_ptr, mask_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_qr, stride_qn, stride_qh, stride_qd,
    stride_kb, stride_kr, stride_kn, stride_kh, stride_kd,
    stride_vb, stride_vr, stride_vn, stride_vh, stride_vd,
    stride_dob, stride_dor, stride_don, stride_doh, stride_dod,
    stride_dkb, stride_dkr, stride_dkn, stride_dkh, stride_dkd,
    stride_dvb, stride_dvr, stride_dvn, stride_dvh, stride_dvd,
    stride_biasb, stride_biash, stride_biasq, stride_biask,
    stride_maskb, stride_maskr, stride_maskn,
    stride_lb, stride_lr, stride_lh,
    H, N, D, qk_scale, scale, N_KEY,
    HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    i_r = tl.program_id(0).to(tl.int64)
    i_n = tl.program_id(1).to(tl.int64)
    i_bh = tl.program_id(2).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    o_d = tl.arange(0, BLOCK_D).to(tl.int64)
    m_n = o_n < N
    m_d = o_d < D
    q_base = i_b * stride_qb + i_r * stride_qr + i_h * stride_qh
    do_base = i_b * stride_dob + i_r * stride_dor + i_h * stride_doh
    l_base = i_b * stride_lb + i_r * stride_lr + i_h * stride_lh
    bias_base = i_b * stride_biasb + i_h * stride_biash
    k_base = i_b * stride_kb + i_r * stride_kr + i_h * stride_kh
    v_base = i_b * stride_vb + i_r * stride_vr + i_h * stride_vh
    b_k = _load_rows(k_ptr, k_base, o_n, stride_kn, o_d, stride_kd, m_n, m_d)  # [BN, BD]
    b_v = _load_rows(v_ptr, v_base, o_n, stride_vn, o_d, stride_vd, m_n, m_d)  # [BN, BD]
    keep = _key_keep(
        mask_ptr, i_b * stride_maskb + i_r * stride_maskr, o_n, stride_maskn, m_n, HAS_MASK
    )
    b_dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    b_dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start_m in range(0, N, BLOCK_M):
        o_m = start_m + tl.arange(0, BLOCK_M).to(tl.int64)
        m_m = o_m < N
        b_q = _load_rows(q_ptr, q_base, o_m, stride_qn, o_d, stride_qd, m_m, m_d)  # [BM, BD]
        b_do = _load_rows(do_ptr, do_base, o_m, stride_don, o_d, stride_dod, m_m, m_d)  # [BM, BD]
        b_lse = tl.load(lse_ptr + l_base + o_m, mask=m_m, other=float("inf"))  # [BM]
        b_delta = tl.load(delta_ptr + l_base + o_m, mask=m_m, other=0.0)  # [BM]
        b_bias = 0.0
        if HAS_BIAS:
            b_bias = _bias_tile(bias_ptr, bias_base, o_m, o_n, stride_biasq, stride_biask, m_m, m_n)
        b_p, b_ds = _p_ds_tile(
            b_q, b_k, b_v, b_do, b_lse, b_delta, b_bias, keep[None, :], qk_scale, HAS_BIAS
        )
        b_dv += dot(tl.trans(b_p.to(b_do.dtype)), b_do)  # [BN, BD]
        b_dk += dot(tl.trans(b_ds.to(b_q.dtype)), b_q)  # [BN, BD]
    m_nd = m_n[:, None] & m_d[None, :]
    p_dk = (
        dk_ptr + i_b * stride_dkb + i_r * stride_dkr + i_h * stride_dkh
        + o_n[:, None] * stride_dkn + o_d[None, :] * stride_dkd
    )  # fmt: skip
    tl.store(p_dk, (b_dk * scale).to(dk_ptr.dtype.element_ty), mask=m_nd)
    p_dv = (
        dv_ptr + i_b * stride_dvb + i_r * stride_dvr + i_h * stride_dvh
        + o_n[:, None] * stride_dvn + o_d[None, :] * stride_dvd
    )  # fmt: skip
    tl.store(p_dv, b_dv.to(dv_ptr.dtype.element_ty), mask=m_nd)


@triton.autotune(key=AUTOTUNE_KEY, **DQ_TUNING)
@triton.jit
def _axial_attn_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, bias_ptr, mask_ptr, lse_ptr, delta_ptr, dq_ptr,
    stride_qb, stride_qr, stride_qn, stride_qh, stride_qd,
    stride_kb, stride_kr, stride_kn, stride_kh, stride_kd,
    stride_vb, stride_vr, stride_vn, stride_vh, stride_vd,
    stride_dob, stride_dor, stride_don, stride_doh, stride_dod,
    stride_dqb, stride_dqr, stride_dqn, stride_dqh, stride_dqd,
    stride_biasb, stride_biash, stride_biasq, stride_biask,
    stride_maskb, stride_maskr, stride_maskn,
    stride_lb, stride_lr, stride_lh,
    H, N, D, qk_scale, scale, N_KEY,
    HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    i_r = tl.program_id(0).to(tl.int64)
    i_m = tl.program_id(1).to(tl.int64)
    i_bh = tl.program_id(2).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    o_d = tl.arange(0, BLOCK_D).to(tl.int64)
    m_m = o_m < N
    m_d = o_d < D
    q_base = i_b * stride_qb + i_r * stride_qr + i_h * stride_qh
    do_base = i_b * stride_dob + i_r * stride_dor + i_h * stride_doh
    l_base = i_b * stride_lb + i_r * stride_lr + i_h * stride_lh
    bias_base = i_b * stride_biasb + i_h * stride_biash
    mask_base = i_b * stride_maskb + i_r * stride_maskr
    k_base = i_b * stride_kb + i_r * stride_kr + i_h * stride_kh
    v_base = i_b * stride_vb + i_r * stride_vr + i_h * stride_vh
    b_q = _load_rows(q_ptr, q_base, o_m, stride_qn, o_d, stride_qd, m_m, m_d)  # [BM, BD]
    b_do = _load_rows(do_ptr, do_base, o_m, stride_don, o_d, stride_dod, m_m, m_d)  # [BM, BD]
    b_lse = tl.load(lse_ptr + l_base + o_m, mask=m_m, other=float("inf"))  # [BM]
    b_delta = tl.load(delta_ptr + l_base + o_m, mask=m_m, other=0.0)  # [BM]
    b_dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, N, BLOCK_N):
        o_n = start_n + tl.arange(0, BLOCK_N).to(tl.int64)
        m_n = o_n < N
        b_k = _load_rows(k_ptr, k_base, o_n, stride_kn, o_d, stride_kd, m_n, m_d)  # [BN, BD]
        b_v = _load_rows(v_ptr, v_base, o_n, stride_vn, o_d, stride_vd, m_n, m_d)  # [BN, BD]
        keep = _key_keep(mask_ptr, mask_base, o_n, stride_maskn, m_n, HAS_MASK)  # [BN]
        b_bias = 0.0
        if HAS_BIAS:
            b_bias = _bias_tile(bias_ptr, bias_base, o_m, o_n, stride_biasq, stride_biask, m_m, m_n)
        _, b_ds = _p_ds_tile(
            b_q, b_k, b_v, b_do, b_lse, b_delta, b_bias, keep[None, :], qk_scale, HAS_BIAS
        )
        b_dq += dot(b_ds.to(b_k.dtype), b_k)  # [BM, BD]
    p_dq = (
        dq_ptr + i_b * stride_dqb + i_r * stride_dqr + i_h * stride_dqh
        + o_m[:, None] * stride_dqn + o_d[None, :] * stride_dqd
    )  # fmt: skip
    tl.store(p_dq, (b_dq * scale).to(dq_ptr.dtype.element_ty), mask=m_m[:, None] & m_d[None, :])


@triton.autotune(key=AUTOTUNE_KEY, **DBIAS_TUNING)
@triton.jit
def _axial_attn_bwd_dbias_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, bias_ptr, mask_ptr, lse_ptr, delta_ptr, dbias_ptr,
    stride_qb, stride_qr, stride_qn, stride_qh, stride_qd,
    stride_kb, stride_kr, stride_kn, stride_kh, stride_kd,
    stride_vb, stride_vr, stride_vn, stride_vh, stride_vd,
    stride_dob, stride_dor, stride_don, stride_doh, stride_dod,
    stride_biasb, stride_biash, stride_biasq, stride_biask,
    stride_maskb, stride_maskr, stride_maskn,
    stride_lb, stride_lr, stride_lh,
    stride_pts, stride_ptb, stride_pth, stride_ptq, stride_ptk,
    R, H, N, D, S, qk_scale, N_KEY,
    HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    i_t = tl.program_id(0).to(tl.int64)
    i_s = tl.program_id(1).to(tl.int64)
    i_bh = tl.program_id(2).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    n_tiles_n = tl.cdiv(N, BLOCK_N)
    o_m = (i_t // n_tiles_n) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    o_n = (i_t % n_tiles_n) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    o_d = tl.arange(0, BLOCK_D).to(tl.int64)
    m_m = o_m < N
    m_n = o_n < N
    m_d = o_d < D
    # The bias tile is the same for every row: load it once.
    b_bias = _bias_tile(
        bias_ptr,
        i_b * stride_biasb + i_h * stride_biash,
        o_m,
        o_n,
        stride_biasq,
        stride_biask,
        m_m,
        m_n,
    )
    b_acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    # Rows i_s, i_s + S, ...; the launcher keeps S <= R so every program has at least one row.
    for it in range(0, tl.cdiv(R - i_s, S)):
        i_r = i_s + it * S
        q_base = i_b * stride_qb + i_r * stride_qr + i_h * stride_qh
        do_base = i_b * stride_dob + i_r * stride_dor + i_h * stride_doh
        k_base = i_b * stride_kb + i_r * stride_kr + i_h * stride_kh
        v_base = i_b * stride_vb + i_r * stride_vr + i_h * stride_vh
        l_base = i_b * stride_lb + i_r * stride_lr + i_h * stride_lh
        b_q = _load_rows(q_ptr, q_base, o_m, stride_qn, o_d, stride_qd, m_m, m_d)  # [BM, BD]
        b_do = _load_rows(do_ptr, do_base, o_m, stride_don, o_d, stride_dod, m_m, m_d)  # [BM, BD]
        b_k = _load_rows(k_ptr, k_base, o_n, stride_kn, o_d, stride_kd, m_n, m_d)  # [BN, BD]
        b_v = _load_rows(v_ptr, v_base, o_n, stride_vn, o_d, stride_vd, m_n, m_d)  # [BN, BD]
        b_lse = tl.load(lse_ptr + l_base + o_m, mask=m_m, other=float("inf"))  # [BM]
        b_delta = tl.load(delta_ptr + l_base + o_m, mask=m_m, other=0.0)  # [BM]
        keep = _key_keep(
            mask_ptr, i_b * stride_maskb + i_r * stride_maskr, o_n, stride_maskn, m_n, HAS_MASK
        )
        _, b_ds = _p_ds_tile(
            b_q, b_k, b_v, b_do, b_lse, b_delta, b_bias, keep[None, :], qk_scale, True
        )
        b_acc += b_ds
    p_part = (
        dbias_ptr + i_s * stride_pts + i_b * stride_ptb + i_h * stride_pth
        + o_m[:, None] * stride_ptq + o_n[None, :] * stride_ptk
    )  # fmt: skip
    tl.store(p_part, b_acc, mask=m_m[:, None] & m_n[None, :])


# ------------------------------------------------------------------------------------------------
# Launchers
# ------------------------------------------------------------------------------------------------


def _strides(t: torch.Tensor | None, ndim: int) -> tuple[int, ...]:
    return tuple(t.stride()) if t is not None else (0,) * ndim


def dbias_row_splits(B: int, R: int, H: int, N: int) -> int:
    """Row splits S of the dbias reduction: enough programs for ~2 waves on 132 SMs (64x64 tiles)."""
    tiles = triton.cdiv(N, 64) ** 2 * B * H
    return max(1, min(R, 16, triton.cdiv(264, max(tiles, 1))))


def axial_attention_bwd_preprocess(
    dout: torch.Tensor,
    ungated: torch.Tensor,
    gate: torch.Tensor | None,
    *,
    dgate: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(dO_u = dout * sigmoid(gate) [q layout], dgate or None, delta [B, R, H, N] fp32).

    `ungated` is the ungated attention output o (the output itself when there is no gate).
    `dgate` may be given (a view) and is written in place."""
    B, R, N, H, D = dout.shape
    delta = poison_empty(B, R, H, N, dtype=torch.float32, device=dout.device)
    dou = empty_like_poisoned(ungated) if gate is not None else dout
    if gate is not None and dgate is None:
        dgate = empty_like_poisoned(gate)
    if dout.numel() == 0:
        return dou, dgate, delta.zero_()
    block_m = 16 if interpreting() else 64
    grid = (R, triton.cdiv(N, block_m), B * H)
    _axial_attn_bwd_pre_kernel[grid](
        dout, ungated, gate, dou, dgate, delta,
        *dout.stride(), *ungated.stride(), *_strides(gate, 5), *dou.stride(),
        *_strides(dgate, 5), *delta.stride()[:3],
        H, N, D,
        HAS_GATE=gate is not None, BLOCK_M=block_m, BLOCK_D=block_d(D),
    )  # fmt: skip
    return dou, dgate, delta


def axial_attention_bwd(
    dou: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None,
    lse: torch.Tensor,
    delta: torch.Tensor,
    scale: float,
    *,
    need_dbias: bool,
    splits: int | None = None,
    dq: torch.Tensor | None = None,
    dk: torch.Tensor | None = None,
    dv: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """dq, dk, dv (layout of q, k, v) and dbias (fp32 [B, H, N, N], summed over rows) or None.

    dou: [B, R, N, H, D] gradient of the ungated output; lse, delta: [B, R, H, N] fp32.
    dq, dk, dv may be given (views) and are written in place."""
    B, R, N, H, D = q.shape
    dq = empty_like_poisoned(q) if dq is None else dq
    dk = empty_like_poisoned(k) if dk is None else dk
    dv = empty_like_poisoned(v) if dv is None else dv
    mask_u8 = mask_as_uint8(mask)
    dbias = None
    if need_dbias:
        if bias is None:
            raise ValueError("axial_attention_bwd: need_dbias=True without a bias")
        S = dbias_row_splits(B, R, H, N) if splits is None else max(1, min(int(splits), max(R, 1)))
        part = poison_empty(S, B, H, N, N, dtype=torch.float32, device=q.device)
    if B * R * N * H == 0:
        dq.zero_(), dk.zero_(), dv.zero_()
        return dq, dk, dv, (torch.zeros(B, H, N, N, device=q.device) if need_dbias else None)
    qk_scale = scale * LOG2E
    common = (
        *q.stride(), *k.stride(), *v.stride(), *dou.stride(),
    )  # fmt: skip
    tail = (*_strides(bias, 4), *_strides(mask_u8, 3), *lse.stride()[:3])
    grid_n = lambda meta: (R, triton.cdiv(N, meta["BLOCK_N"]), B * H)
    _axial_attn_bwd_dkdv_kernel[grid_n](
        q, k, v, dou, bias, mask_u8, lse, delta, dk, dv,
        *common, *dk.stride(), *dv.stride(), *tail,
        H, N, D, qk_scale, scale, round_key(N),
        HAS_BIAS=bias is not None, HAS_MASK=mask is not None, BLOCK_D=block_d(D),
    )  # fmt: skip
    grid_m = lambda meta: (R, triton.cdiv(N, meta["BLOCK_M"]), B * H)
    _axial_attn_bwd_dq_kernel[grid_m](
        q, k, v, dou, bias, mask_u8, lse, delta, dq,
        *common, *dq.stride(), *tail,
        H, N, D, qk_scale, scale, round_key(N),
        HAS_BIAS=bias is not None, HAS_MASK=mask is not None, BLOCK_D=block_d(D),
    )  # fmt: skip
    if need_dbias:
        grid_t = lambda meta: (
            triton.cdiv(N, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),
            S,
            B * H,
        )
        _axial_attn_bwd_dbias_kernel[grid_t](
            q, k, v, dou, bias, mask_u8, lse, delta, part,
            *common, *tail, *part.stride(),
            R, H, N, D, S, qk_scale, round_key(N),
            HAS_MASK=mask is not None, BLOCK_D=block_d(D),
        )  # fmt: skip
        dbias = part[0] if S == 1 else part.sum(0)
    return dq, dk, dv, dbias
