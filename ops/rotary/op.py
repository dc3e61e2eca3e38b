"""Rotary attention as custom ops (`esmkernels::rotary_attention_fwd` / `rotary_attention_bwd`).

Fake implementations give the output and the fp32 log-sum-exp the backward keeps; the backward
op is registered as the forward op's autograd (see `esmkernels.ops._custom_ops`).
"""

from __future__ import annotations

import torch

from esmkernels.ops._custom_ops import define
from esmkernels.ops.rotary.backward import rotary_attention_bwd
from esmkernels.ops.rotary.forward import rotary_attention_fwd


def _fwd_fake(q, k, v, inv_freq, position_ids, key_padding_mask, cu_seqlens, max_seqlen, scale):
    if cu_seqlens is None:
        B, L, H, _ = q.shape
        lse_shape = (B, H, L)
    else:
        T, H, _ = q.shape
        lse_shape = (H, T)
    return q.new_empty(q.shape), q.new_empty(lse_shape, dtype=torch.float32)


def _bwd_fake(do, q, k, v, out, lse, inv_freq, position_ids, key_padding_mask, cu_seqlens,
              max_seqlen, scale):  # fmt: skip
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


@define("rotary_attention_bwd", fake=_bwd_fake)
def _rotary_attention_bwd_op(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    inv_freq: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    side = dict(inv_freq=inv_freq, position_ids=position_ids, key_padding_mask=key_padding_mask)
    return rotary_attention_bwd(
        do, q, k, v, out, lse, **side, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, scale=scale
    )


def _setup_context(ctx, inputs, output):
    q, k, v, inv_freq, position_ids, key_padding_mask, cu_seqlens, max_seqlen, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, inv_freq, position_ids, key_padding_mask, cu_seqlens)
    ctx.max_seqlen, ctx.scale = max_seqlen, scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, do, _dlse):
    q, k, v, out, lse, *side = ctx.saved_tensors
    dq, dk, dv = _rotary_attention_bwd_op(do, q, k, v, out, lse, *side, ctx.max_seqlen, ctx.scale)
    return dq, dk, dv, None, None, None, None, None, None


@define("rotary_attention_fwd", fake=_fwd_fake, backward=_backward, setup_context=_setup_context)
def _rotary_attention_fwd_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    inv_freq: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse): see `rotary_attention_fwd`; differentiable in q, k and v."""
    side = dict(inv_freq=inv_freq, position_ids=position_ids, key_padding_mask=key_padding_mask)
    return rotary_attention_fwd(
        q, k, v, **side, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, scale=scale
    )
