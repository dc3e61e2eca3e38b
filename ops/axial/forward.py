"""Flash-style axial (triangle) attention with a bias shared across rows, sigmoid gate and key mask.

Math (the spec is `esmkernels.reference.esmfold.trunk_functional.axial_attention`): q, k, v, gate
are [B, R, N, H, D] with ANY strides; within each row r,

    s[n, m]  = scale * q[n] . k[m] + bias[b, h, n, m]         (-inf where mask[b, r, m] == 0)
    out[n]   = sigmoid(gate[n]) * sum_m softmax_m(s)[n, m] * v[m]

Grid mapping (forward and the dq / dk-dv backward kernels): program (r, query-or-key block,
b * H + h); r is the fastest-varying grid axis, so the programs resident at the same time work
on the same bias tiles of one head and the [N, N] bias, read once per row (R * N^2 * H reads in
all, the dominant traffic at D = 32), is served from L2. Grid axes 1 and 2 are bounded by
65,535 (N / BLOCK and B * H); axis 0 (R) is not.

Design decisions:
- Online softmax in fp32, in base 2 (exp2; the scale folded with log2(e)); the log-sum-exp per
  query is saved (fp32, base 2, [B, R, H, N]) for the backward. A query whose keys are all
  masked has no finite logit: it gets zeros and lse = +inf, so the backward's
  p = exp2(s - lse) is exactly 0 (never inf - inf = NaN).
- No [B, R, H, N, N] tensor is ever materialised: extra memory is lse plus, when a gate is
  present and gradients are needed, the ungated output (saved so dgate = dout * o * s'(g) needs
  no division by a possibly-underflowing sigmoid).
- Offsets are int64 everywhere (program ids and aranges cast before they meet a stride): the
  ending-node view has stride_n = L * H * D, so n * stride_n passes 2^31 near L = 4,096
  (cuEquivariance and trifast overflow int32 here). `test_kernel_offsets_are_int64` checks
  every tt.addptr offset in the TTIR with all strides typed i32.
- The output projection (linear_o) stays with the caller, as a cuBLAS matmul: fusing a
  [H * D, C] projection would need all heads of a query in one program (a different grid, and
  H times fewer programs), while the out tensor is written once either way. Outputs are
  allocated with q's strides (`empty_like`), so an ending-node caller gets back a tensor whose
  transpose is contiguous and feeds linear_o without a copy.
- fp32 inputs use 3xTF32 dots (fp32-level accuracy on tensor cores), bf16 / fp16 use tensor
  cores with fp32 accumulation; p is rounded to v's dtype for the p @ v product, as
  flash-attention does.
- Backward (`esmkernels.ops.axial.backward`): dk/dv by key block, dq by query block, dbias by a
  deterministic reduction over rows in its own kernel (no atomics). See that module.

Verified on CPU only: under the Triton interpreter (numerics, all flags and layouts) and by
compiling every autotune config for sm_90 through ptxas (no register spills, bf16 and fp32).

Sources: Dao, FlashAttention-2 (2023); openfold `model/primitives.py` Attention;
trifast `src/trifast/triton.py` (bias-shared triangle attention, program ordering).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from esmkernels.ops._dispatch import poison_empty
from esmkernels.ops._tuning import dot, tuning

LOG2E = 1.4426950408889634

# ------------------------------------------------------------------------------------------------
# Autotune configs, keyed on (N rounded up to a power of two, BLOCK_D). One small config under
# the interpreter (`esmkernels.ops._tuning`: bf16 / fp16 and fp32 lists, all spill-free).
# ------------------------------------------------------------------------------------------------


# (BLOCK_M, BLOCK_N, num_warps, num_stages). Few configs: each costs a compile on first use.
FWD_TUNING = tuning(
    kernel="_axial_attn_fwd_kernel",
    lowp=[(64, 64, 4, 3), (128, 64, 8, 3), (128, 32, 4, 2), (64, 32, 4, 2)],
    fp32=[(64, 32, 4, 2), (128, 64, 8, 3)],
)
DKDV_TUNING = tuning(
    kernel="_axial_attn_bwd_dkdv_kernel",
    lowp=[(64, 64, 4, 2), (32, 64, 4, 2), (64, 32, 4, 2), (64, 64, 8, 2)],
    fp32=[(32, 64, 4, 2), (32, 64, 8, 2)],
)
DQ_TUNING = tuning(
    kernel="_axial_attn_bwd_dq_kernel",
    lowp=[(64, 64, 4, 2), (32, 64, 4, 2), (64, 32, 4, 2), (64, 64, 8, 2)],
    fp32=[(64, 32, 4, 2), (64, 64, 8, 2)],
)
DBIAS_TUNING = tuning(
    kernel="_axial_attn_bwd_dbias_kernel",
    lowp=[(64, 64, 4, 2), (32, 64, 4, 2), (64, 32, 4, 2), (64, 64, 8, 2)],
    fp32=[(32, 64, 8, 2), (64, 32, 8, 2)],
)
AUTOTUNE_KEY = ["N_KEY", "BLOCK_D"]


def round_key(n: int) -> int:
    """Autotune bucket: n rounded up to a power of two (at least 16)."""
    return max(16, triton.next_power_of_2(int(n)))


def block_d(d: int) -> int:
    """Head width padded for tl.dot (needs >= 16)."""
    return max(16, triton.next_power_of_2(int(d)))


# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------


@triton.jit
def _load_rows(ptr, base, o_rows, stride_rows, o_d, stride_d, m_rows, m_d):
    """[len(o_rows), BLOCK_D] tile of one (b, r, h) slice; zeros outside the masks."""
    p = ptr + base + o_rows[:, None] * stride_rows + o_d[None, :] * stride_d
    return tl.load(p, mask=m_rows[:, None] & m_d[None, :], other=0.0)


@triton.jit
def _bias_tile(bias_ptr, base, o_m, o_n, stride_q, stride_k, m_m, m_n):
    """[BM, BN] bias tile in fp32, pre-multiplied by log2(e) (the kernels work in base 2)."""
    p = bias_ptr + base + o_m[:, None] * stride_q + o_n[None, :] * stride_k
    b = tl.load(p, mask=m_m[:, None] & m_n[None, :], other=0.0)
    return b.to(tl.float32) * 1.4426950408889634


@triton.jit
def _key_keep(mask_ptr, base, o_n, stride_n, m_n, HAS_MASK: tl.constexpr):
    """[BN] keys in range and kept by the mask (1 = keep)."""
    keep = m_n
    if HAS_MASK:
        keep = keep & (tl.load(mask_ptr + base + o_n * stride_n, mask=m_n, other=0) != 0)
    return keep


@triton.autotune(key=AUTOTUNE_KEY, **FWD_TUNING)
@triton.jit
def _axial_attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, bias_ptr, mask_ptr, gate_ptr, o_ptr, ou_ptr, lse_ptr,
    stride_qb, stride_qr, stride_qn, stride_qh, stride_qd,
    stride_kb, stride_kr, stride_kn, stride_kh, stride_kd,
    stride_vb, stride_vr, stride_vn, stride_vh, stride_vd,
    stride_gb, stride_gr, stride_gn, stride_gh, stride_gd,
    stride_ob, stride_or, stride_on, stride_oh, stride_od,
    stride_ub, stride_ur, stride_un, stride_uh, stride_ud,
    stride_biasb, stride_biash, stride_biasq, stride_biask,
    stride_maskb, stride_maskr, stride_maskn,
    stride_lb, stride_lr, stride_lh,
    H, N, D, qk_scale, N_KEY,
    HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, HAS_GATE: tl.constexpr,
    STORE_UNGATED: tl.constexpr,
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
    k_base = i_b * stride_kb + i_r * stride_kr + i_h * stride_kh
    v_base = i_b * stride_vb + i_r * stride_vr + i_h * stride_vh
    bias_base = i_b * stride_biasb + i_h * stride_biash
    mask_base = i_b * stride_maskb + i_r * stride_maskr
    b_q = _load_rows(q_ptr, q_base, o_m, stride_qn, o_d, stride_qd, m_m, m_d)  # [BM, BD]

    b_mi = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max (base 2)
    b_li = tl.zeros([BLOCK_M], tl.float32)  # running sum of exp2
    b_acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, N, BLOCK_N):
        o_n = start_n + tl.arange(0, BLOCK_N).to(tl.int64)
        m_n = o_n < N
        b_k = _load_rows(k_ptr, k_base, o_n, stride_kn, o_d, stride_kd, m_n, m_d)  # [BN, BD]
        b_v = _load_rows(v_ptr, v_base, o_n, stride_vn, o_d, stride_vd, m_n, m_d)  # [BN, BD]
        b_s = dot(b_q, tl.trans(b_k)) * qk_scale  # [BM, BN]
        if HAS_BIAS:
            b_s += _bias_tile(bias_ptr, bias_base, o_m, o_n, stride_biasq, stride_biask, m_m, m_n)
        keep = _key_keep(mask_ptr, mask_base, o_n, stride_maskn, m_n, HAS_MASK)  # [BN]
        b_s = tl.where(keep[None, :], b_s, float("-inf"))
        b_mnew = tl.maximum(b_mi, tl.max(b_s, 1))
        # All keys so far masked: subtract 0 instead of -inf so exp2 gives 0, not NaN.
        b_msafe = tl.where(b_mnew == float("-inf"), 0.0, b_mnew)
        b_p = tl.exp2(b_s - b_msafe[:, None])  # [BM, BN]
        b_alpha = tl.exp2(b_mi - b_msafe)
        b_li = b_li * b_alpha + tl.sum(b_p, 1)
        b_acc = b_acc * b_alpha[:, None] + dot(b_p.to(b_v.dtype), b_v)
        b_mi = b_mnew

    b_empty = b_li == 0.0  # every key masked: zeros out, lse = +inf
    b_lsafe = tl.where(b_empty, 1.0, b_li)
    b_o = b_acc / b_lsafe[:, None]  # [BM, BD]
    b_lse = tl.where(b_empty, float("inf"), b_mi + tl.log2(b_lsafe))
    tl.store(lse_ptr + i_b * stride_lb + i_r * stride_lr + i_h * stride_lh + o_m, b_lse, mask=m_m)
    m_md = m_m[:, None] & m_d[None, :]
    if STORE_UNGATED:
        p_u = (
            ou_ptr + i_b * stride_ub + i_r * stride_ur + i_h * stride_uh
            + o_m[:, None] * stride_un + o_d[None, :] * stride_ud
        )  # fmt: skip
        tl.store(p_u, b_o.to(ou_ptr.dtype.element_ty), mask=m_md)
    if HAS_GATE:
        g_base = i_b * stride_gb + i_r * stride_gr + i_h * stride_gh
        b_g = _load_rows(gate_ptr, g_base, o_m, stride_gn, o_d, stride_gd, m_m, m_d)  # [BM, BD]
        b_o = b_o * tl.sigmoid(b_g.to(tl.float32))
    p_o = (
        o_ptr + i_b * stride_ob + i_r * stride_or + i_h * stride_oh
        + o_m[:, None] * stride_on + o_d[None, :] * stride_od
    )  # fmt: skip
    tl.store(p_o, b_o.to(o_ptr.dtype.element_ty), mask=m_md)


# ------------------------------------------------------------------------------------------------
# Launchers
# ------------------------------------------------------------------------------------------------


def mask_as_uint8(mask: torch.Tensor | None) -> torch.Tensor | None:
    """Key mask as a uint8 tensor the kernels read (bool is reinterpreted, no copy)."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return mask.view(torch.uint8)
    return (mask != 0).to(torch.uint8)


def empty_like_poisoned(t: torch.Tensor) -> torch.Tensor:
    """`torch.empty_like` (keeps t's dense strides), NaN-filled under ESMKERNELS_DEBUG_POISON=1."""
    out = torch.empty_like(t)
    if os.environ.get("ESMKERNELS_DEBUG_POISON", "0") == "1" and out.is_floating_point():
        out.fill_(float("nan"))
    return out


def _strides(t: torch.Tensor | None, ndim: int) -> tuple[int, ...]:
    return tuple(t.stride()) if t is not None else (0,) * ndim


def axial_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None,
    gate: torch.Tensor | None,
    scale: float,
    *,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    ungated: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Forward launcher. Returns (out [B, R, N, H, D] q.dtype, lse [B, R, H, N] fp32 base-2,
    ungated out or None). `out`, `lse`, `ungated` may be given (e.g. row-chunk views) and are
    written in place; `ungated` is written only when given and a gate is present."""
    B, R, N, H, D = q.shape
    if out is None:
        out = empty_like_poisoned(q)
    if lse is None:
        lse = poison_empty(B, R, H, N, dtype=torch.float32, device=q.device)
    store_u = ungated is not None and gate is not None
    mask_u8 = mask_as_uint8(mask)
    if B * R * N == 0:
        return out, lse, ungated
    grid = lambda meta: (R, triton.cdiv(N, meta["BLOCK_M"]), B * H)
    _axial_attn_fwd_kernel[grid](
        q, k, v, bias, mask_u8, gate, out, ungated if store_u else out, lse,
        *q.stride(), *k.stride(), *v.stride(), *_strides(gate, 5), *out.stride(),
        *(ungated.stride() if store_u else out.stride()),
        *_strides(bias, 4), *_strides(mask_u8, 3), *lse.stride()[:3],
        H, N, D, scale * LOG2E, round_key(N),
        HAS_BIAS=bias is not None, HAS_MASK=mask is not None, HAS_GATE=gate is not None,
        STORE_UNGATED=store_u, BLOCK_D=block_d(D),
    )  # fmt: skip
    return out, lse, ungated
