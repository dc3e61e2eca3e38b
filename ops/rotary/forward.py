"""Fused rotary flash attention, forward: kernel, shared jit helpers and launcher.

Math (per sequence, head; ESM rotate-half rotary, see `esmkernels.reference.functional`):

    q' = R(p) (scale * q),  k' = R(p) k         R(p) rotates pairs (x_j, x_{j+D/2}) by p*inv_freq_j
    s  = q' k'^T,   P = softmax(s over kept keys),   O = P V,   lse = logsumexp(s)   (fp32)

The rotation happens in registers: each q / k tile is loaded as its two halves, cos/sin of
`position * inv_freq` are computed in fp32 for `[BLOCK, D/2]`, and the rotated halves are joined
back into one `[BLOCK, D]` tile so QK^T is a single `tl.dot` over the full head dimension (any
power-of-two D >= 16 works, including 16 whose halves are too narrow for `tl.dot`). With
`inv_freq=None` the constexpr `ROTARY=False` removes the rotation (ESM-1b / ESM-1v).

Softmax runs online in the log2 domain (q is pre-multiplied by `scale * log2(e)`, `exp2`),
with fp32 running max / sum; the stored `lse` is natural-log. A query whose keys are all masked
keeps max = -inf: the kernel substitutes 0 for the max before exponentiating (so no inf - inf),
its sum stays 0, its output is written as zeros and its lse as -inf (the backward treats
-inf as "no probability mass").

Precision: fp32 inputs use 3xTF32 dots (fp32-level accuracy on tensor cores; "ieee" FMA dots
spill registers in every useful tile on sm_90) with their own, smaller autotune tiles, picked by
dtype and head dim through `esmkernels.ops._tuning.tuning`; bf16 / fp16 use tensor cores with
fp32 accumulation, p rounded to v's dtype for P V as flash-attention does.

Grid: `(cdiv(max_seqlen, BLOCK_M), H, B)`; program (m, h, b) owns BLOCK_M queries of one head
of one sequence and streams all of that sequence's keys in BLOCK_N tiles. Padded inputs
`[B, L, H, D]` and varlen inputs `[T, H, D]` + `cu_seqlens` share the kernel through the
constexpr `IS_VARLEN`: a sequence's rows start at `cu_seqlens[b]` (varlen) or at `b * stride_b`
(padded). Every offset is int64. Arbitrary strides for the token and head dims are honoured
(views of a fused qkv projection work without a copy); the head dim must be contiguous.

Cost trade-off: rotating k inside the kernel is repeated by every query block (cos/sin of
`[BLOCK_N, D/2]` per key tile). At D=64, BLOCK_M=128 this is about one transcendental pair per
two exponentials of the softmax; it avoids writing and re-reading a rotated copy of q and k
(2 x 2 bytes x B L H D each way). Pre-rotating k in a separate pass is the alternative if GPU
profiling shows the trig on the critical path.

Sources: Tri Dao, FlashAttention-2 (2023), the Triton fused-attention tutorial, flash-attn
`ops/triton/rotary.py` (rotate-half in Triton), fla `IS_VARLEN` layout.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from esmkernels.ops._dispatch import interpreting, poison_empty
from esmkernels.ops._tuning import block_configs, tuning

LOG2E = 1.4426950408889634
# Kernels may only read globals that are constexpr.
_LOG2E = tl.constexpr(LOG2E)
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)


def _configs(choices):
    """Config maker for `tuning`: (BLOCK_M, BLOCK_N, num_warps, num_stages) tuples; under the
    interpreter one 16 x 16 tile."""
    if interpreting():
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)]
    return block_configs(choices)


# Per kernel, {max D: tiles} for bf16 / fp16 and for fp32 (`esmkernels.ops._tuning.tuning`:
# the launch's dtype and D pick the list). Every tile left in the space compiles for sm_90
# without register spills and within 227 KB of shared memory under the running Triton (3.9 and
# 3.6 checked, each with its bundled ptxas and the launch-time 16-divisibility specialisation of
# pointers and strides; `tests/_sm90.py`); a tile that spills under one release only is left out
# there by the table in `esmkernels.ops._spills`. Their speed is left to the autotuner. fp32
# uses 3xTF32 dots, about twice the registers of bf16: smaller tiles.
FWD_TUNING = tuning(
    kernel="_rotary_attention_fwd_kernel",
    lowp={
        64: [
            (128, 64, 4, 3),
            (128, 64, 8, 3),
            (128, 32, 4, 4),
            (128, 128, 8, 3),
            (64, 64, 4, 3),
            (64, 32, 4, 4),
        ],
        128: [(128, 64, 8, 3), (64, 64, 8, 3), (64, 32, 8, 3), (64, 32, 4, 4)],
    },
    fp32={
        64: [(64, 32, 4, 2), (64, 64, 4, 2), (128, 64, 8, 2), (128, 32, 8, 2)],
        128: [(32, 32, 8, 2), (32, 64, 8, 2), (32, 32, 4, 2)],
    },
    make=_configs,
)


def seqlen_bucket(n: int) -> int:
    """Autotune key for a sequence length: the next power of two (min 16)."""
    return max(16, triton.next_power_of_2(max(1, int(n))))


@triton.jit
def _dot(a, b, DOT_PRECISION: tl.constexpr):
    """tl.dot with fp32 accumulation; see `dot_precision` for the interpreter's bf16 detours."""
    if DOT_PRECISION == "interpret-bf16":
        b_out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        b_out = tl.dot(a, b, input_precision=DOT_PRECISION)
    return b_out


@triton.jit
def _cast(x, dtype, DOT_PRECISION: tl.constexpr):
    """fp32 -> dtype, rounding to nearest even (see `dot_precision` for the interpreter case)."""
    if DOT_PRECISION == "interpret-bf16":
        b_bits = x.to(tl.uint32, bitcast=True)
        b_bits = (b_bits + 0x7FFF + ((b_bits >> 16) & 1)) & 0xFFFF0000
        x = b_bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _merge_halves(a, b, BLOCK: tl.constexpr, HALF: tl.constexpr):
    # a, b: [BLOCK, HALF] -> [BLOCK, 2 * HALF] with a in the first half, b in the second.
    return tl.reshape(tl.permute(tl.join(a, b), (0, 2, 1)), (BLOCK, 2 * HALF))


@triton.jit
def _split_halves(x, BLOCK: tl.constexpr, HALF: tl.constexpr):
    # x: [BLOCK, 2 * HALF] -> (first half, second half), each [BLOCK, HALF].
    return tl.split(tl.permute(tl.reshape(x, (BLOCK, 2, HALF)), (0, 2, 1)))


@triton.jit
def _cos_sin(b_pos, b_freq):
    # b_pos: [BLOCK] fp32, b_freq: [HALF] fp32 -> cos, sin: [BLOCK, HALF] fp32.
    b_theta = b_pos[:, None] * b_freq[None, :]
    return tl.cos(b_theta), tl.sin(b_theta)


@triton.jit
def _load_rotated(
    x_ptr,
    o_row,
    m_row,
    b_pos,
    b_freq,
    mult,
    ROTARY: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK: tl.constexpr,
    D: tl.constexpr,
):
    """Load a q or k tile [BLOCK, D] (row offsets o_row, in elements), rotate it in fp32 when
    ROTARY, multiply by `mult` and round to the input dtype as a `tl.dot` operand."""
    if ROTARY:
        o_d = tl.arange(0, D // 2)
        p_x1 = x_ptr + o_row[:, None] + o_d[None, :]
        b_x1 = tl.load(p_x1, mask=m_row[:, None], other=0.0).to(tl.float32)  # [BLOCK, D/2]
        b_x2 = tl.load(p_x1 + D // 2, mask=m_row[:, None], other=0.0).to(tl.float32)  # [BLOCK, D/2]
        b_cos, b_sin = _cos_sin(b_pos, b_freq)  # [BLOCK, D/2]
        b_out = _merge_halves(
            b_x1 * b_cos - b_x2 * b_sin, b_x2 * b_cos + b_x1 * b_sin, BLOCK, D // 2
        )
    else:
        b_out = _load_tile(x_ptr, o_row, m_row, D).to(tl.float32)  # [BLOCK, D]
    return _cast(b_out * mult, x_ptr.dtype.element_ty, DOT_PRECISION)


@triton.jit
def _load_tile(x_ptr, o_row, m_row, D: tl.constexpr):
    """A [BLOCK, D] tile at row offsets o_row (elements), zeros for masked rows."""
    o_d = tl.arange(0, D)
    return tl.load(x_ptr + o_row[:, None] + o_d[None, :], mask=m_row[:, None], other=0.0)


@triton.jit
def _store_tile(x_ptr, o_row, m_row, b_x, D: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Store an fp32 [BLOCK, D] tile in x_ptr's dtype."""
    o_d = tl.arange(0, D)
    b_x = _cast(b_x, x_ptr.dtype.element_ty, DOT_PRECISION)
    tl.store(x_ptr + o_row[:, None] + o_d[None, :], b_x, mask=m_row[:, None])


@triton.jit
def _row_offsets(i_b, i_h, bos, o_i, stride_b, stride_t, stride_h):
    """[BLOCK] int64 element offsets of rows o_i (within sequence i_b) of head i_h."""
    return i_b * stride_b + (bos + o_i) * stride_t + i_h * stride_h


@triton.jit
def _key_keep(mask_ptr, i_b, o_n, m_n, stride_mb, stride_mt, HAS_MASK: tl.constexpr):
    """[BLOCK_N] bool: key exists and key_padding_mask says keep."""
    m_keep = m_n
    if HAS_MASK:
        b_keep = tl.load(mask_ptr + i_b * stride_mb + o_n * stride_mt, mask=m_n, other=0)
        m_keep = m_keep & (b_keep != 0)
    return m_keep


@triton.jit
def _rotary_freq(freq_ptr, ROTARY: tl.constexpr, D: tl.constexpr):
    """inv_freq [D/2] fp32 (a placeholder scalar when not ROTARY)."""
    b_freq = 0.0
    if ROTARY:
        b_freq = tl.load(freq_ptr + tl.arange(0, D // 2))
    return b_freq


@triton.jit
def _unrotate(b_g, b_pos, b_freq, BLOCK: tl.constexpr, D: tl.constexpr):
    """Gradient through the rotation: apply R(p)^T to b_g [BLOCK, D] (fp32)."""
    b_g1, b_g2 = _split_halves(b_g, BLOCK, D // 2)  # [BLOCK, D/2] each
    b_cos, b_sin = _cos_sin(b_pos, b_freq)
    return _merge_halves(b_g1 * b_cos + b_g2 * b_sin, b_g2 * b_cos - b_g1 * b_sin, BLOCK, D // 2)


@triton.jit
def _seq_bounds(cu_ptr, i_b, seqlen, IS_VARLEN: tl.constexpr):
    """(first token row, length) of sequence i_b."""
    if IS_VARLEN:
        bos = tl.load(cu_ptr + i_b).to(tl.int64)
        n_tok = (tl.load(cu_ptr + i_b + 1) - tl.load(cu_ptr + i_b)).to(tl.int32)
    else:
        bos = i_b * 0
        n_tok = seqlen
    return bos, n_tok


@triton.jit
def _positions(pos_ptr, i_b, bos, o_i, m_i, stride_pb, stride_pt, HAS_POS: tl.constexpr):
    """fp32 rotary positions of the tokens o_i (indices within the sequence) of sequence i_b."""
    if HAS_POS:
        p_pos = pos_ptr + i_b * stride_pb + (bos + o_i) * stride_pt
        b_pos = tl.load(p_pos, mask=m_i, other=0).to(tl.float32)
    else:
        b_pos = o_i.to(tl.float32)
    return b_pos


@triton.autotune(key=["SEQ_BUCKET", "D", "ROTARY", "HAS_MASK"], **FWD_TUNING)
@triton.jit
def _rotary_attention_fwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    lse_ptr,
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
    stride_ob,
    stride_ot,
    stride_oh,
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
    i_m = tl.program_id(0)
    i_h = tl.program_id(1).to(tl.int64)
    i_b = tl.program_id(2).to(tl.int64)
    bos, n_tok = _seq_bounds(cu_ptr, i_b, seqlen, IS_VARLEN)
    if i_m * BLOCK_M >= n_tok:
        return
    b_freq = _rotary_freq(freq_ptr, ROTARY, D)  # [D/2]

    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M] index within the sequence
    m_m = o_m < n_tok
    b_pos_m = _positions(pos_ptr, i_b, bos, o_m, m_m, stride_pb, stride_pt, HAS_POS)
    o_q = _row_offsets(i_b, i_h, bos, o_m, stride_qb, stride_qt, stride_qh)
    b_q = _load_rotated(
        q_ptr, o_q, m_m, b_pos_m, b_freq, qk_scale, ROTARY, DOT_PRECISION, BLOCK_M, D
    )  # [BLOCK_M, D]

    b_mx = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    b_l = tl.zeros((BLOCK_M,), dtype=tl.float32)
    b_acc = tl.zeros((BLOCK_M, D), dtype=tl.float32)
    for start_n in range(0, n_tok, BLOCK_N):
        o_n = start_n + tl.arange(0, BLOCK_N)  # [BLOCK_N]
        m_n = o_n < n_tok
        b_pos_n = _positions(pos_ptr, i_b, bos, o_n, m_n, stride_pb, stride_pt, HAS_POS)
        o_k = _row_offsets(i_b, i_h, bos, o_n, stride_kb, stride_kt, stride_kh)
        b_k = _load_rotated(
            k_ptr, o_k, m_n, b_pos_n, b_freq, 1.0, ROTARY, DOT_PRECISION, BLOCK_N, D
        )  # [BLOCK_N, D]
        o_v = _row_offsets(i_b, i_h, bos, o_n, stride_vb, stride_vt, stride_vh)
        b_v = _load_tile(v_ptr, o_v, m_n, D)  # [BLOCK_N, D]

        b_s = _dot(b_q, tl.trans(b_k), DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
        m_keep = _key_keep(mask_ptr, i_b, o_n, m_n, stride_mb, stride_mt, HAS_MASK)
        b_s = tl.where(m_keep[None, :], b_s, float("-inf"))

        b_mx_new = tl.maximum(b_mx, tl.max(b_s, axis=1))  # [BLOCK_M]
        # All keys so far masked: keep the max at -inf but subtract 0 so exp2 sees -inf, not NaN.
        b_shift = tl.where(b_mx_new == float("-inf"), 0.0, b_mx_new)
        b_p = tl.math.exp2(b_s - b_shift[:, None])  # [BLOCK_M, BLOCK_N]
        b_alpha = tl.math.exp2(b_mx - b_shift)  # [BLOCK_M]
        b_l = b_l * b_alpha + tl.sum(b_p, axis=1)
        b_p = _cast(b_p, v_ptr.dtype.element_ty, DOT_PRECISION)
        b_acc = b_acc * b_alpha[:, None] + _dot(b_p, b_v, DOT_PRECISION)  # [BLOCK_M, D]
        b_mx = b_mx_new

    b_empty = b_l == 0.0
    b_o = b_acc / tl.where(b_empty, 1.0, b_l)[:, None]  # [BLOCK_M, D]
    o_o = _row_offsets(i_b, i_h, bos, o_m, stride_ob, stride_ot, stride_oh)
    _store_tile(o_ptr, o_o, m_m, b_o, D, DOT_PRECISION)
    b_lse = tl.where(
        b_empty, float("-inf"), (b_mx + tl.math.log2(tl.where(b_empty, 1.0, b_l))) / _LOG2E
    )
    tl.store(lse_ptr + i_b * stride_lb + i_h * stride_lh + bos + o_m, b_lse, mask=m_m)


class _Layout:
    """Geometry shared by the forward and backward launchers.

    Padded q [B, L, H, D]: B sequences of length L, `stride_b` = q.stride(0), lse [B, H, L].
    Varlen q [T, H, D] + cu_seqlens [B+1]: `stride_b` = 0, rows start at cu_seqlens[b],
    lse [H, T] (indexed by packed token).
    """

    def __init__(self, q: torch.Tensor, cu_seqlens: torch.Tensor | None, max_seqlen: int | None):
        self.varlen = cu_seqlens is not None
        if self.varlen:
            self.T, self.H, self.D = q.shape
            self.B = cu_seqlens.shape[0] - 1
            self.max_seqlen = int(max_seqlen)
            self.seqlen = 0
        else:
            self.B, self.seqlen, self.H, self.D = q.shape
            self.max_seqlen = self.seqlen

    def strides(self, x: torch.Tensor) -> tuple[int, int, int]:
        """(batch, token, head) strides in elements; batch is 0 for varlen."""
        if self.varlen:
            return 0, x.stride(0), x.stride(1)
        return x.stride(0), x.stride(1), x.stride(2)

    def new_stats(self, device: torch.device) -> torch.Tensor:
        shape = (self.H, self.T) if self.varlen else (self.B, self.H, self.seqlen)
        return poison_empty(*shape, dtype=torch.float32, device=device)

    def stats_strides(self, lse: torch.Tensor) -> tuple[int, int]:
        """(batch, head) strides of an lse / delta buffer; the token stride is 1."""
        return (0, lse.stride(0)) if self.varlen else (lse.stride(0), lse.stride(1))

    def grid(self, block_key: str):
        return lambda meta: (triton.cdiv(self.max_seqlen, meta[block_key]), self.H, self.B)


def head_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def side_inputs(
    position_ids: torch.Tensor | None, key_padding_mask: torch.Tensor | None, layout: _Layout
) -> tuple[torch.Tensor | None, tuple[int, int], torch.Tensor | None, tuple[int, int]]:
    """Positions and mask as the kernels read them, with their (batch, token) strides."""
    pos_strides = (0, 0)
    if position_ids is not None:
        if position_ids.dim() == 1:
            pos_strides = (0, position_ids.stride(0))
        else:
            pos_strides = (position_ids.stride(0), position_ids.stride(1))
    mask, mask_strides = None, (0, 0)
    if key_padding_mask is not None:
        keep = key_padding_mask if key_padding_mask.dtype == torch.bool else key_padding_mask != 0
        mask = keep.view(torch.uint8)
        mask_strides = (mask.stride(0), mask.stride(1))
    return position_ids, pos_strides, mask, mask_strides


def dot_precision(dtype: torch.dtype) -> str:
    """The kernels' `DOT_PRECISION` for inputs of this dtype.

    fp32: "tf32x3" (3xTF32: hi/lo split products on tensor cores, fp32-level accuracy; plain
    tf32 loses ~3 digits, and "ieee" FMA dots spill registers in every tile on sm_90). The fp32
    tiles are smaller than the bf16 ones (separate config lists, see FWD_TUNING). fp16/bf16:
    tensor cores ("tf32" is ignored for 16-bit operands). Under the interpreter, Triton 3.x multiplies bf16
    operands as their raw uint16 bits, so there the already-rounded bf16 operands are widened to
    fp32 first: the same products and fp32 accumulation a tensor core computes. The interpreter
    also truncates fp32 -> bf16 casts (a GPU rounds to nearest even), which biases sums of
    rounded probabilities; `_cast` rounds to nearest even by bit arithmetic in that mode so the
    interpreted kernel has the GPU's numerics.
    """
    if dtype == torch.float32:
        return "tf32x3"
    if dtype == torch.bfloat16 and interpreting():
        return "interpret-bf16"
    return "tf32"


def rotary_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    inv_freq: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel on validated inputs (see `rotary_attention` for shapes).

    Returns out (q's shape, contiguous, q.dtype) and lse (fp32; [B, H, L] padded, [H, T] varlen;
    -inf for a query with no kept key).
    """
    q, k, v = (head_dim_contiguous(t) for t in (q, k, v))
    layout = _Layout(q, cu_seqlens, max_seqlen)
    out = poison_empty(*q.shape, dtype=q.dtype, device=q.device)
    lse = layout.new_stats(q.device)
    if q.numel() == 0 or layout.max_seqlen == 0:
        out.zero_()
        lse.fill_(float("-inf"))
        return out, lse
    pos, (spb, spt), mask, (smb, smt) = side_inputs(position_ids, key_padding_mask, layout)
    slb, slh = layout.stats_strides(lse)
    _rotary_attention_fwd_kernel[layout.grid("BLOCK_M")](
        q,
        k,
        v,
        out,
        lse,
        inv_freq,
        pos,
        mask,
        cu_seqlens,
        *layout.strides(q),
        *layout.strides(k),
        *layout.strides(v),
        *layout.strides(out),
        slb,
        slh,
        spb,
        spt,
        smb,
        smt,
        layout.seqlen,
        float(scale) * LOG2E,
        seqlen_bucket(layout.max_seqlen),
        D=layout.D,
        ROTARY=inv_freq is not None,
        HAS_POS=pos is not None,
        HAS_MASK=mask is not None,
        IS_VARLEN=layout.varlen,
        DOT_PRECISION=dot_precision(q.dtype),
    )
    return out, lse
