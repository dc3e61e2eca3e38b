"""Axial attention as custom ops (`esmkernels::axial_attention_fwd` / `axial_attention_bwd`).

The forward keeps the base-2 log-sum-exp [B, R, H, N] fp32 and, with a gate, the ungated output
for the backward; the fakes show both. Absent outputs are empty tensors (custom ops cannot
return None). The backward op is registered as the forward op's autograd (see
`esmkernels.ops._custom_ops`). Each op launches its kernels once over every row and query: the
kernels hold one tile of logits per program, so there is nothing to chunk (`chunk_size` is the
torch path's, see `esmkernels.ops.axial`).
"""

from __future__ import annotations

import torch

from esmkernels.ops._custom_ops import define
from esmkernels.ops.axial.backward import axial_attention_bwd, axial_attention_bwd_preprocess
from esmkernels.ops.axial.forward import axial_attention_fwd, empty_like_poisoned


def _fwd_fake(q, k, v, bias, mask, gate, scale, keep_ungated):
    B, R, N, H, _ = q.shape
    lse = q.new_empty((B, R, H, N), dtype=torch.float32)
    ungated = torch.empty_like(q) if gate is not None and keep_ungated else q.new_empty(0)
    return torch.empty_like(q), lse, ungated


def _bwd_fake(dout, q, k, v, bias, mask, gate, ungated, lse, scale, need_dbias):
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
    need_dbias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv, dgate, dbias); dgate / dbias empty when there is no gate / no dbias wanted.

    `ungated` is the forward's output before the gate (its output when there is no gate)."""
    dou, dgate, delta = axial_attention_bwd_preprocess(dout, ungated, gate)
    dq, dk, dv, dbias = axial_attention_bwd(
        dou, q, k, v, bias, mask, lse, delta, scale, need_dbias=need_dbias
    )
    dgate = q.new_empty(0) if dgate is None else dgate  # distinct empties: outputs may not alias
    return dq, dk, dv, dgate, q.new_empty(0) if dbias is None else dbias.to(bias.dtype)


def _setup_context(ctx, inputs, output):
    q, k, v, bias, mask, gate, scale, _ = inputs
    out, lse, ungated = output
    ctx.save_for_backward(q, k, v, bias, mask, gate, out if gate is None else ungated, lse)
    ctx.scale = scale
    ctx.mark_non_differentiable(lse, ungated)


def _backward(ctx, dout, _dlse, _dungated):
    q, k, v, bias, mask, gate, ungated, lse = ctx.saved_tensors
    need_dbias = bias is not None and ctx.needs_input_grad[3]
    dq, dk, dv, dgate, dbias = _axial_attention_bwd_op(
        dout, q, k, v, bias, mask, gate, ungated, lse, ctx.scale, need_dbias
    )
    dgate = dgate if gate is not None else None
    dbias = dbias if need_dbias else None
    return dq, dk, dv, dbias, None, dgate, None, None


@define("axial_attention_fwd", fake=_fwd_fake, backward=_backward, setup_context=_setup_context)
def _axial_attention_fwd_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None,
    gate: torch.Tensor | None,
    scale: float,
    keep_ungated: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, lse, ungated or empty): `axial_attention_fwd`; differentiable in q, k, v, bias
    and gate (the backward needs keep_ungated=True when there is a gate)."""
    ungated = empty_like_poisoned(q) if gate is not None and keep_ungated else None
    out, lse, ungated = axial_attention_fwd(q, k, v, bias, mask, gate, scale, ungated=ungated)
    return out, lse, q.new_empty(0) if ungated is None else ungated
