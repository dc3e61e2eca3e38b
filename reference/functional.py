"""Plain-PyTorch reference ops for the language model: the oracle for `esmkernels.ops`.

Layout convention for attention: q, k, v are `[B, L, H, D]` (padded) or `[T, H, D]` with
`cu_seqlens` (varlen: sequences packed back to back). Masks use 1 = keep.

ESM rotary embedding (rotate-half convention, ESM-2):
    theta[p, j] = p * inv_freq[j]                      j < D/2
    rot(x)[p]   = x[p] * cos(theta[p]) + rotate_half(x[p]) * sin(theta[p])
    rotate_half([x1, x2]) = [-x2, x1]
with cos/sin repeated over the two halves. q is scaled by D**-0.5 before rotation, as ESM does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 for half inputs, float64 kept (so float64 gradchecks of modules are exact)."""
    return torch.promote_types(x.dtype, torch.float32)


def layer_norm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """LayerNorm over the last dimension. x: [..., N]; weight, bias: [N]. Statistics in fp32."""
    ct = _compute_dtype(x)
    out = F.layer_norm(
        x.to(ct),
        (x.shape[-1],),
        None if weight is None else weight.to(ct),
        None if bias is None else bias.to(ct),
        eps,
    )
    return out.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """positions: [...] (int or float), inv_freq: [D/2] -> cos, sin: [..., D] in fp32 (float64
    when inv_freq is float64)."""
    ct = _compute_dtype(inv_freq)
    theta = positions.to(ct)[..., None] * inv_freq.to(ct)
    emb = torch.cat((theta, theta), dim=-1)
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, L, H, D]; cos, sin: [B or 1, L, D] fp32 -> rotated x in x.dtype."""
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    xc = x.to(torch.promote_types(_compute_dtype(x), cos.dtype))
    return (xc * c + rotate_half(xc) * s).to(x.dtype)


def rotary_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    inv_freq: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    return_probs: bool = False,
    dropout_p: float = 0.0,
    training: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention with ESM's rotary embedding applied to q and k.

    Args:
        q, k, v: [B, L, H, D].
        inv_freq: [D/2] rotary inverse frequencies (the checkpoint's stored values); None means
            no rotary (ESM-1b / ESM-1v, absolute positions added upstream).
        position_ids: [B, L] or [L] rotary positions; default 0..L-1.
        key_padding_mask: [B, L], 1 = keep. A query whose keys are all masked gets zeros.
        scale: multiplier applied to q before rotation; default D**-0.5.
        return_probs: also return the attention probabilities [B, H, L, L] (fp32).

    Returns:
        out [B, L, H, D] in q.dtype (and probs when asked).
    """
    B, L, H, D = q.shape
    scale = D**-0.5 if scale is None else scale
    ct = _compute_dtype(q)
    qf = q.to(ct) * scale
    kf = k.to(ct)
    if inv_freq is not None:
        if position_ids is None:
            position_ids = torch.arange(L, device=q.device)
        pos = position_ids if position_ids.dim() == 2 else position_ids[None]
        cos, sin = rotary_cos_sin(pos, inv_freq)
        qf = apply_rotary(qf, cos, sin)
        kf = apply_rotary(kf, cos, sin)
    scores = torch.einsum("bqhd,bkhd->bhqk", qf, kf)
    if key_padding_mask is not None:
        keep = key_padding_mask.bool()[:, None, None, :]
        scores = scores.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    # Rows with every key masked are all -inf -> NaN; they give zeros by definition.
    probs = torch.nan_to_num(probs, nan=0.0)
    p_used = F.dropout(probs, p=dropout_p, training=training) if dropout_p > 0 else probs
    out = torch.einsum("bhqk,bkhd->bqhd", p_used, v.to(ct)).to(q.dtype)
    return (out, probs) if return_probs else out


def varlen_rotary_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    inv_freq: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Varlen reference: q, k, v [T, H, D] packed; cu_seqlens [B+1] int; position_ids [T]
    (default: 0..len-1 restarting in each sequence). Each sequence attends only to itself."""
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for s, e in zip(bounds[:-1], bounds[1:]):
        if e == s:
            continue
        pos = None if position_ids is None else position_ids[s:e][None]
        out[s:e] = rotary_attention(
            q[None, s:e],
            k[None, s:e],
            v[None, s:e],
            inv_freq=inv_freq,
            position_ids=pos,
            scale=scale,
        )[0]
    return out
