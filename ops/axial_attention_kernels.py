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
- Backward (`axial_attention_bwd.py`): dk/dv by key block, dq by query block, dbias by a
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

from esmkernels.ops._custom_ops import define
from esmkernels.ops._dispatch import poison_empty, resolve_backend
from esmkernels.ops._tuning import dot, tuning
from esmkernels.reference.esmfold import trunk_functional as ref

LOG2E = 1.4426950408889634

# ------------------------------------------------------------------------------------------------
# Autotune configs, keyed on (N rounded up to a power of two, BLOCK_D). One small config under
# the interpreter (`esmkernels.ops._tuning`: bf16 / fp16 and fp32 lists, all spill-free).
# ------------------------------------------------------------------------------------------------


# (BLOCK_M, BLOCK_N, num_warps, num_stages). Few configs: each costs a compile on first use.
FWD_TUNING = tuning(
    lowp=[(64, 64, 4, 3), (128, 64, 8, 3), (128, 32, 4, 2), (64, 32, 4, 2)],
    fp32=[(64, 32, 4, 2), (128, 64, 8, 3)],
)
DKDV_TUNING = tuning(
    lowp=[(64, 64, 4, 2), (32, 64, 4, 2), (64, 32, 4, 2), (64, 64, 8, 2)],
    fp32=[(32, 64, 4, 2), (32, 64, 8, 2)],
)
DQ_TUNING = tuning(
    lowp=[(64, 64, 4, 2), (32, 64, 4, 2), (64, 32, 4, 2), (64, 64, 8, 2)],
    fp32=[(64, 32, 4, 2), (64, 64, 8, 2)],
)
DBIAS_TUNING = tuning(
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


# ------------------------------------------------------------------------------------------------
# Row blocks (forward and backward)
# ------------------------------------------------------------------------------------------------


def _row_blocks(R: int, chunk_size: int | None) -> list[slice]:
    step = R if chunk_size is None or chunk_size >= R else chunk_size
    return [slice(r0, min(r0 + step, R)) for r0 in range(0, R, max(step, 1))]


def _rows(rows: slice, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """Row-block views (dim 1) of each tensor; None stays None."""
    return [None if t is None else t[:, rows] for t in tensors]


def axial_attention_fwd_rows(q, k, v, bias, mask, gate, scale, chunk_size, keep_ungated):
    """Forward over row blocks of `chunk_size` into one output: (out, lse, ungated or None)."""
    B, R, N, H, D = q.shape
    out = empty_like_poisoned(q)
    lse = poison_empty(B, R, H, N, dtype=torch.float32, device=q.device)
    ungated = empty_like_poisoned(q) if gate is not None and keep_ungated else None
    for rows in _row_blocks(R, chunk_size):
        q_, k_, v_, m_, g_, o_, l_, u_ = _rows(rows, q, k, v, mask, gate, out, lse, ungated)
        axial_attention_fwd(q_, k_, v_, bias, m_, g_, scale, out=o_, lse=l_, ungated=u_)
    return out, lse, ungated


def axial_attention_bwd_rows(dout, q, k, v, bias, mask, gate, ungated, lse, scale, chunk_size,
                             need_dbias):  # fmt: skip
    """Backward over row blocks of `chunk_size`: (dq, dk, dv, dgate or None, dbias or None).

    `ungated` is the forward's output before the gate (its output when there is no gate)."""
    # Imported here: the backward module imports this one's kernels and helpers.
    from esmkernels.ops.axial_attention_bwd import (
        axial_attention_bwd,
        axial_attention_bwd_preprocess,
    )

    dq, dk, dv = empty_like_poisoned(q), empty_like_poisoned(k), empty_like_poisoned(v)
    dgate = empty_like_poisoned(gate) if gate is not None else None
    dbias = None
    for rows in _row_blocks(q.shape[1], chunk_size):
        q_, k_, v_, m_, g_, u_, l_, do_ = _rows(rows, q, k, v, mask, gate, ungated, lse, dout)
        dq_, dk_, dv_, dg_ = _rows(rows, dq, dk, dv, dgate)
        dou, _, delta = axial_attention_bwd_preprocess(do_, u_, g_, dgate=dg_)
        *_, db = axial_attention_bwd(
            dou, q_, k_, v_, bias, m_, l_, delta, scale,
            need_dbias=need_dbias, dq=dq_, dk=dk_, dv=dv_,
        )  # fmt: skip
        if need_dbias:
            dbias = db if dbias is None else dbias + db
    if dbias is not None:
        dbias = dbias.to(bias.dtype)
    return dq, dk, dv, dgate, dbias


# ------------------------------------------------------------------------------------------------
# Custom ops (torch.library, see esmkernels.ops._custom_ops): fake implementations and autograd.
# The forward keeps the base-2 log-sum-exp [B, R, H, N] fp32 and, with a gate, the ungated
# output for the backward; the fakes show both. Absent outputs are empty tensors (custom ops
# cannot return None).
# ------------------------------------------------------------------------------------------------


def _fwd_fake(q, k, v, bias, mask, gate, scale, chunk_size, keep_ungated):
    B, R, N, H, _ = q.shape
    lse = q.new_empty((B, R, H, N), dtype=torch.float32)
    ungated = torch.empty_like(q) if gate is not None and keep_ungated else q.new_empty(0)
    return torch.empty_like(q), lse, ungated


def _bwd_fake(dout, q, k, v, bias, mask, gate, ungated, lse, scale, chunk_size, need_dbias):
    dgate = q.new_empty(0) if gate is None else torch.empty_like(gate)
    dbias = bias.new_empty(bias.shape) if need_dbias else q.new_empty(0)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dgate, dbias


@define("axial_attention_bwd", fake=_bwd_fake)
def _axial_attention_bwd_op(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None,
    gate: torch.Tensor | None,
    ungated: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    chunk_size: int | None,
    need_dbias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv, dgate, dbias); dgate / dbias empty when there is no gate / no dbias wanted."""
    dq, dk, dv, dgate, dbias = axial_attention_bwd_rows(
        dout, q, k, v, bias, mask, gate, ungated, lse, scale, chunk_size, need_dbias
    )
    dgate = q.new_empty(0) if dgate is None else dgate  # distinct empties: outputs may not alias
    return dq, dk, dv, dgate, q.new_empty(0) if dbias is None else dbias


def _setup_context(ctx, inputs, output):
    q, k, v, bias, mask, gate, scale, chunk_size, _ = inputs
    out, lse, ungated = output
    ctx.save_for_backward(q, k, v, bias, mask, gate, out if gate is None else ungated, lse)
    ctx.scale, ctx.chunk_size = scale, chunk_size
    ctx.mark_non_differentiable(lse, ungated)


def _backward(ctx, dout, _dlse, _dungated):
    q, k, v, bias, mask, gate, ungated, lse = ctx.saved_tensors
    need_dbias = bias is not None and ctx.needs_input_grad[3]
    dq, dk, dv, dgate, dbias = _axial_attention_bwd_op(
        dout, q, k, v, bias, mask, gate, ungated, lse, ctx.scale, ctx.chunk_size, need_dbias
    )
    dgate = dgate if gate is not None else None
    dbias = dbias if need_dbias else None
    return dq, dk, dv, dbias, None, dgate, None, None, None


@define("axial_attention_fwd", fake=_fwd_fake, backward=_backward, setup_context=_setup_context)
def _axial_attention_fwd_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None,
    gate: torch.Tensor | None,
    scale: float,
    chunk_size: int | None,
    keep_ungated: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, lse, ungated or empty): `axial_attention_fwd_rows`; differentiable in q, k, v,
    bias and gate (the backward needs keep_ungated=True when there is a gate)."""
    out, lse, ungated = axial_attention_fwd_rows(
        q, k, v, bias, mask, gate, scale, chunk_size, keep_ungated
    )
    return out, lse, q.new_empty(0) if ungated is None else ungated


# ------------------------------------------------------------------------------------------------
# Public function
# ------------------------------------------------------------------------------------------------

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 128


def _check_args(q, k, v, bias, mask, gate, chunk_size) -> None:
    if not isinstance(q, torch.Tensor) or q.dim() != 5:
        raise ValueError(
            f"axial_attention: q must be a [B, R, N, H, D] tensor, got {getattr(q, 'shape', q)!r}"
        )
    B, R, N, H, D = q.shape
    for name, t in (("k", k), ("v", v), ("gate", gate)):
        if t is not None and t.shape != q.shape:
            raise ValueError(
                f"axial_attention: {name} shape {tuple(t.shape)} != q shape {tuple(q.shape)}"
            )
    for name, t in (("q", q), ("k", k), ("v", v), ("gate", gate), ("bias", bias)):
        if t is not None and t.dtype not in _DTYPES:
            raise TypeError(f"axial_attention: {name} dtype {t.dtype} is not one of {_DTYPES}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"axial_attention: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if bias is not None and tuple(bias.shape) != (B, H, N, N):
        raise ValueError(f"axial_attention: bias must be {(B, H, N, N)}, got {tuple(bias.shape)}")
    if mask is not None and tuple(mask.shape) != (B, R, N):
        raise ValueError(f"axial_attention: mask must be {(B, R, N)}, got {tuple(mask.shape)}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(
            f"axial_attention: chunk_size must be a positive int or None, got {chunk_size!r}"
        )
    devices = {t.device for t in (q, k, v, bias, mask, gate) if t is not None}
    if len(devices) > 1:
        raise ValueError(
            f"axial_attention: tensors on different devices: {sorted(map(str, devices))}"
        )


def axial_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    gate: torch.Tensor | None = None,
    scale: float | None = None,
    chunk_size: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Gated multi-head attention over N within each of R rows, bias shared by all rows.

    Triangle attention around the starting node: q, k, v, gate are the pair tensor's projections
    viewed as [B, R=L, N=L, H, D]; around the ending node, the same on `x.transpose(1, 2)` views
    (no copy: the kernels read through strides). ESMFold's sequence attention is R = 1.

    Args:
        q, k, v: [B, R, N, H, D] fp32 / bf16 / fp16 (same dtype), any strides; D <= 128.
        bias: [B, H, N, N] additive logits bias shared by all rows (any float dtype, any
            strides, stride 0 allowed), or None. Differentiable.
        mask: [B, R, N] key mask per row, 1 = keep (bool or numeric, nonzero = keep). A query
            whose keys are all masked gives zeros (and zero gradients), never NaN.
        gate: [B, R, N, H, D] gate logits: out *= sigmoid(gate), or None.
        scale: logits scale on q . k; default D ** -0.5.
        chunk_size: process rows in blocks of this many (bounds the reference's logits memory;
            the kernels never hold more than a tile of them).
        backend: "auto" | "triton" | "torch" (see `esmkernels.ops._dispatch`).

    Returns:
        [B, R, N, H, D] in q.dtype, with q's strides when q is dense. linear_o is the caller's.

    Example:
        >>> q, k, v, g = (torch.randn(1, 6, 6, 4, 32) for _ in range(4))
        >>> out = axial_attention(q, k, v, bias=torch.randn(1, 4, 6, 6), gate=g)
        >>> out.shape
        torch.Size([1, 6, 6, 4, 32])
    """
    _check_args(q, k, v, bias, mask, gate, chunk_size)
    D = q.shape[-1]
    scale = D**-0.5 if scale is None else float(scale)
    chosen = resolve_backend(backend, q, k, v, bias, mask, gate, op="axial_attention")
    if chosen == "torch":
        return ref.axial_attention(
            q, k, v, bias=bias, mask=mask, gate=gate, scale=scale, chunk_size=chunk_size
        )
    if D > MAX_HEAD_DIM:
        raise ValueError(
            f"axial_attention: head width D={D} > {MAX_HEAD_DIM} is not supported by the kernel"
        )
    inputs = (q, k, v, bias, gate)
    # Inference keeps no ungated output for a backward.
    training = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    return _axial_attention_fwd_op(q, k, v, bias, mask, gate, scale, chunk_size, training)[0]
