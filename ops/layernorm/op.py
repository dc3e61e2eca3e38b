"""LayerNorm as custom ops (`esmkernels::layer_norm_fwd` / `layer_norm_bwd`).

Fake implementations give y and the fp32 mean and rstd saved for the backward; the backward op
is registered as the forward op's autograd (see `esmkernels.ops._custom_ops`).
"""

from __future__ import annotations

import torch

from esmkernels.ops._custom_ops import define
from esmkernels.ops.layernorm.backward import layer_norm_bwd
from esmkernels.ops.layernorm.forward import layer_norm_fwd


def _fwd_fake(x2d, weight, bias, eps):
    M, N = x2d.shape
    stats = [x2d.new_empty(M, dtype=torch.float32) for _ in range(2)]
    return (x2d.new_empty(M, N), *stats)


def _bwd_fake(dy2d, x2d, weight, bias, mean, rstd):
    return [x2d.new_empty(x2d.shape)] + [
        torch.empty_like(p) for p in (weight, bias) if p is not None
    ]


@define("layer_norm_bwd", fake=_bwd_fake)
def _layer_norm_bwd_op(
    dy2d: torch.Tensor,
    x2d: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
) -> list[torch.Tensor]:
    """[dx, dweight (if weight), dbias (if bias)]: custom ops cannot return None."""
    dx, dw, db = layer_norm_bwd(dy2d, x2d, weight, bias, mean, rstd)
    return [dx] + [g for g in (dw, db) if g is not None]


def _setup_context(ctx, inputs, output):
    x2d, weight, bias, _ = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x2d, weight, bias, mean, rstd)
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, dy, _dmean, _drstd):
    x2d, weight, bias, mean, rstd = ctx.saved_tensors
    grads = iter(_layer_norm_bwd_op(dy, x2d, weight, bias, mean, rstd))
    dx = next(grads)
    dw = None if weight is None else next(grads)
    db = None if bias is None else next(grads)
    return dx, dw, db, None


@define("layer_norm_fwd", fake=_fwd_fake, backward=_backward, setup_context=_setup_context)
def _layer_norm_fwd_op(
    x2d: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y [M, N], mean [M] fp32, rstd [M] fp32); differentiable in x2d, weight and bias."""
    return layer_norm_fwd(x2d, weight, bias, eps)
