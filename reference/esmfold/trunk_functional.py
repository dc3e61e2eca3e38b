"""Plain-PyTorch functional reference for the ESMFold folding-trunk ops: the oracle for
`esmkernels.ops.trimul` and `esmkernels.ops.axial`.

The reference trunk modules (`EsmFoldTriangleMultiplicativeUpdate`, `EsmFoldTriangleAttention`,
`EsmFoldSelfAttention`) call these functions; the fast ops take the same arguments.

Triangle multiplicative update (AlphaFold 2 supplement, Algorithms 11 and 12; openfold
`triangular_multiplicative_update.py`), with z: [B, L, L, C], mask m: [B, L, L] (1 = keep):

    zn       = LayerNorm_in(z)
    a        = m * sigmoid(zn @ Wag^T + bag) * (zn @ Wap^T + bap)          [B, L, L, Ch]
    b        = m * sigmoid(zn @ Wbg^T + bbg) * (zn @ Wbp^T + bbp)
    outgoing:  x[i, j] = sum_k a[i, k] * b[j, k]     ("starting" edges)
    incoming:  x[i, j] = sum_k a[k, i] * b[k, j]     ("ending" edges)
    update   = sigmoid(zn @ Wg^T + bg) * (LayerNorm_out(x) @ Wz^T + bz)    [B, L, L, C]

The incoming update is the outgoing one on the transposed pair tensor (a^T, b^T), which is how
it is written below. The contraction accumulates in fp32 (ESMFold turns autocast off for it)
and is rounded to z.dtype before LayerNorm_out, as the bf16 / fp32 module does; fp16 keeps it
in fp32 (`contraction_dtype`: it overflows fp16).

Axial (triangle) attention (Algorithms 13 and 14; ESMFold's sequence attention is the R = 1
case): q, k, v: [B, R, N, H, D]; within each row r independently, every query n attends over
the keys of the same row:

    s[b, r, h, n, m] = scale * q[b, r, n, h] . k[b, r, m, h] + bias[b, h, n, m]
    s                = -inf where mask[b, r, m] == 0          (key mask per row, 1 = keep)
    out[b, r, n, h]  = sigmoid(gate[b, r, n, h]) * sum_m softmax_m(s) * v[b, r, m, h]

openfold adds `1e9 * (mask - 1)` instead of -inf; for a row with at least one kept key the two
are identical in fp32 (exp underflows to exactly 0). A query whose keys are ALL masked gives
zeros here (openfold would average v uniformly over the masked keys; such rows are padding and
never reach unpadded outputs). The "ending node" attention is the starting-node attention on
the transposed pair tensor: callers pass `x.transpose(1, 2)` views.

`chunk_rows` is the one chunking utility of the reference and fast ESMFold (the idea of openfold
`chunk_utils.chunk_layer`, much smaller): apply a function to blocks of rows and reassemble, or
add the blocks into an existing tensor (the inference-time residual update in place);
chunked == unchunked up to the rounding of the matmuls, since the rows it is used on are
independent. A row argument may also be a `RowMap`, rows computed from another tensor only when
a block asks for them: the structure module reads its pair input that way in inference, so no
second [B, L, L, C] tensor is made beside the trunk's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from esmkernels.reference.functional import layer_norm

Tensor = torch.Tensor

__all__ = [
    "RowMap",
    "axial_attention",
    "chunk_rows",
    "contraction_dtype",
    "gated_projection",
    "triangle_multiplicative_update",
    "triangle_update_rows",
]


class RowMap:
    """Rows of `fn(base)`, computed one block at a time when they are asked for.

    `fn` must map rows to rows: `fn(base.narrow(dim, i, n))` are rows i..i+n of the mapped
    tensor (a linear or a LayerNorm over the last dim, say). `chunk_rows` accepts a RowMap as a
    row argument and materialises only the block it passes to its function, so a mapped pair
    tensor is never alive whole; every read recomputes its rows. `shape`, `dtype` and `device`
    are those of `fn(base)`, found by mapping no rows.

    Args:
        base: the tensor whose rows are mapped, e.g. the pair state [B, L, L, C].
        fn: rows of base [B, n, L, C] -> rows of the result [B, n, L, C'].
        dim: the row dim of base and of the result.

    Example:
        >>> z = torch.randn(1, 6, 6, 4)
        >>> lin = torch.nn.Linear(4, 3)
        >>> lazy = RowMap(z, lin)
        >>> lazy.shape
        torch.Size([1, 6, 6, 3])
        >>> torch.equal(lazy.narrow(1, 2, 3), lin(z.narrow(1, 2, 3)))
        True
        >>> chunk_rows(lambda t: t.sum(-1), lazy, chunk_size=4).shape  # 4 rows at a time
        torch.Size([1, 6, 6])
    """

    def __init__(self, base: Tensor, fn: Callable[[Tensor], Tensor], dim: int = 1) -> None:
        if not isinstance(base, Tensor):
            raise TypeError(f"RowMap: base must be a tensor, got {type(base).__name__}")
        if not -base.dim() <= dim < base.dim():
            raise ValueError(f"RowMap: dim {dim} out of range for base {tuple(base.shape)}")
        self.base, self.fn, self.row_dim = base, fn, dim % base.dim()
        empty = fn(base.narrow(self.row_dim, 0, 0))
        if empty.dim() != base.dim():
            raise ValueError(
                f"RowMap: fn must keep the rank of base {tuple(base.shape)}, got {tuple(empty.shape)}"
            )
        shape = list(empty.shape)
        shape[self.row_dim] = base.shape[self.row_dim]
        self.shape = torch.Size(shape)
        self.dtype, self.device = empty.dtype, empty.device

    def dim(self) -> int:
        return len(self.shape)

    def narrow(self, dim: int, start: int, length: int) -> Tensor:
        """Rows start..start+length, computed now: a new tensor (not a view of anything)."""
        if dim % self.dim() != self.row_dim:
            raise ValueError(f"RowMap: rows are along dim {self.row_dim}, cannot narrow dim {dim}")
        return self.fn(self.base.narrow(dim, start, length))

    def then(self, fn: Callable[[Tensor], Tensor]) -> RowMap:
        """The RowMap of `fn(self.fn(base))` (fn must map rows to rows too)."""
        first = self.fn
        return RowMap(self.base, lambda rows: fn(first(rows)), self.row_dim)

    def __repr__(self) -> str:
        return f"RowMap(shape={tuple(self.shape)}, dtype={self.dtype}, dim={self.row_dim})"


def chunk_rows(
    fn: Callable[..., Tensor],
    *row_args: Tensor | RowMap | None,
    chunk_size: int | None,
    dim: int = 1,
    out: Tensor | None = None,
    accumulate: bool = False,
    **shared,
) -> Tensor:
    """Apply `fn` to blocks of at most `chunk_size` rows along `dim` and reassemble.

    Every tensor in `row_args` is sliced along `dim` (None passes through as None; a `RowMap`
    passes each block's rows, computed for that block); `shared` keyword arguments are passed
    whole to every call. `fn` must return a tensor whose `dim`
    indexes the same rows. `chunk_size=None` (or >= the row count) calls `fn` once.

    `out`: write the rows into this tensor (returned) instead of a new one; with
    `accumulate=True` they are added to it (`out + fn(...)`, the residual update in place).
    `out` may be one of the row arguments: every block is computed before it is written, so
    this is exact as long as `fn` reads only the rows it is given (and `shared` tensors that
    are not `out`). Only for inference: in-place writes are not differentiable here.

    Peak memory is one chunk's intermediates plus the assembled output, which is written in
    place (no concatenation copy).

    Example:
        >>> x = torch.randn(2, 7, 3)
        >>> y = chunk_rows(lambda t: t * 2, x, chunk_size=3)
        >>> torch.equal(y, x * 2)
        True
        >>> _ = chunk_rows(lambda t: t * 2, x, chunk_size=3, out=x, accumulate=True)  # x *= 3
    """
    present = [t for t in row_args if t is not None]
    if not present:
        raise ValueError("chunk_rows: at least one row argument must be a tensor")
    rows = present[0].shape[dim]
    for t in present:
        if t.shape[dim] != rows:
            raise ValueError(
                f"chunk_rows: row arguments disagree along dim {dim}: {t.shape[dim]} != {rows}"
            )
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(
            f"chunk_rows: chunk_size must be a positive int or None, got {chunk_size!r}"
        )
    if accumulate and out is None:
        raise ValueError("chunk_rows: accumulate=True needs an `out` tensor to add into")
    if out is None and (chunk_size is None or chunk_size >= rows):
        return fn(*(t.narrow(dim, 0, rows) if isinstance(t, RowMap) else t for t in row_args),
                  **shared)  # fmt: skip
    step = rows if chunk_size is None else chunk_size
    for start in range(0, rows, step):
        n = min(step, rows - start)
        piece = fn(*(None if t is None else t.narrow(dim, start, n) for t in row_args), **shared)
        if out is None:
            shape = list(piece.shape)
            shape[dim] = rows
            out = piece.new_empty(shape)
        target = out.narrow(dim, start, n)
        if accumulate:
            target.add_(piece)
        else:
            target.copy_(piece)
        del piece
    return out


# ----------------------------------------------------------------------------------------------
# Triangle multiplicative update
# ----------------------------------------------------------------------------------------------


def gated_projection(
    zn: Tensor, mask: Tensor | None, proj_w: Tensor, proj_b: Tensor, gate_w: Tensor, gate_b: Tensor
) -> Tensor:
    """mask * sigmoid(zn Wg^T + bg) * (zn Wp^T + bp). zn: [B, I, K, C]; mask: [B, I, K]."""
    out = torch.sigmoid(F.linear(zn, gate_w, gate_b)) * F.linear(zn, proj_w, proj_b)
    if mask is not None:
        out = out * mask.unsqueeze(-1).to(out.dtype)
    return out


def triangle_multiplicative_update(
    z: Tensor,
    mask: Tensor | None,
    *,
    ln_in_weight: Tensor,
    ln_in_bias: Tensor,
    a_proj_weight: Tensor,
    a_proj_bias: Tensor,
    a_gate_weight: Tensor,
    a_gate_bias: Tensor,
    b_proj_weight: Tensor,
    b_proj_bias: Tensor,
    b_gate_weight: Tensor,
    b_gate_bias: Tensor,
    ln_out_weight: Tensor,
    ln_out_bias: Tensor,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor,
    out_gate_weight: Tensor,
    out_gate_bias: Tensor,
    outgoing: bool,
    eps: float = 1e-5,
    chunk_size: int | None = None,
    add_into: Tensor | None = None,
) -> Tensor:
    """Triangle multiplicative update (outgoing = Algorithm 11, incoming = Algorithm 12).

    Args:
        z: [B, L, L, C] pair representation (fp32 / bf16 / fp16).
        mask: [B, L, L] pair mask, 1 = keep (masked pairs contribute nothing to the sums), or None.
        ln_in_weight, ln_in_bias: [C] (layer_norm_in).
        a_proj_weight, a_proj_bias: [Ch, C], [Ch] (linear_a_p); a_gate_*: linear_a_g; b_*: likewise.
        ln_out_weight, ln_out_bias: [Ch] (layer_norm_out).
        out_proj_weight, out_proj_bias: [C, Ch], [C] (linear_z).
        out_gate_weight, out_gate_bias: [C, C], [C] (linear_g).
        outgoing: True for "outgoing edges" x[i,j] = sum_k a[i,k] b[j,k]; False for incoming
            x[i,j] = sum_k a[k,i] b[k,j].
        eps: LayerNorm epsilon (openfold / ESMFold: 1e-5).
        chunk_size: compute the output in blocks of this many rows i (b is computed once).
        add_into: a tensor of z's shape the update is added into (in place) and returned.

    Returns:
        [B, L, L, C] in z.dtype: the update only; the caller adds the residual (and dropout).

    Example:
        >>> C = 8
        >>> p = {n: torch.randn(C) for n in ("ln_in_weight", "ln_in_bias", "ln_out_weight",
        ...      "ln_out_bias", "a_proj_bias", "a_gate_bias", "b_proj_bias", "b_gate_bias",
        ...      "out_proj_bias", "out_gate_bias")}
        >>> p.update({n: torch.randn(C, C) for n in ("a_proj_weight", "a_gate_weight",
        ...      "b_proj_weight", "b_gate_weight", "out_proj_weight", "out_gate_weight")})
        >>> triangle_multiplicative_update(torch.randn(1, 5, 5, C), None, outgoing=True, **p).shape
        torch.Size([1, 5, 5, 8])
    """
    if z.dim() != 4 or z.shape[1] != z.shape[2]:
        raise ValueError(
            f"triangle_multiplicative_update: z must be [B, L, L, C], got {tuple(z.shape)}"
        )
    if mask is not None and tuple(mask.shape) != tuple(z.shape[:3]):
        raise ValueError(
            f"triangle_multiplicative_update: mask must be {tuple(z.shape[:3])}, got {tuple(mask.shape)}"
        )
    zn = layer_norm(z, ln_in_weight, ln_in_bias, eps)
    # Incoming is outgoing on the transposed pair tensor: a_t[i, k] = a[k, i], b_t[j, k] = b[k, j].
    zt = zn if outgoing else zn.transpose(1, 2)
    mt = None if mask is None else (mask if outgoing else mask.transpose(1, 2))
    b_t = gated_projection(zt, mt, b_proj_weight, b_proj_bias, b_gate_weight, b_gate_bias)
    params = {
        "a_proj_weight": a_proj_weight, "a_proj_bias": a_proj_bias,
        "a_gate_weight": a_gate_weight, "a_gate_bias": a_gate_bias,
        "ln_out_weight": ln_out_weight, "ln_out_bias": ln_out_bias,
        "out_proj_weight": out_proj_weight, "out_proj_bias": out_proj_bias,
        "out_gate_weight": out_gate_weight, "out_gate_bias": out_gate_bias,
    }  # fmt: skip
    update = chunk_rows(
        triangle_update_rows,
        zn,
        zt,
        mt,
        chunk_size=chunk_size,
        dim=1,
        b_t=b_t,
        params=params,
        eps=eps,
    )
    return update if add_into is None else add_into.add_(update)


def contraction_dtype(dtype: torch.dtype) -> torch.dtype:
    """Storage dtype of the triangle contraction x before LayerNorm_out.

    x sums L products, so it outgrows fp16's range (65,504) on real proteins (transformers
    issue #47470: NaN after layer_norm_out); fp16 keeps it in fp32, bf16 (fp32's range) and
    fp32 keep their own dtype.
    """
    return torch.float32 if dtype == torch.float16 else dtype


def triangle_update_rows(
    zn_rows: Tensor,
    zt_rows: Tensor,
    mt_rows: Tensor | None,
    *,
    b_t: Tensor,
    params: dict[str, Tensor],
    eps: float,
) -> Tensor:
    """Rows I of the triangle update, given the whole (oriented) b projection.

    zn_rows: [B, I, L, C] rows of LN_in(z) (for the output gate); zt_rows, mt_rows: the same rows
    of the oriented pair tensor and mask (z itself for outgoing, its transpose for incoming);
    b_t: [B, L, L, Ch] oriented b; params: the a_*, ln_out_*, out_* tensors by keyword name.
    Returns [B, I, L, C] in zn_rows.dtype.
    """
    p = params
    a_t = gated_projection(
        zt_rows, mt_rows, p["a_proj_weight"], p["a_proj_bias"], p["a_gate_weight"], p["a_gate_bias"]
    )
    # [B, I, J, Ch]: x[i, j] = sum_k a_t[i, k] b_t[j, k], accumulated in fp32.
    x = torch.einsum("bikc,bjkc->bijc", a_t.float(), b_t.float())
    x = x.to(contraction_dtype(zn_rows.dtype))
    x = layer_norm(x, p["ln_out_weight"], p["ln_out_bias"], eps).to(zn_rows.dtype)
    gate = torch.sigmoid(F.linear(zn_rows, p["out_gate_weight"], p["out_gate_bias"]))
    return F.linear(x, p["out_proj_weight"], p["out_proj_bias"]) * gate


# ----------------------------------------------------------------------------------------------
# Axial (triangle / row) attention
# ----------------------------------------------------------------------------------------------


def _attend_queries(
    q: Tensor,
    gate: Tensor | None,
    bias: Tensor | None,
    *,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    scale: float,
) -> Tensor:
    """A block of queries: q, gate [B, R, Nq, H, D]; bias [B, H, Nq, Nk]; mask [B, R, Nk];
    k, v: [B, R, H, Nk, D] fp32, contiguous. Logits, softmax and sums in fp32: the query block,
    the [B, R, H, Nq, Nk] logits and their softmax are the block's temporaries (the bias and the
    masking are applied in place)."""
    qt = q.transpose(2, 3).to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    s = torch.matmul(qt.mul_(scale), k.transpose(-1, -2))  # [B, R, H, Nq, Nk]
    del qt
    if bias is not None:
        s += bias[:, None]
    has_key = None
    if mask is not None:
        keep = mask.bool()[:, :, None, None, :]  # [B, R, 1, 1, Nk]
        s.masked_fill_(~keep, float("-inf"))
        # A query with no key left attends to nothing: zeros, with zero (not NaN) gradients.
        has_key = keep.any(dim=-1, keepdim=True)  # [B, R, 1, 1, 1]
        s.masked_fill_(~has_key, 0.0)
    p = torch.softmax(s, dim=-1)
    del s
    out = torch.matmul(p, v).transpose(2, 3)  # [B, R, Nq, H, D]
    del p
    if has_key is not None:
        out = out * has_key.view(*has_key.shape[:2], 1, 1, 1)
    if gate is not None:
        out = out * torch.sigmoid(gate.float())
    return out.to(q.dtype)


def axial_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    bias: Tensor | None = None,
    mask: Tensor | None = None,
    gate: Tensor | None = None,
    scale: float | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Gated multi-head attention over N within each of R rows, with a bias shared by all rows.

    Triangle attention around the starting node passes the pair tensor's projections as
    [B, R=L, N=L, H, D]; around the ending node, the same on `x.transpose(1, 2)` views. The
    ESMFold sequence attention is R = 1 with the pair bias.

    Args:
        q, k, v: [B, R, N, H, D], any strides.
        bias: [B, H, N, N] additive logits bias shared by all rows (triangle / pair bias), or None.
        mask: [B, R, N] key mask per row, 1 = keep; a query whose keys are all masked gives zeros.
        gate: [B, R, N, H, D] gate logits: out *= sigmoid(gate), or None.
        scale: logits scale applied to q; default D ** -0.5.
        chunk_size: process queries in blocks of this many (the logits are [B, R, H, chunk, N]
            at a time; for the sequence attention, R = 1, rows would not bound them).

    Returns:
        [B, R, N, H, D] in q.dtype (softmax and sums in fp32). The output projection (linear_o)
        is the caller's.

    Example:
        >>> q = k = v = torch.randn(1, 3, 5, 2, 8)
        >>> axial_attention(q, k, v, bias=torch.zeros(1, 2, 5, 5)).shape
        torch.Size([1, 3, 5, 2, 8])
    """
    if q.dim() != 5:
        raise ValueError(f"axial_attention: q must be [B, R, N, H, D], got {tuple(q.shape)}")
    for name, t in (("k", k), ("v", v), ("gate", gate)):
        if t is not None and t.shape != q.shape:
            raise ValueError(
                f"axial_attention: {name} shape {tuple(t.shape)} != q shape {tuple(q.shape)}"
            )
    B, R, N, H, D = q.shape
    if bias is not None and tuple(bias.shape) != (B, H, N, N):
        raise ValueError(f"axial_attention: bias must be {(B, H, N, N)}, got {tuple(bias.shape)}")
    if mask is not None and tuple(mask.shape) != (B, R, N):
        raise ValueError(f"axial_attention: mask must be {(B, R, N)}, got {tuple(mask.shape)}")
    scale = D**-0.5 if scale is None else float(scale)
    # Keys and values once, [B, R, H, N, D] fp32 contiguous, for every block of queries (dim 2
    # of q, gate and bias alike).
    k = k.transpose(2, 3).to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    v = v.transpose(2, 3).to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    return chunk_rows(
        _attend_queries, q, gate, bias, chunk_size=chunk_size, dim=2, k=k, v=v, mask=mask,
        scale=scale,
    )  # fmt: skip
