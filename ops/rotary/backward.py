"""Fused rotary flash attention, backward: delta preprocess, dK/dV kernel, dQ kernel, launcher.

FlashAttention-2 backward, recomputing P from the saved log-sum-exp:

    delta_i = sum_d dO_id O_id                       (preprocess kernel, fp32)
    P_ij    = exp(s_ij - lse_i)        (0 for a masked key or a query with lse = -inf)
    dV      = P^T dO,   dP = dO V^T,   dS = P * (dP - delta)
    dk'     = scale * dS^T q'_unscaled,   dq' = scale * dS k'
    dq = R(p)^T dq',  dk = R(p)^T dk'                (the rotation's gradient is its transpose)

Kernels and grids:
- `_rotary_attention_bwd_preprocess_kernel`, grid `(cdiv(max_seqlen, BLOCK_M), H, B)`.
- `_rotary_attention_bwd_dkdv_kernel`, grid `(cdiv(max_seqlen, BLOCK_N), H, B)`: one program
  owns BLOCK_N keys (rotated once, in registers with v, dk', dv) and streams all query tiles.
- `_rotary_attention_bwd_dq_kernel`, grid `(cdiv(max_seqlen, BLOCK_M), H, B)`: one program owns
  BLOCK_M queries and streams all key tiles.

Trade-off: two kernels recompute QK^T and P twice (about 1.4x the FLOPs of a single pass with
atomic dq accumulation) but need no fp32 dq scratch buffer, no atomics and are deterministic;
that is what the Triton fused-attention tutorial does too. The inverse rotation is applied in
registers to the fp32 accumulators at the end of each program, so dq, dk are written once in
the input's dtype.

A query row with lse = -inf (every key masked) is given lse = +inf here, so its P row is
exp2(s - inf) = 0 and it contributes nothing; its dq is written as zeros.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from esmkernels.ops._dispatch import interpreting, poison_empty
from esmkernels.ops._tuning import tuning
from esmkernels.ops.rotary.forward import (
    _LOG2E,
    LOG2E,
    _cast,
    _configs,
    _dot,
    _key_keep,
    _Layout,
    _load_rotated,
    _load_tile,
    _positions,
    _rotary_freq,
    _row_offsets,
    _seq_bounds,
    _store_tile,
    _unrotate,
    dot_precision,
    head_dim_contiguous,
    seqlen_bucket,
    side_inputs,
)

# Per kernel, bf16 / fp16 and fp32 tiles by max D (see FWD_TUNING): spill-free on sm_90 under
# the running Triton once `esmkernels.ops._spills` has left out its release's spilling tiles.
# dK/dV: many keys per program (they stay in registers), small query tiles streamed.
DKDV_TUNING = tuning(
    kernel="_rotary_attention_bwd_dkdv_kernel",
    lowp={
        64: [
            (32, 128, 8, 3),
            (64, 64, 4, 2),
            (64, 64, 8, 3),
            (32, 64, 4, 2),
            (32, 64, 8, 3),
            (16, 128, 8, 3),
        ],
        128: [(32, 64, 8, 3), (32, 32, 8, 3), (16, 64, 8, 3)],
    },
    fp32={64: [(16, 32, 4, 2), (16, 64, 4, 1)], 128: [(16, 16, 8, 2), (16, 16, 8, 1)]},
    make=_configs,
)
# dQ: many queries per program, small key tiles streamed.
DQ_TUNING = tuning(
    kernel="_rotary_attention_bwd_dq_kernel",
    lowp={
        64: [
            (128, 32, 8, 3),
            (64, 64, 4, 2),
            (64, 64, 8, 3),
            (64, 32, 4, 2),
            (64, 32, 8, 3),
            (128, 16, 8, 3),
        ],
        128: [(64, 64, 8, 3), (64, 32, 8, 3), (32, 64, 8, 3), (64, 16, 8, 3)],
    },
    fp32={
        64: [(64, 16, 8, 2), (128, 32, 8, 2), (64, 16, 4, 2)],
        128: [(16, 32, 8, 2), (16, 16, 8, 2)],
    },
    make=_configs,
)


@triton.jit
def _rotary_attention_bwd_preprocess_kernel(
    o_ptr,
    do_ptr,
    delta_ptr,
    cu_ptr,
    stride_ob,
    stride_ot,
    stride_oh,
    stride_dob,
    stride_dot,
    stride_doh,
    stride_lb,
    stride_lh,
    seqlen,
    D: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    i_m = tl.program_id(0)
    i_h = tl.program_id(1).to(tl.int64)
    i_b = tl.program_id(2).to(tl.int64)
    bos, n_tok = _seq_bounds(cu_ptr, i_b, seqlen, IS_VARLEN)
    if i_m * BLOCK_M >= n_tok:
        return
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    m_m = o_m < n_tok
    o_o = _row_offsets(i_b, i_h, bos, o_m, stride_ob, stride_ot, stride_oh)
    o_do = _row_offsets(i_b, i_h, bos, o_m, stride_dob, stride_dot, stride_doh)
    b_o = _load_tile(o_ptr, o_o, m_m, D).to(tl.float32)  # [BLOCK_M, D]
    b_do = _load_tile(do_ptr, o_do, m_m, D).to(tl.float32)  # [BLOCK_M, D]
    b_delta = tl.sum(b_o * b_do, axis=1)  # [BLOCK_M]
    tl.store(delta_ptr + i_b * stride_lb + i_h * stride_lh + bos + o_m, b_delta, mask=m_m)


@triton.jit
def _load_row_stats(lse_ptr, delta_ptr, o_stat, m_row):
    """lse in log2 units (+inf for rows with no probability mass) and delta, both [BLOCK] fp32."""
    b_lse = tl.load(lse_ptr + o_stat, mask=m_row, other=float("inf"))
    b_lse = tl.where(b_lse == float("-inf"), float("inf"), b_lse * _LOG2E)
    b_delta = tl.load(delta_ptr + o_stat, mask=m_row, other=0.0)
    return b_lse, b_delta


@triton.autotune(
    key=["SEQ_BUCKET", "D", "ROTARY", "HAS_MASK"],
    **DKDV_TUNING,
)
@triton.jit
def _rotary_attention_bwd_dkdv_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    do_ptr,
    lse_ptr,
    delta_ptr,
    dk_ptr,
    dv_ptr,
    freq_ptr,
    pos_ptr,
    mask_ptr,
    cu_ptr,
    stride_qb,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_dob,
    stride_dot,
    stride_doh,
    stride_dkb,
    stride_dkt,
    stride_dkh,
    stride_lb,
    stride_lh,
    stride_pb,
    stride_pt,
    stride_mb,
    stride_mt,
    seqlen,
    qk_scale,
    SEQ_BUCKET,
    D: tl.constexpr,
    ROTARY: tl.constexpr,
    HAS_POS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    i_n = tl.program_id(0)
    i_h = tl.program_id(1).to(tl.int64)
    i_b = tl.program_id(2).to(tl.int64)
    bos, n_tok = _seq_bounds(cu_ptr, i_b, seqlen, IS_VARLEN)
    if i_n * BLOCK_N >= n_tok:
        return
    b_freq = _rotary_freq(freq_ptr, ROTARY, D)  # [D/2]

    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    m_n = o_n < n_tok
    m_keep = _key_keep(mask_ptr, i_b, o_n, m_n, stride_mb, stride_mt, HAS_MASK)
    b_pos_n = _positions(pos_ptr, i_b, bos, o_n, m_n, stride_pb, stride_pt, HAS_POS)
    o_k = _row_offsets(i_b, i_h, bos, o_n, stride_kb, stride_kt, stride_kh)
    b_k = _load_rotated(
        k_ptr, o_k, m_n, b_pos_n, b_freq, 1.0, ROTARY, DOT_PRECISION, BLOCK_N, D
    )  # [BLOCK_N, D]
    o_v = _row_offsets(i_b, i_h, bos, o_n, stride_vb, stride_vt, stride_vh)
    b_v = _load_tile(v_ptr, o_v, m_n, D)  # [BLOCK_N, D]

    b_dk = tl.zeros((BLOCK_N, D), dtype=tl.float32)
    b_dv = tl.zeros((BLOCK_N, D), dtype=tl.float32)
    for start_m in range(0, n_tok, BLOCK_M):
        o_m = start_m + tl.arange(0, BLOCK_M)  # [BLOCK_M]
        m_m = o_m < n_tok
        b_pos_m = _positions(pos_ptr, i_b, bos, o_m, m_m, stride_pb, stride_pt, HAS_POS)
        o_q = _row_offsets(i_b, i_h, bos, o_m, stride_qb, stride_qt, stride_qh)
        b_q = _load_rotated(
            q_ptr, o_q, m_m, b_pos_m, b_freq, qk_scale, ROTARY, DOT_PRECISION, BLOCK_M, D
        )  # [BLOCK_M, D]
        o_do = _row_offsets(i_b, i_h, bos, o_m, stride_dob, stride_dot, stride_doh)
        b_do = _load_tile(do_ptr, o_do, m_m, D)  # [BLOCK_M, D]
        o_stat = i_b * stride_lb + i_h * stride_lh + bos + o_m
        b_lse, b_delta = _load_row_stats(lse_ptr, delta_ptr, o_stat, m_m)  # [BLOCK_M] each

        b_st = _dot(b_k, tl.trans(b_q), DOT_PRECISION)  # [BLOCK_N, BLOCK_M]
        b_pt = tl.math.exp2(b_st - b_lse[None, :])
        b_pt = tl.where(m_keep[:, None], b_pt, 0.0)  # [BLOCK_N, BLOCK_M]
        b_dpt = _dot(b_v, tl.trans(b_do), DOT_PRECISION)  # [BLOCK_N, BLOCK_M]
        b_dst = b_pt * (b_dpt - b_delta[None, :])  # [BLOCK_N, BLOCK_M]
        b_pt = _cast(b_pt, q_ptr.dtype.element_ty, DOT_PRECISION)
        b_dv += _dot(b_pt, b_do, DOT_PRECISION)  # [BLOCK_N, D]
        b_dst = _cast(b_dst, q_ptr.dtype.element_ty, DOT_PRECISION)
        b_dk += _dot(b_dst, b_q, DOT_PRECISION)  # [BLOCK_N, D]

    # b_q carried scale * log2(e): undo the log2(e) to get d(rotated k).
    b_dk = b_dk / _LOG2E
    if ROTARY:
        b_dk = _unrotate(b_dk, b_pos_n, b_freq, BLOCK_N, D)
    o_dk = _row_offsets(i_b, i_h, bos, o_n, stride_dkb, stride_dkt, stride_dkh)
    _store_tile(dk_ptr, o_dk, m_n, b_dk, D, DOT_PRECISION)
    _store_tile(dv_ptr, o_dk, m_n, b_dv, D, DOT_PRECISION)  # dv has dk's layout


@triton.autotune(key=["SEQ_BUCKET", "D", "ROTARY", "HAS_MASK"], **DQ_TUNING)
@triton.jit
def _rotary_attention_bwd_dq_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    do_ptr,
    lse_ptr,
    delta_ptr,
    dq_ptr,
    freq_ptr,
    pos_ptr,
    mask_ptr,
    cu_ptr,
    stride_qb,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_dob,
    stride_dot,
    stride_doh,
    stride_dqb,
    stride_dqt,
    stride_dqh,
    stride_lb,
    stride_lh,
    stride_pb,
    stride_pt,
    stride_mb,
    stride_mt,
    seqlen,
    qk_scale,
    scale,
    SEQ_BUCKET,
    D: tl.constexpr,
    ROTARY: tl.constexpr,
    HAS_POS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    i_m = tl.program_id(0)
    i_h = tl.program_id(1).to(tl.int64)
    i_b = tl.program_id(2).to(tl.int64)
    bos, n_tok = _seq_bounds(cu_ptr, i_b, seqlen, IS_VARLEN)
    if i_m * BLOCK_M >= n_tok:
        return
    b_freq = _rotary_freq(freq_ptr, ROTARY, D)  # [D/2]

    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    m_m = o_m < n_tok
    b_pos_m = _positions(pos_ptr, i_b, bos, o_m, m_m, stride_pb, stride_pt, HAS_POS)
    o_q = _row_offsets(i_b, i_h, bos, o_m, stride_qb, stride_qt, stride_qh)
    b_q = _load_rotated(
        q_ptr, o_q, m_m, b_pos_m, b_freq, qk_scale, ROTARY, DOT_PRECISION, BLOCK_M, D
    )  # [BLOCK_M, D]
    o_do = _row_offsets(i_b, i_h, bos, o_m, stride_dob, stride_dot, stride_doh)
    b_do = _load_tile(do_ptr, o_do, m_m, D)  # [BLOCK_M, D]
    o_stat = i_b * stride_lb + i_h * stride_lh + bos + o_m
    b_lse, b_delta = _load_row_stats(lse_ptr, delta_ptr, o_stat, m_m)  # [BLOCK_M] each

    b_dq = tl.zeros((BLOCK_M, D), dtype=tl.float32)
    for start_n in range(0, n_tok, BLOCK_N):
        o_n = start_n + tl.arange(0, BLOCK_N)  # [BLOCK_N]
        m_n = o_n < n_tok
        m_keep = _key_keep(mask_ptr, i_b, o_n, m_n, stride_mb, stride_mt, HAS_MASK)
        b_pos_n = _positions(pos_ptr, i_b, bos, o_n, m_n, stride_pb, stride_pt, HAS_POS)
        o_k = _row_offsets(i_b, i_h, bos, o_n, stride_kb, stride_kt, stride_kh)
        b_k = _load_rotated(
            k_ptr, o_k, m_n, b_pos_n, b_freq, 1.0, ROTARY, DOT_PRECISION, BLOCK_N, D
        )  # [BLOCK_N, D]
        o_v = _row_offsets(i_b, i_h, bos, o_n, stride_vb, stride_vt, stride_vh)
        b_v = _load_tile(v_ptr, o_v, m_n, D)  # [BLOCK_N, D]

        b_s = _dot(b_q, tl.trans(b_k), DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
        b_p = tl.math.exp2(b_s - b_lse[:, None])
        b_p = tl.where(m_keep[None, :], b_p, 0.0)  # [BLOCK_M, BLOCK_N]
        b_dp = _dot(b_do, tl.trans(b_v), DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
        b_ds = _cast(b_p * (b_dp - b_delta[:, None]), q_ptr.dtype.element_ty, DOT_PRECISION)
        b_dq += _dot(b_ds, b_k, DOT_PRECISION)  # [BLOCK_M, D]

    b_dq = b_dq * scale
    if ROTARY:
        b_dq = _unrotate(b_dq, b_pos_m, b_freq, BLOCK_M, D)
    o_dq = _row_offsets(i_b, i_h, bos, o_m, stride_dqb, stride_dqt, stride_dqh)
    _store_tile(dq_ptr, o_dq, m_m, b_dq, D, DOT_PRECISION)


def rotary_attention_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    *,
    inv_freq: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward kernels. Inputs as for `rotary_attention_fwd` plus its (out, lse) and
    the upstream gradient do (out's shape). Returns dq, dk, dv (contiguous, in q's dtype)."""
    q, k, v, do = (head_dim_contiguous(t) for t in (q, k, v, do))
    layout = _Layout(q, cu_seqlens, max_seqlen)
    dq = poison_empty(*q.shape, dtype=q.dtype, device=q.device)
    dk = poison_empty(*q.shape, dtype=q.dtype, device=q.device)
    dv = poison_empty(*q.shape, dtype=q.dtype, device=q.device)
    if q.numel() == 0 or layout.max_seqlen == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    pos, (spb, spt), mask, (smb, smt) = side_inputs(position_ids, key_padding_mask, layout)
    delta = layout.new_stats(q.device)
    slb, slh = layout.stats_strides(lse)
    block_pre = 16 if interpreting() else 64
    _rotary_attention_bwd_preprocess_kernel[
        (triton.cdiv(layout.max_seqlen, block_pre), layout.H, layout.B)
    ](
        out,
        do,
        delta,
        cu_seqlens,
        *layout.strides(out),
        *layout.strides(do),
        slb,
        slh,
        layout.seqlen,
        D=layout.D,
        IS_VARLEN=layout.varlen,
        BLOCK_M=block_pre,
    )
    common = dict(
        D=layout.D,
        ROTARY=inv_freq is not None,
        HAS_POS=pos is not None,
        HAS_MASK=mask is not None,
        IS_VARLEN=layout.varlen,
        DOT_PRECISION=dot_precision(q.dtype),
    )
    bucket = seqlen_bucket(layout.max_seqlen)
    qkv_strides = (*layout.strides(q), *layout.strides(k), *layout.strides(v), *layout.strides(do))
    side_strides = (slb, slh, spb, spt, smb, smt)
    _rotary_attention_bwd_dkdv_kernel[layout.grid("BLOCK_N")](
        q,
        k,
        v,
        do,
        lse,
        delta,
        dk,
        dv,
        inv_freq,
        pos,
        mask,
        cu_seqlens,
        *qkv_strides,
        *layout.strides(dk),
        *side_strides,
        layout.seqlen,
        float(scale) * LOG2E,
        bucket,
        **common,
    )
    _rotary_attention_bwd_dq_kernel[layout.grid("BLOCK_M")](
        q,
        k,
        v,
        do,
        lse,
        delta,
        dq,
        inv_freq,
        pos,
        mask,
        cu_seqlens,
        *qkv_strides,
        *layout.strides(dq),
        *side_strides,
        layout.seqlen,
        float(scale) * LOG2E,
        float(scale),
        bucket,
        **common,
    )
    return dq, dk, dv
