"""LayerNorm over the last dimension, fused forward and backward in Triton: `layer_norm`.

Math, for one row x of length N (statistics in fp32 whatever the input dtype):

    mean = sum(x) / N
    rstd = 1 / sqrt(sum((x - mean)^2) / N + eps)
    xhat = (x - mean) * rstd
    y    = xhat * w + b

Modules: `forward` (kernel + launcher `layer_norm_fwd`), `backward` (kernel + launcher
`layer_norm_bwd`), `op` (the custom ops `esmkernels::layer_norm_fwd` / `layer_norm_bwd`, fakes,
autograd); this module: validation, dispatch and the public function.

Limits: N <= 16384 for the fused kernel (the row lives in registers); larger hidden sizes go to
the torch path under backend="auto" and raise a ValueError naming N under a forced "triton".
"""

from __future__ import annotations

import torch

from esmkernels.ops._dispatch import choose
from esmkernels.ops.layernorm.forward import MAX_FUSED_N
from esmkernels.ops.layernorm.op import _layer_norm_fwd_op
from esmkernels.ops.registry import Op
from esmkernels.reference import functional as ref


def _validate(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"layer_norm: x must be a tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise ValueError("layer_norm: x must have at least one dimension, got a scalar")
    if not x.is_floating_point():
        raise TypeError(f"layer_norm: x.dtype={x.dtype} is not a floating dtype")
    n = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is None:
            continue
        if p.shape != (n,):
            raise ValueError(f"layer_norm: {name}.shape={tuple(p.shape)}, expected ({n},)")
        if p.device != x.device:
            raise ValueError(
                f"layer_norm: {name}.device={p.device} differs from x.device={x.device}"
            )
        if not p.is_floating_point():
            raise TypeError(f"layer_norm: {name}.dtype={p.dtype} is not a floating dtype")


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """LayerNorm over the last dimension, fused forward and backward.

    Args:
        x: [..., N], fp32 / fp16 / bf16, any leading shape. The Triton path takes N <= 16384:
            "auto" sends wider rows to the torch path, a forced "triton" raises ValueError.
        weight, bias: [N] or None (no affine scale / shift).
        eps: added to the variance.
        backend: "auto" | "triton" | "torch" (None: env ESMKERNELS_BACKEND, default "auto");
            the rule is `esmkernels.ops._dispatch`'s.

    Returns:
        y: [..., N] in x.dtype. Mean and variance are computed in fp32.

    Example:
        >>> x = torch.randn(2, 7, 320)
        >>> w, b = torch.ones(320), torch.zeros(320)
        >>> layer_norm(x, w, b, 1e-5, backend="torch").shape
        torch.Size([2, 7, 320])
    """
    _validate(x, weight, bias)
    chosen = choose("layer_norm", backend, (x, weight, bias), _unsupported(x, weight, bias))
    if chosen == "torch":
        return ref.layer_norm(x, weight, bias, eps)
    y, _, _ = _layer_norm_fwd_op(x.reshape(-1, x.shape[-1]), weight, bias, float(eps))
    return y.view(x.shape)


def _unsupported(x, weight=None, bias=None, eps=1e-5, **_) -> str | None:
    """Why the fused kernels cannot run these inputs (the registry's predicate), or None."""
    if x.shape[-1] > MAX_FUSED_N:
        return (
            f"hidden size N={x.shape[-1]} exceeds the fused kernel's limit {MAX_FUSED_N} "
            "(the row lives in registers)"
        )
    return None


def _example(length, *, device="cpu", dtype=torch.float32, requires_grad=False, real=False):
    """(args, kwargs): x [B, length, N] with weight and bias [N] (real: ESM-2 650M's N = 1280
    and ~64k tokens; else N = 64, B = 2)."""
    g = torch.Generator().manual_seed(0)
    n, batch = (1280, max(1, 65536 // length)) if real else (64, 2)
    x, w, b = (
        torch.randn(shape, generator=g).to(device, dtype).requires_grad_(requires_grad)
        for shape in ((batch, length, n), (n,), (n,))
    )
    return (x, w, b, 1e-5), {}


OP = Op(
    name="layer_norm",
    function=layer_norm,
    reference=ref.layer_norm,
    custom_ops=("esmkernels::layer_norm_fwd", "esmkernels::layer_norm_bwd"),
    kernels=("_layer_norm_fwd_kernel", "_layer_norm_bwd_kernel"),
    unsupported=_unsupported,
    example=_example,
)
