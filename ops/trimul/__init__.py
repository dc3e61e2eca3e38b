"""Fused triangle multiplicative update (AlphaFold 2 Algorithms 11 / 12, ESMFold's tri_mul_out /
tri_mul_in): `triangle_multiplicative_update`.

The spec is `esmkernels.reference.esmfold.trunk_functional.triangle_multiplicative_update`:

    zn = LN_in(z);  a = m * sigmoid(zn Wag^T + bag) * (zn Wap^T + bap);  b likewise
    outgoing: x[i, j] = sum_k a[i, k] b[j, k]        incoming: x[i, j] = sum_k a[k, i] b[k, j]
    update = sigmoid(zn Wg^T + bg) * (LN_out(x) Wz^T + bz)

Modules: `forward` (projection, contraction and output kernels, launchers, `trimul_fwd`),
`backward` (the row-blocked recompute through the reference), `op` (the custom ops
`esmkernels::triangle_multiplicative_fwd` / `triangle_multiplicative_bwd`, fakes, autograd),
`torch_path` (the memory-lean PyTorch path for inference); this module: validation, dispatch
and the public function.

Paths: the kernels (forward) and a row-blocked recompute (backward); with backend "torch", the
reference when gradients are needed, else the lean path, which keeps one pair-sized temporary
instead of four. `chunk_size` counts output rows i on all of them; each derives its own
tiling: the hidden channels of the kernels' and the lean path's contraction go
`channel_slice(chunk_size, L, Ch)` at a time, the recompute goes `chunk_size` rows at a time
(128 when None).
"""

from __future__ import annotations

import torch

from esmkernels.ops._dispatch import choose
from esmkernels.ops.registry import Op
from esmkernels.ops.trimul import forward, torch_path
from esmkernels.ops.trimul.forward import PARAM_NAMES, channel_slice
from esmkernels.ops.trimul.op import _trimul_fwd_op
from esmkernels.reference.esmfold import trunk_functional as ref

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_CHANNELS = 256


def _check_args(z, mask, params, chunk_size) -> None:
    if not isinstance(z, torch.Tensor) or z.dim() != 4 or z.shape[1] != z.shape[2]:
        raise ValueError(
            f"triangle_multiplicative_update: z must be [B, L, L, C], got {getattr(z, 'shape', z)!r}"
        )
    if z.dtype not in _DTYPES:
        raise TypeError(
            f"triangle_multiplicative_update: z dtype {z.dtype} is not one of {_DTYPES}"
        )
    B, L, _, C = z.shape
    if mask is not None and tuple(mask.shape) != (B, L, L):
        raise ValueError(
            f"triangle_multiplicative_update: mask must be {(B, L, L)}, got {tuple(mask.shape)}"
        )
    ch = params["a_proj_weight"].shape[0]
    expected = {
        "ln_in_weight": (C,), "ln_in_bias": (C,),
        "a_proj_weight": (ch, C), "a_proj_bias": (ch,), "a_gate_weight": (ch, C), "a_gate_bias": (ch,),
        "b_proj_weight": (ch, C), "b_proj_bias": (ch,), "b_gate_weight": (ch, C), "b_gate_bias": (ch,),
        "ln_out_weight": (ch,), "ln_out_bias": (ch,),
        "out_proj_weight": (C, ch), "out_proj_bias": (C,), "out_gate_weight": (C, C), "out_gate_bias": (C,),
    }  # fmt: skip
    for name, shape in expected.items():
        t = params[name]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            raise ValueError(
                f"triangle_multiplicative_update: {name} must have shape {shape}, got {tuple(getattr(t, 'shape', ()))}"
            )
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(
            f"triangle_multiplicative_update: chunk_size must be a positive int or None, got {chunk_size!r}"
        )


def triangle_multiplicative_update(
    z: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    ln_in_weight: torch.Tensor,
    ln_in_bias: torch.Tensor,
    a_proj_weight: torch.Tensor,
    a_proj_bias: torch.Tensor,
    a_gate_weight: torch.Tensor,
    a_gate_bias: torch.Tensor,
    b_proj_weight: torch.Tensor,
    b_proj_bias: torch.Tensor,
    b_gate_weight: torch.Tensor,
    b_gate_bias: torch.Tensor,
    ln_out_weight: torch.Tensor,
    ln_out_bias: torch.Tensor,
    out_proj_weight: torch.Tensor,
    out_proj_bias: torch.Tensor,
    out_gate_weight: torch.Tensor,
    out_gate_bias: torch.Tensor,
    outgoing: bool,
    eps: float = 1e-5,
    chunk_size: int | None = None,
    backend: str | None = None,
    add_into: torch.Tensor | None = None,
    offload: bool = False,
) -> torch.Tensor:
    """Fused triangle multiplicative update (outgoing = Algorithm 11, incoming = Algorithm 12).

    Args:
        z: [B, L, L, C] pair representation, fp32 / bf16 / fp16, any strides.
        mask: [B, L, L] pair mask, 1 = keep (masked pairs contribute nothing), or None.
        ln_in_*: [C]; a_/b_ proj and gate weights [Ch, C] and biases [Ch]; ln_out_*: [Ch];
            out_proj_weight [C, Ch] (linear_z), out_gate_weight [C, C] (linear_g), biases [C].
            (HF ESMFold names: layer_norm_in, linear_a_p, linear_a_g, linear_b_p, linear_b_g,
            layer_norm_out, linear_z, linear_g.)
        outgoing: True for x[i,j] = sum_k a[i,k] b[j,k]; False for x[i,j] = sum_k a[k,i] b[k,j].
        eps: LayerNorm epsilon.
        chunk_size: rows i of the output per block (None: unchunked); the contraction's
            hidden channels go `channel_slice(chunk_size, L, Ch)` at a time. Outputs do not
            depend on it beyond summation order.
        backend: "auto" | "triton" | "torch" (None: env ESMKERNELS_BACKEND; the rule is
            `esmkernels.ops._dispatch`'s). The kernels take C, Ch <= 256: "auto" sends wider
            inputs to the torch path, a forced "triton" raises ValueError.

        add_into: [B, L, L, C] tensor (z itself in the inference trunk) the update is added
            into, in place, which is then returned. Without gradients the kernels then add
            their output `chunk_size` rows at a time and never hold a full update (the pair
            floor of this op goes from 3 pair tensors to 2: z and the contraction).
        offload: inference with `add_into` only: keep the contraction x ([B, L, L, Ch]) in host
            memory (pinned on CUDA) and bring it back a row block at a time; the op's device
            floor goes from 2 pair tensors to about 1.1, for two pair-sized host transfers.
            Same results. `EsmForProteinFolding` turns it on when a fold fits only that way.

    Returns:
        [B, L, L, C] in z.dtype: the update (the caller adds the residual and dropout), or
        `add_into` with the update added.

    Example:
        >>> C = 16
        >>> p = {n: torch.randn(C) for n in ("ln_in_weight", "ln_in_bias", "ln_out_weight",
        ...      "ln_out_bias", "a_proj_bias", "a_gate_bias", "b_proj_bias", "b_gate_bias",
        ...      "out_proj_bias", "out_gate_bias")}
        >>> p.update({n: torch.randn(C, C) / 4 for n in ("a_proj_weight", "a_gate_weight",
        ...      "b_proj_weight", "b_gate_weight", "out_proj_weight", "out_gate_weight")})
        >>> triangle_multiplicative_update(torch.randn(1, 6, 6, C), None, outgoing=False, **p).shape
        torch.Size([1, 6, 6, 16])
    """
    params = {
        "ln_in_weight": ln_in_weight, "ln_in_bias": ln_in_bias,
        "a_proj_weight": a_proj_weight, "a_proj_bias": a_proj_bias,
        "a_gate_weight": a_gate_weight, "a_gate_bias": a_gate_bias,
        "b_proj_weight": b_proj_weight, "b_proj_bias": b_proj_bias,
        "b_gate_weight": b_gate_weight, "b_gate_bias": b_gate_bias,
        "ln_out_weight": ln_out_weight, "ln_out_bias": ln_out_bias,
        "out_proj_weight": out_proj_weight, "out_proj_bias": out_proj_bias,
        "out_gate_weight": out_gate_weight, "out_gate_bias": out_gate_bias,
    }  # fmt: skip
    _check_args(z, mask, params, chunk_size)
    if add_into is not None and (add_into.shape != z.shape or add_into.dtype != z.dtype):
        raise ValueError(
            "triangle_multiplicative_update: add_into must have z's shape and dtype "
            f"{tuple(z.shape)} {z.dtype}, got {tuple(add_into.shape)} {add_into.dtype}"
        )
    tensors = (z, mask, *params.values())
    problem = _unsupported(z, mask, **params)
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if offload and (grad or add_into is None or not add_into.is_contiguous()):
        raise ValueError(
            "triangle_multiplicative_update: offload=True is for inference into a contiguous "
            "add_into (no gradients)"
        )
    if choose("triangle_multiplicative_update", backend, tensors, problem) == "torch":
        if offload:
            with torch.no_grad():
                return torch_path.lean_update(
                    z, mask, **params, outgoing=outgoing, eps=eps, chunk_size=chunk_size,
                    add_into=add_into, offload=True,
                )  # fmt: skip
        if grad:
            update = ref.triangle_multiplicative_update(
                z, mask, **params, outgoing=outgoing, eps=eps, chunk_size=chunk_size
            )
        else:
            with torch.no_grad():  # nothing to differentiate: the lean path writes into buffers
                update = torch_path.lean_update(
                    z, mask, **params, outgoing=outgoing, eps=eps, chunk_size=chunk_size
                )
        return update if add_into is None else add_into.add_(update)
    ordered = [params[n] for n in PARAM_NAMES]
    if add_into is not None and not grad and add_into.is_contiguous():
        with torch.no_grad():  # inference: the kernels add their output into add_into by rows
            p = dict(zip(PARAM_NAMES, ordered))
            return forward.trimul_fwd(
                z, mask, p, bool(outgoing), float(eps), chunk_size, add_into, offload=offload
            )
    update = _trimul_fwd_op(z, mask, ordered, bool(outgoing), float(eps), chunk_size)
    return update if add_into is None else add_into.add_(update)


def _unsupported(z, mask=None, **params) -> str | None:
    """Why the kernels cannot run these inputs (the registry's predicate), or None."""
    C, ch = z.shape[-1], params["a_proj_weight"].shape[0]
    if max(C, ch) > MAX_CHANNELS:
        return f"the kernels take up to {MAX_CHANNELS} channels, got C={C}, Ch={ch}"
    return None


def _example(length, *, device="cpu", dtype=torch.float32, requires_grad=False, real=False):
    """(args, kwargs): z [1, length, length, C] with its pair mask (the last length // 16
    residues masked) and the module's parameters (C = Ch = 128, ESMFold's c_z, when real;
    else 16); outgoing."""
    g = torch.Generator().manual_seed(0)
    C = 128 if real else 16

    def randn(*shape, scale=1.0):
        t = torch.randn(shape, generator=g) * scale
        return t.to(device, dtype).requires_grad_(requires_grad)

    params = {n: randn(C) for n in PARAM_NAMES if not n.endswith("weight") or "ln_" in n}
    params.update({n: randn(C, C, scale=C**-0.5) for n in PARAM_NAMES if n not in params})
    seq = (torch.arange(length, device=device) < length - length // 16).to(dtype)
    mask = (seq[:, None] * seq[None, :])[None]
    return (randn(1, length, length, C), mask), {**params, "outgoing": True}


OP = Op(
    name="triangle_multiplicative_update",
    function=triangle_multiplicative_update,
    reference=ref.triangle_multiplicative_update,
    custom_ops=(
        "esmkernels::triangle_multiplicative_fwd",
        "esmkernels::triangle_multiplicative_bwd",
    ),
    kernels=("_trimul_proj_kernel", "_trimul_contract_kernel", "_trimul_out_kernel"),
    unsupported=_unsupported,
    example=_example,
    trunk=True,
    bench_cases=("trimul_out", "trimul_in"),
)


__all__ = ["OP", "channel_slice", "triangle_multiplicative_update"]
