"""Fused triangle multiplicative update (AlphaFold 2 Algorithms 11 / 12, ESMFold's tri_mul_out /
tri_mul_in). The spec is `esmkernels.reference.esmfold.trunk_functional.triangle_multiplicative_update`:

    zn = LN_in(z);  a = m * sigmoid(zn Wag^T + bag) * (zn Wap^T + bap);  b likewise
    outgoing: x[i, j] = sum_k a[i, k] b[j, k]        incoming: x[i, j] = sum_k a[k, i] b[k, j]
    update = sigmoid(zn Wg^T + bg) * (LN_out(x) Wz^T + bz)

Three kernels (forward):
1. `_trimul_proj_kernel`, program (block of BLOCK_P pixels of z, block of BLOCK_H hidden
   channels, b): LayerNorm statistics of z [BLOCK_P, C] (read through its strides) in fp32,
   then the four projections as tl.dot over C in BLOCK_K slices (z re-read and normalised per
   slice, so only [BLOCK_P, BLOCK_K] x [BLOCK_K, BLOCK_H] operands are live: the whole-C
   version spilled registers), gates and mask; a and b are stored channel-major,
   [B, Ch, L, L] in z.dtype, so each hidden channel is a contiguous L x L matrix
   (k-contiguous rows for the outgoing contraction).
2. `_trimul_contract_kernel`, program (tile [BLOCK_I, BLOCK_J] of x, hidden channel, b): a
   batched matmul over k with fp32 accumulation, tiles swizzled in groups for L2 reuse. One
   kernel for both directions: the OUTGOING constexpr only swaps which of a tile's two indices
   is contiguous (outgoing reads a[i, k] and b[j, k] k-contiguous; incoming reads a[k, i] and
   b[k, j] i/j-contiguous and transposes in shared memory). Writing a transposed layout from
   kernel 1 instead would make its stores strided by L (uncoalesced), so the transpose lives
   here, where it is free. x is stored [B, Ch, L, L] in z.dtype (rounded like the reference),
   fp32 when z is fp16 (`contraction_dtype`: x overflows fp16 on real proteins).
3. `_trimul_out_kernel`, program (block of BLOCK_P pixels, b): loads x [BLOCK_P, Ch] (pixel-
   contiguous per channel), LN_out, the output projection, and recomputes LN_in(z) and the
   output gate from z rather than saving a [B, L, L, C] gate tensor; writes [B, L, L, C].

Precision: fp32 accumulation everywhere; fp32 inputs use 3xTF32 dots (fp32-level accuracy on
tensor cores), bf16 / fp16 plain tensor-core dots. Autotune lists differ per dtype; every
config compiles for sm_90 without register spills (checked on CPU through ptxas).

Memory: a, b and x are [B, Ch, L, L] in z.dtype: 3 |z| extra when Ch = C. `chunk_size` counts
rows of the pair, as for every op; the kernels derive their own tiling from it: kernels 1-2
run on `channel_slice(chunk_size, L, Ch)` hidden channels at a time (a and b shrink by that
fraction; x stays whole, LN_out needs every channel). int64 offsets throughout.

Backward: `esmkernels.ops.trimul.backward` (a recompute, not a kernel).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from esmkernels.core.memory import host_empty
from esmkernels.ops._dispatch import interpreting, poison_empty
from esmkernels.ops._tuning import dot, tuning
from esmkernels.reference.esmfold import trunk_functional as ref

# ------------------------------------------------------------------------------------------------
# Autotune configs, keyed on sizes rounded up to powers of two; one small config interpreted.
# ------------------------------------------------------------------------------------------------


def _cfg(names, interpreted):
    """Config maker for `tuning`: tuples of (*block sizes in `names` order, warps, stages)."""

    def make(choices):
        if interpreting():
            return [triton.Config(interpreted, num_warps=1, num_stages=1)]
        return [
            triton.Config(dict(zip(names, c[:-2])), num_warps=c[-2], num_stages=c[-1])
            for c in choices
        ]

    return make


# Interpreted: blocks smaller than a GPU allows (tl.dot wants >= 16) so tiny test shapes cross
# tile boundaries (several i / j tiles, several k steps, partial tiles). GPU: few configs (each
# costs a compile on first use), bf16 / fp16 and fp32 lists (see `tuning`), all spill-free.
PROJ_TUNING = tuning(
    kernel="_trimul_proj_kernel",
    lowp=[(128, 32, 8, 2), (64, 32, 4, 2), (64, 64, 4, 2)],
    fp32=[(64, 64, 8, 2), (64, 32, 8, 2)],
    make=_cfg(("BLOCK_P", "BLOCK_H"), {"BLOCK_P": 32, "BLOCK_H": 16}),
)
CONTRACT_TUNING = tuning(
    kernel="_trimul_contract_kernel",
    lowp=[(128, 128, 32, 8, 3), (128, 64, 32, 4, 4), (128, 64, 32, 8, 3), (64, 64, 32, 4, 4)],
    fp32=[(128, 64, 32, 8, 3), (64, 64, 32, 4, 3), (64, 128, 32, 8, 3)],
    make=_cfg(("BLOCK_I", "BLOCK_J", "BLOCK_K"), {"BLOCK_I": 8, "BLOCK_J": 8, "BLOCK_K": 8}),
)
OUT_TUNING = tuning(
    kernel="_trimul_out_kernel",
    lowp=[(64, 32, 4, 2), (64, 64, 4, 2), (128, 32, 8, 2)],
    fp32=[(64, 16, 4, 2), (32, 64, 8, 3)],
    make=_cfg(("BLOCK_P", "BLOCK_N"), {"BLOCK_P": 32, "BLOCK_N": 16}),
)
KEY = ["L_KEY", "BLOCK_C", "BLOCK_CH"]


def round_key(n: int) -> int:
    """Autotune bucket: n rounded up to a power of two (at least 16)."""
    return max(16, triton.next_power_of_2(int(n)))


# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------


@triton.jit
def _layer_norm_rows(b_x, w_ptr, b_ptr, o_c, m_c, n_c, eps):
    """LayerNorm of each row of b_x [BP, BC] (fp32) over its first n_c columns (masked)."""
    b_mean = tl.sum(b_x, 1) / n_c  # [BP]
    b_xc = tl.where(m_c[None, :], b_x - b_mean[:, None], 0.0)
    b_rstd = 1.0 / tl.sqrt(tl.sum(b_xc * b_xc, 1) / n_c + eps)  # [BP]
    b_w = tl.load(w_ptr + o_c, mask=m_c, other=0.0).to(tl.float32)  # [BC]
    b_b = tl.load(b_ptr + o_c, mask=m_c, other=0.0).to(tl.float32)  # [BC]
    return b_xc * b_rstd[:, None] * b_w[None, :] + b_b[None, :]


@triton.jit
def _linear_tile(b_x, w_ptr, b_ptr, o_in, m_in, o_out, m_out, n_in):
    """b_x [BP, BIN] @ W[o_out, o_in]^T + bias[o_out] -> [BP, BOUT] fp32 (W row-major [out, in])."""
    p_w = w_ptr + o_out[None, :] * n_in + o_in[:, None]
    b_w = tl.load(p_w, mask=m_in[:, None] & m_out[None, :], other=0.0)  # [BIN, BOUT]
    b_y = dot(b_x, b_w.to(b_x.dtype))  # [BP, BOUT]
    b_bias = tl.load(b_ptr + o_out, mask=m_out, other=0.0).to(tl.float32)  # [BOUT]
    return b_y + b_bias[None, :]


@triton.jit
def _load_z_ln(z_ptr, ln_w_ptr, ln_b_ptr, i_b, o_p, m_p, o_c, m_c,
               stride_zb, stride_zi, stride_zj, stride_zc, L, C, eps):  # fmt: skip
    """LN_in(z) for BLOCK_P flattened pixels p = i * L + j: [BP, BC] in z's dtype."""
    o_i = o_p // L
    o_j = o_p % L
    p_z = z_ptr + i_b * stride_zb + o_i[:, None] * stride_zi + o_j[:, None] * stride_zj
    b_z = tl.load(p_z + o_c[None, :] * stride_zc, mask=m_p[:, None] & m_c[None, :], other=0.0)
    b_zn = _layer_norm_rows(b_z.to(tl.float32), ln_w_ptr, ln_b_ptr, o_c, m_c, C, eps)
    return b_zn.to(b_z.dtype)  # [BP, BC]


@triton.jit
def _gated_projection_tile(
    p_z, stride_zc, b_mean, b_rstd, ln_w_ptr, ln_b_ptr, wp_ptr, bp_ptr, wg_ptr, bg_ptr,
    m_p, o_w, m_h, C, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """sigmoid(zn Wg^T + bg) * (zn Wp^T + bp) for a [BP, BH] tile, the contraction over the C
    input channels in BLOCK_K slices: zn is re-normalised per slice from z (L1/L2 hits) so
    only [BP, BLOCK_K] and [BLOCK_K, BH] operands are live, not [BP, C] and [C, BH]."""
    b_accp = tl.zeros([p_z.shape[0], o_w.shape[0]], tl.float32)
    b_accg = tl.zeros([p_z.shape[0], o_w.shape[0]], tl.float32)
    for k0 in range(0, C, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        m_k = o_k < C
        b_z = tl.load(p_z + o_k[None, :] * stride_zc, mask=m_p[:, None] & m_k[None, :], other=0.0)
        b_w = tl.load(ln_w_ptr + o_k, mask=m_k, other=0.0).to(tl.float32)  # [BK]
        b_b = tl.load(ln_b_ptr + o_k, mask=m_k, other=0.0).to(tl.float32)  # [BK]
        b_zn = (b_z.to(tl.float32) - b_mean[:, None]) * b_rstd[:, None] * b_w[None, :] + b_b[
            None, :
        ]
        b_zn = tl.where(m_k[None, :], b_zn, 0.0).to(b_z.dtype)  # [BP, BK] in z's dtype
        p_w = o_w[None, :] * C + o_k[:, None]  # W[h, k] of row-major [Ch, C] weights
        m_w = m_k[:, None] & m_h[None, :]
        b_wp = tl.load(wp_ptr + p_w, mask=m_w, other=0.0)  # [BK, BH]
        b_accp += dot(b_zn, b_wp.to(b_zn.dtype))  # [BP, BH]
        b_wg = tl.load(wg_ptr + p_w, mask=m_w, other=0.0)  # [BK, BH]
        b_accg += dot(b_zn, b_wg.to(b_zn.dtype))  # [BP, BH]
    b_accp += tl.load(bp_ptr + o_w, mask=m_h, other=0.0).to(tl.float32)[None, :]
    b_accg += tl.load(bg_ptr + o_w, mask=m_h, other=0.0).to(tl.float32)[None, :]
    return b_accp * tl.sigmoid(b_accg)


@triton.autotune(key=KEY, **PROJ_TUNING)
@triton.jit
def _trimul_proj_kernel(
    z_ptr, mask_ptr, ln_w_ptr, ln_b_ptr,
    wap_ptr, bap_ptr, wag_ptr, bag_ptr, wbp_ptr, bbp_ptr, wbg_ptr, bbg_ptr,
    a_ptr, b_ptr,
    stride_zb, stride_zi, stride_zj, stride_zc,
    stride_mb, stride_mi, stride_mj,
    stride_ab, stride_ah,
    L, C, H_OFF, H_CHUNK, eps, L_KEY,
    HAS_MASK: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_CH: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    i_p = tl.program_id(0).to(tl.int64)
    i_hb = tl.program_id(1).to(tl.int64)
    i_b = tl.program_id(2).to(tl.int64)
    o_p = i_p * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)  # flattened pixel i * L + k
    o_c = tl.arange(0, BLOCK_C).to(tl.int64)
    o_h = i_hb * BLOCK_H + tl.arange(0, BLOCK_H).to(tl.int64)  # hidden channel within the chunk
    m_p = o_p < L * L
    m_c = o_c < C
    m_h = o_h < H_CHUNK
    # LayerNorm statistics over all C channels, in fp32
    p_z = z_ptr + i_b * stride_zb + (o_p // L)[:, None] * stride_zi + (o_p % L)[:, None] * stride_zj
    b_z = tl.load(p_z + o_c[None, :] * stride_zc, mask=m_p[:, None] & m_c[None, :], other=0.0)
    b_z = b_z.to(tl.float32)  # [BP, BC]
    b_mean = tl.sum(b_z, 1) / C  # [BP]
    b_zc = tl.where(m_c[None, :], b_z - b_mean[:, None], 0.0)
    b_rstd = 1.0 / tl.sqrt(tl.sum(b_zc * b_zc, 1) / C + eps)  # [BP]
    b_keep = tl.full([BLOCK_P], 1.0, tl.float32)
    if HAS_MASK:
        p_m = mask_ptr + i_b * stride_mb + (o_p // L) * stride_mi + (o_p % L) * stride_mj
        b_keep = tl.load(p_m, mask=m_p, other=0.0).to(tl.float32)  # [BP]
    o_w = H_OFF + o_h  # row of the [Ch, C] weights
    m_ph = m_p[:, None] & m_h[None, :]
    p_out = i_b * stride_ab + o_h[None, :] * stride_ah + o_p[:, None]  # [BP, BH], p-contiguous
    b_a = _gated_projection_tile(p_z, stride_zc, b_mean, b_rstd, ln_w_ptr, ln_b_ptr,
                                 wap_ptr, bap_ptr, wag_ptr, bag_ptr, m_p, o_w, m_h, C, BLOCK_K)  # fmt: skip
    tl.store(a_ptr + p_out, (b_a * b_keep[:, None]).to(a_ptr.dtype.element_ty), mask=m_ph)
    b_b = _gated_projection_tile(p_z, stride_zc, b_mean, b_rstd, ln_w_ptr, ln_b_ptr,
                                 wbp_ptr, bbp_ptr, wbg_ptr, bbg_ptr, m_p, o_w, m_h, C, BLOCK_K)  # fmt: skip
    tl.store(b_ptr + p_out, (b_b * b_keep[:, None]).to(b_ptr.dtype.element_ty), mask=m_ph)


@triton.autotune(key=["L_KEY"], **CONTRACT_TUNING)
@triton.jit
def _trimul_contract_kernel(
    a_ptr, b_ptr, x_ptr,
    stride_ab, stride_ah, stride_xb, stride_xh,
    L, H_OFF, L_KEY,
    OUTGOING: tl.constexpr, GROUP_I: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    i_t = tl.program_id(0).to(tl.int64)
    i_h = tl.program_id(1).to(tl.int64)
    i_b = tl.program_id(2).to(tl.int64)
    # Grouped tile order: GROUP_I row-tiles share their b column-tiles in L2.
    n_i = tl.cdiv(L, BLOCK_I)
    n_j = tl.cdiv(L, BLOCK_J)
    group = i_t // (GROUP_I * n_j)
    first_i = group * GROUP_I
    size_i = tl.minimum(n_i - first_i, GROUP_I)
    i_i = first_i + (i_t % (GROUP_I * n_j)) % size_i
    i_j = (i_t % (GROUP_I * n_j)) // size_i
    o_i = i_i * BLOCK_I + tl.arange(0, BLOCK_I).to(tl.int64)
    o_j = i_j * BLOCK_J + tl.arange(0, BLOCK_J).to(tl.int64)
    m_i = o_i < L
    m_j = o_j < L
    base = i_b * stride_ab + i_h * stride_ah
    b_acc = tl.zeros([BLOCK_I, BLOCK_J], tl.float32)
    for k0 in range(0, L, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        m_k = o_k < L
        if OUTGOING:  # a[i, k] at i * L + k; b[j, k] at j * L + k
            p_a = a_ptr + base + o_i[:, None] * L + o_k[None, :]
            p_b = b_ptr + base + o_j[None, :] * L + o_k[:, None]
        else:  # a[k, i] at k * L + i; b[k, j] at k * L + j
            p_a = a_ptr + base + o_k[None, :] * L + o_i[:, None]
            p_b = b_ptr + base + o_k[:, None] * L + o_j[None, :]
        b_a = tl.load(p_a, mask=m_i[:, None] & m_k[None, :], other=0.0)  # [BI, BK]
        b_b = tl.load(p_b, mask=m_k[:, None] & m_j[None, :], other=0.0)  # [BK, BJ]
        b_acc += dot(b_a, b_b)  # [BI, BJ]
    p_x = x_ptr + i_b * stride_xb + (H_OFF + i_h) * stride_xh + o_i[:, None] * L + o_j[None, :]
    tl.store(p_x, b_acc.to(x_ptr.dtype.element_ty), mask=m_i[:, None] & m_j[None, :])


@triton.autotune(key=KEY, **OUT_TUNING)
@triton.jit
def _trimul_out_kernel(
    x_ptr, z_ptr, ln_in_w_ptr, ln_in_b_ptr, ln_out_w_ptr, ln_out_b_ptr,
    wz_ptr, bz_ptr, wg_ptr, bg_ptr, out_ptr,
    stride_xb, stride_xh,
    stride_zb, stride_zi, stride_zj, stride_zc,
    stride_ob, stride_op, stride_oc,
    L, P, C, CH, eps, L_KEY,
    BLOCK_C: tl.constexpr, BLOCK_CH: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    i_p = tl.program_id(0).to(tl.int64)
    i_b = tl.program_id(1).to(tl.int64)
    o_p = i_p * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    o_c = tl.arange(0, BLOCK_C).to(tl.int64)
    o_h = tl.arange(0, BLOCK_CH).to(tl.int64)
    m_p = o_p < P  # P = R * L pixels: the launch covers rows [0, R) of the z and x it is given
    m_c = o_c < C
    m_h = o_h < CH
    p_x = x_ptr + i_b * stride_xb + o_h[None, :] * stride_xh + o_p[:, None]
    b_x = tl.load(p_x, mask=m_p[:, None] & m_h[None, :], other=0.0)  # [BP, BCH]
    b_xn = _layer_norm_rows(b_x.to(tl.float32), ln_out_w_ptr, ln_out_b_ptr, o_h, m_h, CH, eps)
    b_xn = b_xn.to(z_ptr.dtype.element_ty)  # [BP, BCH] (x may be fp32: fp16 z)
    b_zn = _load_z_ln(z_ptr, ln_in_w_ptr, ln_in_b_ptr, i_b, o_p, m_p, o_c, m_c,
                      stride_zb, stride_zi, stride_zj, stride_zc, L, C, eps)  # fmt: skip
    p_o = out_ptr + i_b * stride_ob + o_p[:, None] * stride_op
    # Output channels in blocks of BLOCK_N: two [BP, BLOCK_N] accumulators and [C, BLOCK_N]
    # weight tiles live at a time, not [BP, C] and [C, C] (255 registers and spills at C = 128).
    for n0 in range(0, C, BLOCK_N):
        o_n = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        m_n = o_n < C
        b_y = _linear_tile(b_xn, wz_ptr, bz_ptr, o_h, m_h, o_n, m_n, CH)  # [BP, BN]
        b_g = _linear_tile(b_zn, wg_ptr, bg_ptr, o_c, m_c, o_n, m_n, C)  # [BP, BN]
        b_y = b_y * tl.sigmoid(b_g)
        tl.store(
            p_o + o_n[None, :] * stride_oc,
            b_y.to(out_ptr.dtype.element_ty),
            mask=m_p[:, None] & m_n[None, :],
        )


# ------------------------------------------------------------------------------------------------
# Launchers
# ------------------------------------------------------------------------------------------------

PARAM_NAMES = (
    "ln_in_weight", "ln_in_bias",
    "a_proj_weight", "a_proj_bias", "a_gate_weight", "a_gate_bias",
    "b_proj_weight", "b_proj_bias", "b_gate_weight", "b_gate_bias",
    "ln_out_weight", "ln_out_bias",
    "out_proj_weight", "out_proj_bias", "out_gate_weight", "out_gate_bias",
)  # fmt: skip


def trimul_project(
    z: torch.Tensor,
    mask: torch.Tensor | None,
    p: dict[str, torch.Tensor],
    h_off: int,
    h_chunk: int,
    eps: float,
    *,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """a, b for hidden channels [h_off, h_off + h_chunk): [B, h_chunk, L, L] in z.dtype
    (channel-major: a[b, h, i, k] is the gated, masked projection of pixel (i, k))."""
    B, L, _, C = z.shape
    a = poison_empty(B, h_chunk, L, L, dtype=z.dtype, device=z.device) if a is None else a
    b = poison_empty(B, h_chunk, L, L, dtype=z.dtype, device=z.device) if b is None else b
    ch = p["a_proj_weight"].shape[0]
    grid = lambda meta: (
        triton.cdiv(L * L, meta["BLOCK_P"]),
        triton.cdiv(h_chunk, meta["BLOCK_H"]),
        B,
    )
    _trimul_proj_kernel[grid](
        z, mask, p["ln_in_weight"], p["ln_in_bias"],
        p["a_proj_weight"], p["a_proj_bias"], p["a_gate_weight"], p["a_gate_bias"],
        p["b_proj_weight"], p["b_proj_bias"], p["b_gate_weight"], p["b_gate_bias"],
        a, b,
        *z.stride(), *(mask.stride() if mask is not None else (0, 0, 0)),
        a.stride(0), a.stride(1),
        L, C, h_off, h_chunk, eps, round_key(L),
        HAS_MASK=mask is not None, BLOCK_C=round_key(C), BLOCK_CH=round_key(ch),
        BLOCK_K=16 if interpreting() else min(32, round_key(C)),
    )  # fmt: skip
    return a, b


def trimul_contract(
    a: torch.Tensor, b: torch.Tensor, x: torch.Tensor, h_off: int, outgoing: bool
) -> torch.Tensor:
    """x[:, h_off + h] = a[:, h] (x) b[:, h] over k for each chunk channel h (fp32 accumulate).
    a, b: [B, Hc, L, L] contiguous; x: [B, Ch, L, L] contiguous, written in place."""
    B, hc, L, _ = a.shape
    grid = lambda meta: (triton.cdiv(L, meta["BLOCK_I"]) * triton.cdiv(L, meta["BLOCK_J"]), hc, B)
    _trimul_contract_kernel[grid](
        a, b, x, a.stride(0), a.stride(1), x.stride(0), x.stride(1), L, h_off, round_key(L),
        OUTGOING=outgoing, GROUP_I=8,
    )  # fmt: skip
    return x


def trimul_output(
    x: torch.Tensor,
    z: torch.Tensor,
    p: dict[str, torch.Tensor],
    eps: float,
    rows: tuple[int, int] | None = None,
    x_row0: int = 0,
) -> torch.Tensor:
    """sigmoid(LN_in(z) Wg^T + bg) * (LN_out(x) Wz^T + bz) for output rows [r0, r1) (default
    all): [B, r1 - r0, L, C] contiguous, z.dtype. x: [B, Ch, I, L] with contiguous (i, j), holding
    rows x_row0 .. x_row0 + I of the contraction (all of them by default)."""
    B, L, _, C = z.shape
    ch = x.shape[1]
    r0, r1 = (0, L) if rows is None else rows
    out = poison_empty(B, r1 - r0, L, C, dtype=z.dtype, device=z.device)
    n_pixels = (r1 - r0) * L
    grid = lambda meta: (triton.cdiv(n_pixels, meta["BLOCK_P"]), B)
    # Row block views: z[:, r0:] and x's pixels from row r0 on (x is pixel-contiguous per channel).
    z_rows, x_rows = z[:, r0:], x.flatten(2)[:, :, (r0 - x_row0) * L :]
    _trimul_out_kernel[grid](
        x_rows, z_rows, p["ln_in_weight"], p["ln_in_bias"], p["ln_out_weight"], p["ln_out_bias"],
        p["out_proj_weight"], p["out_proj_bias"], p["out_gate_weight"], p["out_gate_bias"], out,
        x.stride(0), x.stride(1), *z.stride(), out.stride(0), out.stride(2), out.stride(3),
        L, n_pixels, C, ch, eps, round_key(L),
        BLOCK_C=round_key(C), BLOCK_CH=round_key(ch),
    )  # fmt: skip
    return out


def channel_slice(chunk_size: int | None, length: int, channels: int) -> int:
    """Hidden channels per slice of the triangle contraction for a row `chunk_size`.

    None (unchunked) takes every channel at once. Otherwise the slice holds the same fraction
    of the channels as a chunk holds of the rows, but at least a sixteenth of them: each slice
    re-reads z for LN_in, and 16 passes over z (16 x 24 GiB of reads at L = 10,000 in bf16,
    milliseconds on an H200) cost little next to the contraction's 2 L^3 Ch FLOPs, while the
    a | b slices beside z and x shrink to 1/8 of a pair tensor (a quarter: 1/2).

    Example:
        >>> channel_slice(None, 1024, 128), channel_slice(64, 1024, 128), channel_slice(512, 1024, 128)
        (128, 8, 64)
    """
    if chunk_size is None:
        return channels
    return max(1, min(channels, max(channels // 16, channels * chunk_size // max(length, 1))))


def trimul_fwd(
    z: torch.Tensor,
    mask: torch.Tensor | None,
    p: dict[str, torch.Tensor],
    outgoing: bool,
    eps: float,
    chunk_size: int | None,
    add_into: torch.Tensor | None = None,
    offload: bool = False,
) -> torch.Tensor:
    """The whole forward: projection and contraction in slices of hidden channels, as many as
    `channel_slice` gives for `chunk_size` rows (None: all channels at once).

    With `offload` (needs `add_into`) x lives in host memory (`core.memory.host_empty`): each
    slice is contracted into a device buffer of the slice's channels and copied out, and the
    output copies x back one row block [B, Ch, R, L] at a time. Same math, about one pair
    tensor less on the device.

    With `add_into` (inference; z itself or a tensor of z's shape and dtype) the update is
    added into it `chunk_size` rows at a time and `add_into` is returned: no full [B, L, L, C]
    update is allocated. This is exact even when `add_into` is z: x holds everything the output
    needs from the pre-update z except LN_in(z) of the rows being written, and rows are written
    only after they are read."""
    B, L, _, C = z.shape
    ch = p["a_proj_weight"].shape[0]
    if B * L == 0:
        return z.new_zeros(B, L, L, C) if add_into is None else add_into
    p = {name: t.contiguous() for name, t in p.items()}
    if mask is not None and mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)
    if offload and add_into is None:
        raise ValueError("triangle_multiplicative_update: offload=True needs add_into")
    step = channel_slice(chunk_size, L, ch)
    x_dtype = ref.contraction_dtype(z.dtype)
    if offload:
        x = host_empty((B, ch, L, L), x_dtype, z.device)
    else:
        x = poison_empty(B, ch, L, L, dtype=x_dtype, device=z.device)
    a = b = x_slice = None
    for h_off in range(0, ch, step):
        h_chunk = min(step, ch - h_off)
        if a is None or a.shape[1] != h_chunk:
            a = b = x_slice = None  # the last, smaller chunk gets its own buffers
        a, b = trimul_project(z, mask, p, h_off, h_chunk, eps, a=a, b=b)
        if offload:
            if x_slice is None:
                x_slice = poison_empty(B, h_chunk, L, L, dtype=x_dtype, device=z.device)
            trimul_contract(a, b, x_slice, 0, outgoing)
            x[:, h_off : h_off + h_chunk].copy_(x_slice)
        else:
            trimul_contract(a, b, x, h_off, outgoing)
    del a, b, x_slice
    if add_into is None:
        return trimul_output(x, z, p, eps)
    step = L if chunk_size is None else min(chunk_size, L)
    for r0 in range(0, L, step):
        rows = (r0, min(r0 + step, L))
        if offload:  # this row block of x back on the device
            x_rows = poison_empty(B, ch, rows[1] - r0, L, dtype=x_dtype, device=z.device)
            x_rows.copy_(x[:, :, r0 : rows[1]])
            add_into[:, r0 : rows[1]] += trimul_output(x_rows, z, p, eps, rows, x_row0=r0)
        else:
            add_into[:, r0 : rows[1]] += trimul_output(x, z, p, eps, rows)
    return add_into
