"""Axial attention as custom ops (`esmkernels::axial_attention_fwd` / `axial_attention_bwd`),
run over blocks of rows.

The forward keeps the base-2 log-sum-exp [B, R, H, N] fp32 and, with a gate, the ungated output
for the backward; the fakes show both. Absent outputs are empty tensors (custom ops cannot
return None). The backward op is registered as the forward op's autograd (see
`esmkernels.ops._custom_ops`).
"""

from __future__ import annotations

import torch

from esmkernels.ops._custom_ops import define
from esmkernels.ops._dispatch import poison_empty
from esmkernels.ops.axial.backward import axial_attention_bwd, axial_attention_bwd_preprocess
from esmkernels.ops.axial.forward import axial_attention_fwd, empty_like_poisoned

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
