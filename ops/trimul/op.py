"""The triangle multiplicative update as custom ops (`esmkernels::triangle_multiplicative_fwd` /
`triangle_multiplicative_bwd`): the kernel forward and the recomputing backward as opaque
operators with fake implementations, the backward registered as the forward's autograd (see
`esmkernels.ops._custom_ops`). The forward saves nothing beyond its inputs.
"""

from __future__ import annotations

import torch

from esmkernels.ops._custom_ops import autograd_inside_op, define
from esmkernels.ops.trimul.backward import trimul_bwd_recompute
from esmkernels.ops.trimul.forward import PARAM_NAMES, trimul_fwd


def _fwd_fake(z, mask, params, outgoing, eps, chunk_size):
    return z.new_empty(z.shape)


def _bwd_fake(dout, z, mask, params, outgoing, eps, chunk_size, needs):
    return [t.new_empty(t.shape if need else 0) for t, need in zip((z, *params), needs)]


@define("triangle_multiplicative_bwd", fake=_bwd_fake)
def _trimul_bwd_op(
    dout: torch.Tensor,
    z: torch.Tensor,
    mask: torch.Tensor | None,
    params: list[torch.Tensor],
    outgoing: bool,
    eps: float,
    chunk_size: int | None,
    needs: list[bool],
) -> list[torch.Tensor]:
    """[dz, d<param> in PARAM_NAMES order]; an empty tensor where `needs` is False (custom ops
    cannot return None)."""
    names = ("z", *PARAM_NAMES)
    p = dict(zip(PARAM_NAMES, params))
    with autograd_inside_op():
        g = trimul_bwd_recompute(
            dout, z, mask, p, outgoing, eps, chunk_size, dict(zip(names, needs))
        )
    return [g[n] if g[n] is not None else z.new_empty(0) for n in names]


def _setup_context(ctx, inputs, output):
    z, mask, params, outgoing, eps, chunk_size = inputs
    ctx.save_for_backward(z, mask, *params)
    ctx.outgoing, ctx.eps, ctx.chunk_size = outgoing, eps, chunk_size


def _backward(ctx, dout):
    z, mask, *params = ctx.saved_tensors
    needs = [bool(ctx.needs_input_grad[0]), *map(bool, ctx.needs_input_grad[2])]
    grads = _trimul_bwd_op(dout, z, mask, params, ctx.outgoing, ctx.eps, ctx.chunk_size, needs)
    dz, *dparams = (g if need else None for g, need in zip(grads, needs))
    return dz, None, dparams, None, None, None


@define(
    "triangle_multiplicative_fwd", fake=_fwd_fake, backward=_backward, setup_context=_setup_context
)
def _trimul_fwd_op(
    z: torch.Tensor,
    mask: torch.Tensor | None,
    params: list[torch.Tensor],
    outgoing: bool,
    eps: float,
    chunk_size: int | None,
) -> torch.Tensor:
    """`trimul_fwd` with the parameters in PARAM_NAMES order; differentiable in z and them."""
    return trimul_fwd(z, mask, dict(zip(PARAM_NAMES, params)), outgoing, eps, chunk_size)
