"""The torch path of rotary attention (backend="torch", and "auto" where the kernels do not run).

What the CPU models run, so it is built for speed rather than as a second reference: rotary is
applied once in fp32 with the reference's `rotary_cos_sin` / `apply_rotary`, then
`torch.nn.functional.scaled_dot_product_attention` runs at the input dtype. Varlen input is
scattered into a padded `[B, max_seqlen]` batch with a key mask (one gather, one SDPA call, one
gather back) instead of a Python loop over sequences. A sequence whose keys are all masked is
given an all-keep mask for SDPA (so no NaN appears, forward or backward) and its output is then
replaced by zeros, matching the reference's convention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from esmkernels.reference import functional as ref


def padded(q, k, v, inv_freq, position_ids, key_padding_mask, scale):
    """[B, L, H, D] attention with SDPA at the input dtype, rotary applied in fp32 beforehand."""
    L = q.shape[1]
    if inv_freq is not None:
        pos = torch.arange(L, device=q.device) if position_ids is None else position_ids
        cos, sin = ref.rotary_cos_sin(pos if pos.dim() == 2 else pos[None], inv_freq)
        q, k = ref.apply_rotary(q, cos, sin), ref.apply_rotary(k, cos, sin)
    attn_mask, empty = None, None
    if key_padding_mask is not None:
        keep = key_padding_mask.bool()
        empty = ~keep.any(dim=-1)  # [B]: sequences with no key at all
        keep = keep | empty[:, None]
        attn_mask = keep[:, None, None, :]  # [B, 1, 1, L]
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask, scale=scale
    ).transpose(1, 2)
    if empty is not None:
        out = torch.where(empty[:, None, None, None], out.new_zeros(()), out)
    return out


def varlen(q, k, v, cu_seqlens, max_seqlen, inv_freq, position_ids, scale):
    """[T, H, D] packed attention: gather into [B, max_seqlen], run the padded path, gather back."""
    lens = cu_seqlens[1:] - cu_seqlens[:-1]  # [B]
    j = torch.arange(max_seqlen, device=q.device)
    valid = j[None, :] < lens[:, None]  # [B, max_seqlen]
    index = (cu_seqlens[:-1, None].long() + j[None, :]).clamp_(max=max(q.shape[0] - 1, 0))
    pad = [t[index] for t in (q, k, v)]  # [B, max_seqlen, H, D]
    pos = None if position_ids is None else position_ids[index]
    out = padded(*pad, inv_freq, pos, valid, scale)
    # Back to packed tokens by index, not by the boolean mask: the output shape [T, H, D] stays
    # static, so torch.compile traces this without a graph break.
    t = torch.arange(q.shape[0], device=q.device)
    seq = torch.searchsorted(cu_seqlens[1:].long(), t, right=True)  # [T]
    return out[seq, t - cu_seqlens[seq].long()]
