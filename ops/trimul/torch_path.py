"""Memory-lean PyTorch triangle multiplicative update for inference (the CPU fast path): `lean_update`.

Same arguments and result as `esmkernels.reference.esmfold.trunk_functional.
triangle_multiplicative_update` (the spec), computed in an order that keeps one pair-sized
temporary alive instead of four:

    for each slice of `channel_slice(chunk_size, L, Ch)` hidden channels h:
        a[h], b[h]  = gated projections of LN_in(z), channel-major [B, h, L, L], written row
                      block by row block (LN_in recomputed per block: no LN_in(z) tensor)
        x[..., h]   = a[h] @ b[h]^T (outgoing) or a[h]^T @ b[h] (incoming)    (BLAS batched matmul)
    update rows r   = sigmoid(LN_in(z)[r] Wg^T + bg) * (LN_out(x[r]) Wz^T + bz), written over x[r]

x is pixel-major [B, L, L, Ch] in `contraction_dtype(z.dtype)`: when Ch == C and the dtypes
agree (ESMFold: c_hidden = c_z; fp32 / bf16) the update is written over x row block by row
block (each block is computed before it is written), so the op's peak is z + x + three
channel slices ([B, h, L, L]: a, b and their product) + one row block's temporaries. The
matmul runs in z.dtype with BLAS's fp32 accumulation (upcast to fp32 for fp16, whose range x
outgrows), so results equal the reference's up to summation order.

Offload (`offload=True`, with `add_into`): x lives in host memory (`esmkernels.core.memory.
host_empty`, pinned on CUDA); each channel slice's product is copied out as it is made, and the
output phase copies x back one row block at a time, adding the update into `add_into`. On the
device the op then holds z, the slices and one row block: about one pair tensor instead of
two, paid for with two pair-sized host transfers. Same math as without it.

Not differentiable (it writes into buffers): the op runs it only with autograd off; with
autograd on it runs the reference. The Triton path chunks the same hidden channels
(`channel_slice`), see `esmkernels.ops.trimul.forward`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from esmkernels.core.memory import host_empty
from esmkernels.ops.trimul.forward import channel_slice
from esmkernels.reference.esmfold.trunk_functional import (
    chunk_rows,
    contraction_dtype,
    gated_projection,
)
from esmkernels.reference.functional import layer_norm

Tensor = torch.Tensor


def lean_update(
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
    offload: bool = False,
) -> Tensor:
    """Triangle multiplicative update, inference only; arguments as the reference's.

    Args:
        z: [B, L, L, C]; mask: [B, L, L] (1 = keep) or None.
        chunk_size: rows per block of the projections and of the output; the hidden channels
            go `channel_slice(chunk_size, L, Ch)` at a time.
        add_into: [B, L, L, C] (z itself in the trunk): the update is added into it, a row
            block at a time, and it is returned.
        offload: keep the contraction x in host memory (needs `add_into`); see the module
            docstring.

    Returns:
        [B, L, L, C] update in z.dtype (possibly sharing storage with no input), or `add_into`
        with the update added.

    Example:
        >>> C = 8
        >>> p = {n: torch.randn(C) for n in ("ln_in_weight", "ln_in_bias", "ln_out_weight",
        ...      "ln_out_bias", "a_proj_bias", "a_gate_bias", "b_proj_bias", "b_gate_bias",
        ...      "out_proj_bias", "out_gate_bias")}
        >>> p.update({n: torch.randn(C, C) for n in ("a_proj_weight", "a_gate_weight",
        ...      "b_proj_weight", "b_gate_weight", "out_proj_weight", "out_gate_weight")})
        >>> with torch.no_grad():
        ...     lean_update(torch.randn(1, 5, 5, C), None, outgoing=True, **p).shape
        torch.Size([1, 5, 5, 8])
    """
    if torch.is_grad_enabled():
        raise RuntimeError(
            "trimul.torch_path.lean_update is inference-only: call it under "
            "torch.no_grad() / torch.inference_mode() (the reference op is differentiable)"
        )
    if z.dim() != 4 or z.shape[1] != z.shape[2]:
        raise ValueError(
            f"triangle_multiplicative_update: z must be [B, L, L, C], got {tuple(z.shape)}"
        )
    B, L, _, C = z.shape
    ch = a_proj_weight.shape[0]
    if mask is not None and tuple(mask.shape) != (B, L, L):
        raise ValueError(
            f"triangle_multiplicative_update: mask must be {(B, L, L)}, got {tuple(mask.shape)}"
        )
    if offload and add_into is None:
        raise ValueError("triangle_multiplicative_update: offload=True needs add_into")
    x_dtype = contraction_dtype(z.dtype)
    if offload:
        x = host_empty((B, L, L, ch), x_dtype, z.device)
    else:
        x = z.new_empty(B, L, L, ch, dtype=x_dtype)
    step = channel_slice(chunk_size, L, ch)
    for h0 in range(0, ch, step):
        h = slice(h0, min(h0 + step, ch))
        n = h.stop - h0
        # a and b side by side, channel-major: each channel an L x L matrix.
        ab = z.new_empty(B, 2 * n, L, L)
        weights = [
            torch.cat([a_w[h], b_w[h]])
            for a_w, b_w in (
                (a_proj_weight, b_proj_weight),
                (a_proj_bias, b_proj_bias),
                (a_gate_weight, b_gate_weight),
                (a_gate_bias, b_gate_bias),
            )
        ]
        chunk_rows(
            _project_rows,
            z,
            mask,
            chunk_size=chunk_size,
            out=ab.permute(0, 2, 3, 1),  # rows written through a [B, L, L, 2h] view
            ln=(ln_in_weight, ln_in_bias, eps),
            weights=weights,
        )
        a, b = ab[:, :n], ab[:, n:]
        if x_dtype != z.dtype:
            a, b = a.to(x_dtype), b.to(x_dtype)
        # outgoing: x[i, j] = sum_k a[i, k] b[j, k]; incoming: x[i, j] = sum_k a[k, i] b[k, j]
        prod = a @ b.transpose(-1, -2) if outgoing else a.transpose(-1, -2) @ b  # [B, h, L, L]
        del a, b, ab
        x[..., h].copy_(prod.permute(0, 2, 3, 1))
        del prod
    out = dict(
        ln_in=(ln_in_weight, ln_in_bias),
        ln_out=(ln_out_weight, ln_out_bias),
        out_w=(out_proj_weight, out_proj_bias, out_gate_weight, out_gate_bias),
        eps=eps,
    )
    if add_into is not None:
        step = L if chunk_size is None else min(chunk_size, L)
        for r0 in range(0, L, step):
            r = slice(r0, min(r0 + step, L))
            x_rows = x[:, r]
            if offload:  # one row block back on the device
                x_rows = torch.empty(x_rows.shape, dtype=x_dtype, device=z.device).copy_(x_rows)
            add_into[:, r] += _output_rows(z[:, r], x_rows, **out)
        return add_into
    in_place = ch == C and x_dtype == z.dtype
    return chunk_rows(
        _output_rows,
        z,
        x,
        chunk_size=chunk_size,
        out=x if in_place else None,
        **out,
    )


def _project_rows(
    z: Tensor,
    mask: Tensor | None,
    *,
    ln: tuple[Tensor, Tensor, float],
    weights: list[Tensor],
) -> Tensor:
    """Rows [B, I, L, C] of z -> [B, I, L, 2h]: the reference's gated projection of LN_in(z)."""
    wp, bp, wg, bg = weights
    return gated_projection(layer_norm(z, *ln), mask, wp, bp, wg, bg)


def _output_rows(
    z: Tensor,
    x: Tensor,
    *,
    ln_in: tuple[Tensor, Tensor],
    ln_out: tuple[Tensor, Tensor],
    out_w: tuple[Tensor, ...],
    eps: float,
) -> Tensor:
    """Rows of z [B, I, L, C] and of x [B, I, L, Ch] -> rows of the update [B, I, L, C]."""
    wz, bz, wg, bg = out_w
    y = F.linear(layer_norm(x, *ln_out, eps).to(z.dtype), wz, bz)
    y.mul_(torch.sigmoid(F.linear(layer_norm(z, *ln_in, eps), wg, bg)))
    return y


__all__ = ["lean_update"]
