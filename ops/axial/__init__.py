"""Flash-style axial (triangle) attention with a bias shared across rows, sigmoid gate and key
mask: `axial_attention`.

Math (the spec is `esmkernels.reference.esmfold.trunk_functional.axial_attention`): q, k, v, gate
are [B, R, N, H, D] with ANY strides; within each row r,

    s[n, m]  = scale * q[n] . k[m] + bias[b, h, n, m]         (-inf where mask[b, r, m] == 0)
    out[n]   = sigmoid(gate[n]) * sum_m softmax_m(s)[n, m] * v[m]

Modules: `forward` (kernel + launcher `axial_attention_fwd`), `backward` (preprocess, dk/dv, dq
and dbias kernels, launchers), `op` (the custom ops `esmkernels::axial_attention_fwd` /
`axial_attention_bwd`, fakes, autograd); this module: validation, dispatch and the public
function.

`chunk_size` counts query rows: the rows of each row's [N, N] logits (for ESMFold's sequence
attention, R = 1, the rows of the pair bias). The torch path (the reference) attends one block
of `chunk_size` queries at a time; the kernels tile the queries by BLOCK_M themselves and never
materialise logits, so they need no chunk. The triangle attention module chunks the rows R of
the pair itself, before it calls this op.
"""

from __future__ import annotations

import torch

from esmkernels.ops._dispatch import choose
from esmkernels.ops.axial.op import _axial_attention_fwd_op
from esmkernels.ops.registry import Op
from esmkernels.reference.esmfold import trunk_functional as ref

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 128


def _check_args(q, k, v, bias, mask, gate, chunk_size) -> None:
    if not isinstance(q, torch.Tensor) or q.dim() != 5:
        raise ValueError(
            f"axial_attention: q must be a [B, R, N, H, D] tensor, got {getattr(q, 'shape', q)!r}"
        )
    B, R, N, H, D = q.shape
    for name, t in (("k", k), ("v", v), ("gate", gate)):
        if t is not None and t.shape != q.shape:
            raise ValueError(
                f"axial_attention: {name} shape {tuple(t.shape)} != q shape {tuple(q.shape)}"
            )
    for name, t in (("q", q), ("k", k), ("v", v), ("gate", gate), ("bias", bias)):
        if t is not None and t.dtype not in _DTYPES:
            raise TypeError(f"axial_attention: {name} dtype {t.dtype} is not one of {_DTYPES}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"axial_attention: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if bias is not None and tuple(bias.shape) != (B, H, N, N):
        raise ValueError(f"axial_attention: bias must be {(B, H, N, N)}, got {tuple(bias.shape)}")
    if mask is not None and tuple(mask.shape) != (B, R, N):
        raise ValueError(f"axial_attention: mask must be {(B, R, N)}, got {tuple(mask.shape)}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(
            f"axial_attention: chunk_size must be a positive int or None, got {chunk_size!r}"
        )
    devices = {t.device for t in (q, k, v, bias, mask, gate) if t is not None}
    if len(devices) > 1:
        raise ValueError(
            f"axial_attention: tensors on different devices: {sorted(map(str, devices))}"
        )


def axial_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    gate: torch.Tensor | None = None,
    scale: float | None = None,
    chunk_size: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Gated multi-head attention over N within each of R rows, bias shared by all rows.

    Triangle attention around the starting node: q, k, v, gate are the pair tensor's projections
    viewed as [B, R=L, N=L, H, D]; around the ending node, the same on `x.transpose(1, 2)` views
    (no copy: the kernels read through strides). ESMFold's sequence attention is R = 1.

    Args:
        q, k, v: [B, R, N, H, D] fp32 / bf16 / fp16 (same dtype), any strides; D <= 128.
        bias: [B, H, N, N] additive logits bias shared by all rows (any float dtype, any
            strides, stride 0 allowed), or None. Differentiable.
        mask: [B, R, N] key mask per row, 1 = keep (bool or numeric, nonzero = keep). A query
            whose keys are all masked gives zeros (and zero gradients), never NaN.
        gate: [B, R, N, H, D] gate logits: out *= sigmoid(gate), or None.
        scale: logits scale on q . k; default D ** -0.5.
        chunk_size: queries per block (None: all): the torch path computes the logits
            [B, R, H, chunk_size, N] of one block of queries of every row at a time. The
            kernels never hold more than one [BLOCK_M, BLOCK_N] tile of logits per program,
            so on the Triton path there is nothing to chunk and it does not change a launch.
        backend: "auto" | "triton" | "torch" (None: env ESMKERNELS_BACKEND; the rule is
            `esmkernels.ops._dispatch`'s). The kernels take D <= 128: "auto" sends wider heads
            to the torch path, a forced "triton" raises ValueError.

    Returns:
        [B, R, N, H, D] in q.dtype, with q's strides when q is dense. linear_o is the caller's.

    Example:
        >>> q, k, v, g = (torch.randn(1, 6, 6, 4, 32) for _ in range(4))
        >>> out = axial_attention(q, k, v, bias=torch.randn(1, 4, 6, 6), gate=g)
        >>> out.shape
        torch.Size([1, 6, 6, 4, 32])
    """
    _check_args(q, k, v, bias, mask, gate, chunk_size)
    D = q.shape[-1]
    scale = D**-0.5 if scale is None else float(scale)
    tensors = (q, k, v, bias, mask, gate)
    if choose("axial_attention", backend, tensors, _unsupported(q, k, v)) == "torch":
        return ref.axial_attention(
            q, k, v, bias=bias, mask=mask, gate=gate, scale=scale, chunk_size=chunk_size
        )
    inputs = (q, k, v, bias, gate)
    # Inference keeps no ungated output for a backward.
    training = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    return _axial_attention_fwd_op(q, k, v, bias, mask, gate, scale, training)[0]


def _unsupported(q, k=None, v=None, **_) -> str | None:
    """Why the kernels cannot run these inputs (the registry's predicate), or None."""
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"the kernels take head widths D <= {MAX_HEAD_DIM}, got D={q.shape[-1]}"
    return None


def _example(length, *, device="cpu", dtype=torch.float32, requires_grad=False, real=False):
    """(args, kwargs): triangle attention around the starting node on a [1, length, length]
    pair: q, k, v, gate [1, R=length, N=length, H, D], the pair bias [1, H, length, length] and
    the key mask (the last length // 16 residues masked). real: ESMFold's 4 x 32 heads; else
    2 x 8."""
    g = torch.Generator().manual_seed(0)
    H, D = (4, 32) if real else (2, 8)

    def randn(*shape):
        return torch.randn(shape, generator=g).to(device, dtype).requires_grad_(requires_grad)

    q, k, v, gate = (randn(1, length, length, H, D) for _ in range(4))
    mask = torch.ones(1, length, length, dtype=torch.bool, device=device)
    mask[..., length - length // 16 :] = False
    return (q, k, v), {"bias": randn(1, H, length, length), "mask": mask, "gate": gate}


OP = Op(
    name="axial_attention",
    function=axial_attention,
    reference=ref.axial_attention,
    custom_ops=("esmkernels::axial_attention_fwd", "esmkernels::axial_attention_bwd"),
    kernels=(
        "_axial_attn_fwd_kernel",
        "_axial_attn_bwd_pre_kernel",
        "_axial_attn_bwd_dkdv_kernel",
        "_axial_attn_bwd_dq_kernel",
        "_axial_attn_bwd_dbias_kernel",
    ),
    unsupported=_unsupported,
    example=_example,
    trunk=True,
    bench_cases=("tri_att_start", "tri_att_end"),
)
