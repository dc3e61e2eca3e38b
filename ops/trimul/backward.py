"""Backward of the triangle multiplicative update: a documented recompute, not a kernel.

Recomputed through the functional reference inside the backward custom op
(`esmkernels::triangle_multiplicative_bwd`, registered as the autograd of
`triangle_multiplicative_fwd`; fake implementations let `torch.compile` trace both), which the
issue allows: correct by construction, not fast. Memory stays O(L^2 C) and below eager
PyTorch's: the recomputation is cut into LN_in, the shared b projection and blocks of output
rows (`chunk_size`, default 128), each block back-propagated before the next
(`trimul_bwd_recompute`): ~6 |z| peak instead of ~12 |z|. A kernel backward is future work.
"""

from __future__ import annotations

import torch

from esmkernels.reference.esmfold import trunk_functional as ref
from esmkernels.reference.functional import layer_norm

BWD_ROWS = 128  # default row block of the recomputed backward (its graph: ~BWD_ROWS / L of ~6 |z|)


def trimul_bwd_recompute(
    dout: torch.Tensor,
    z: torch.Tensor,
    mask: torch.Tensor | None,
    p: dict[str, torch.Tensor],
    outgoing: bool,
    eps: float,
    chunk_size: int | None,
    needs: dict[str, bool],
) -> dict[str, torch.Tensor | None]:
    """Gradients by recomputation through the functional reference, one row block at a time.

    The graph is cut in three: LN_in (on z), the b projection (on LN_in(z), shared by every
    output row) and the output rows (on detached LN_in(z) and b). Each row block's graph is
    built and back-propagated before the next, accumulating into the detached leaves; then b's
    and LN_in's graphs are back-propagated once. Peak: z, LN_in(z) and b with their gradients
    plus one block's graph, about 6 |z|, instead of the ~12 |z| of one whole autograd graph.
    `needs` maps "z" and each parameter name to whether its gradient is wanted.
    """
    L = z.shape[1]
    step = chunk_size or BWD_ROWS
    with torch.enable_grad():
        z_ = z.detach().requires_grad_(needs["z"])
        q = {n: t.detach().requires_grad_(needs[n]) for n, t in p.items()}
        zn = layer_norm(z_, q["ln_in_weight"], q["ln_in_bias"], eps)
        zn_leaf = zn.detach().requires_grad_()
        zt = zn_leaf if outgoing else zn_leaf.transpose(1, 2)
        mt = None if mask is None else (mask if outgoing else mask.transpose(1, 2))
        b_t = ref.gated_projection(
            zt, mt, q["b_proj_weight"], q["b_proj_bias"], q["b_gate_weight"], q["b_gate_bias"]
        )
        b_leaf = b_t.detach().requires_grad_()
        for r0 in range(0, L, step):
            rows = slice(r0, min(r0 + step, L))
            out = ref.triangle_update_rows(
                zn_leaf[:, rows], zt[:, rows], None if mt is None else mt[:, rows],
                b_t=b_leaf, params=q, eps=eps,
            )  # fmt: skip
            torch.autograd.backward(out, dout[:, rows])
            del out
        if b_leaf.grad is not None:
            torch.autograd.backward(b_t, b_leaf.grad)
        del b_leaf
        if zn.requires_grad and zn_leaf.grad is not None:
            torch.autograd.backward(zn, zn_leaf.grad)
    grads = {n: t.grad if needs[n] else None for n, t in q.items()}
    grads["z"] = z_.grad if needs["z"] else None
    return grads
