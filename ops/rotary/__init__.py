"""Bidirectional softmax self-attention with ESM's rotary embedding fused in: `rotary_attention`.

Math (per sequence and head; ESM rotate-half rotary, see `esmkernels.reference.functional`):

    q' = R(p) (scale * q),  k' = R(p) k         R(p) rotates pairs (x_j, x_{j+D/2}) by p*inv_freq_j
    out = softmax(q' k'^T over kept keys) v

Modules: `forward` (kernel, shared jit helpers, launcher `rotary_attention_fwd`), `backward`
(preprocess, dk/dv and dq kernels, launcher `rotary_attention_bwd`), `op` (the custom ops
`esmkernels::rotary_attention_fwd` / `rotary_attention_bwd`, fakes, autograd), `torch_path`
(SDPA, padded and varlen); this module: validation, dispatch and the public function.
"""

from __future__ import annotations

import torch

from esmkernels.ops._dispatch import choose
from esmkernels.ops.registry import Op
from esmkernels.ops.rotary import torch_path
from esmkernels.ops.rotary.forward import SUPPORTED_HEAD_DIMS
from esmkernels.ops.rotary.op import _rotary_attention_fwd_op
from esmkernels.reference import functional as ref

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_tensor(name: str, t: torch.Tensor, ref_t: torch.Tensor, shape: tuple) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"rotary_attention: {name} must be a tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(
            f"rotary_attention: {name}.shape={tuple(t.shape)}, expected {tuple(shape)}"
        )
    if t.device != ref_t.device:
        raise ValueError(
            f"rotary_attention: {name}.device={t.device} differs from q.device={ref_t.device}"
        )


def _validate(q, k, v, inv_freq, position_ids, key_padding_mask, cu_seqlens, max_seqlen):
    """Shape / dtype / device checks; returns max_seqlen (computed for varlen when None)."""
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"rotary_attention: q must be a tensor, got {type(q).__name__}")
    if cu_seqlens is None and q.dim() != 4:
        raise ValueError(
            f"rotary_attention: q must be [B, L, H, D] (or [T, H, D] with cu_seqlens), got shape {tuple(q.shape)}"
        )
    if cu_seqlens is not None and q.dim() != 3:
        raise ValueError(
            f"rotary_attention: with cu_seqlens q must be [T, H, D], got shape {tuple(q.shape)}"
        )
    if q.dtype not in _DTYPES:
        raise TypeError(f"rotary_attention: q.dtype={q.dtype} is not one of {_DTYPES}")
    for name, t in (("k", k), ("v", v)):
        _check_tensor(name, t, q, q.shape)
        if t.dtype != q.dtype:
            raise TypeError(
                f"rotary_attention: {name}.dtype={t.dtype} differs from q.dtype={q.dtype}"
            )
    D = q.shape[-1]
    tokens = q.shape[:1] if cu_seqlens is not None else q.shape[:2]
    if inv_freq is not None:
        if D % 2:
            raise ValueError(f"rotary_attention: rotary needs an even head dim, got D={D}")
        _check_tensor("inv_freq", inv_freq, q, (D // 2,))
    if position_ids is not None:
        shapes = [tuple(tokens)] + ([tuple(tokens[1:])] if cu_seqlens is None else [])
        if tuple(position_ids.shape) not in shapes:
            raise ValueError(
                f"rotary_attention: position_ids.shape={tuple(position_ids.shape)}, expected one of {shapes}"
            )
        _check_tensor("position_ids", position_ids, q, position_ids.shape)
    if key_padding_mask is not None:
        if cu_seqlens is not None:
            raise ValueError(
                "rotary_attention: key_padding_mask is not used with cu_seqlens (varlen sequences carry no padding)"
            )
        _check_tensor("key_padding_mask", key_padding_mask, q, tokens)
    if cu_seqlens is None:
        return None
    _check_tensor("cu_seqlens", cu_seqlens, q, cu_seqlens.shape)
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2 or cu_seqlens.is_floating_point():
        raise ValueError(
            f"rotary_attention: cu_seqlens must be a 1-D integer tensor [B+1], got {cu_seqlens.dtype} of shape {tuple(cu_seqlens.shape)}"
        )
    if max_seqlen is not None and (cu_seqlens.is_cuda or torch.compiler.is_compiling()):
        # Trust the caller: no host round trip on the GPU hot path, and no data-dependent
        # branch (a graph break) under torch.compile.
        return int(max_seqlen)
    bounds = cu_seqlens.tolist()
    lens = [e - s for s, e in zip(bounds[:-1], bounds[1:])]
    if bounds[0] != 0 or bounds[-1] != q.shape[0] or min(lens) < 0:
        raise ValueError(
            f"rotary_attention: cu_seqlens={bounds} must start at 0, be non-decreasing and end at T={q.shape[0]}"
        )
    if max_seqlen is not None and int(max_seqlen) < max(lens):
        raise ValueError(
            f"rotary_attention: max_seqlen={max_seqlen} < longest sequence {max(lens)}"
        )
    return max(lens) if max_seqlen is None else int(max_seqlen)


def rotary_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    inv_freq: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    backend: str | None = None,
) -> torch.Tensor:
    """Bidirectional softmax self-attention with ESM's rotary embedding fused in.

    Args:
        q, k, v: [B, L, H, D] padded, or [T, H, D] packed with `cu_seqlens`; fp32, fp16 or bf16,
            all the same dtype. Strided views (e.g. slices of a fused qkv output) are read in
            place as long as the head dim is contiguous.
        inv_freq: [D/2] rotary inverse frequencies (fp32), or None for no rotary (ESM-1b/1v).
        position_ids: rotary positions, [B, L] or [L] (padded) or [T] (varlen); default 0..L-1,
            restarting at 0 in each packed sequence.
        key_padding_mask: [B, L], 1 = keep (padded only). A query with no kept key gets zeros.
        cu_seqlens: [B+1] integer offsets of the packed sequences (starts at 0, ends at T).
        max_seqlen: longest packed sequence; computed from cu_seqlens when None (passing it on
            CUDA, or under torch.compile, skips a host round trip and the cu_seqlens content
            checks).
        scale: multiplier applied to q before rotation; default D**-0.5.
        dropout_p: must be 0; attention dropout is not fused (callers use the reference).
        backend: "auto" | "triton" | "torch" (None: env ESMKERNELS_BACKEND, default "auto").
            The Triton kernels need D in (16, 32, 64, 128): "auto" sends other head dims to
            the torch path, a forced "triton" raises ValueError.

    Returns:
        out: same shape and dtype as q (contiguous).

    Example:
        >>> q = k = v = torch.randn(2, 9, 4, 16)
        >>> inv_freq = 1.0 / 10000 ** (torch.arange(0, 16, 2).float() / 16)
        >>> rotary_attention(q, k, v, inv_freq=inv_freq, backend="torch").shape
        torch.Size([2, 9, 4, 16])
    """
    if dropout_p:
        raise ValueError(
            f"rotary_attention: dropout_p={dropout_p} is not supported by the fused op; use esmkernels.reference.functional.rotary_attention"
        )
    max_seqlen = _validate(
        q, k, v, inv_freq, position_ids, key_padding_mask, cu_seqlens, max_seqlen
    )
    D = q.shape[-1]
    scale = D**-0.5 if scale is None else float(scale)
    inv_freq = None if inv_freq is None else inv_freq.float().contiguous()
    tensors = (q, k, v, inv_freq, position_ids, key_padding_mask, cu_seqlens)
    chosen = choose("rotary_attention", backend, tensors, _unsupported(q, k, v))
    if chosen == "torch":
        if cu_seqlens is None:
            return torch_path.padded(q, k, v, inv_freq, position_ids, key_padding_mask, scale)
        return torch_path.varlen(q, k, v, cu_seqlens, max_seqlen, inv_freq, position_ids, scale)
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.to(torch.int32)
    out, _ = _rotary_attention_fwd_op(
        q, k, v, inv_freq, position_ids, key_padding_mask, cu_seqlens, max_seqlen, scale
    )
    return out


def _unsupported(q, k=None, v=None, **_) -> str | None:
    """Why the kernels cannot run these inputs (the registry's predicate), or None."""
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        return f"the kernels tile head dims {SUPPORTED_HEAD_DIMS}, got D={q.shape[-1]}"
    return None


def _example(length, *, device="cpu", dtype=torch.float32, requires_grad=False, real=False):
    """(args, kwargs): q, k, v [B, length, H, D] with ESM-2's rotary frequencies and a key
    padding mask (the last sequence is half as long). real: ESM-2 650M's 20 x 64 heads and
    ~8k tokens; else 2 x 16, B = 2."""
    g = torch.Generator().manual_seed(0)
    H, D, B = (20, 64, max(1, 8192 // length)) if real else (2, 16, 2)
    q, k, v = (
        torch.randn(B, length, H, D, generator=g).to(device, dtype).requires_grad_(requires_grad)
        for _ in range(3)
    )
    inv_freq = 1.0 / 10000 ** (torch.arange(0, D, 2, device=device).float() / D)
    keep = torch.ones(B, length, dtype=torch.bool, device=device)
    keep[-1, max(1, length // 2) :] = False
    return (q, k, v), {"inv_freq": inv_freq, "key_padding_mask": keep}


OP = Op(
    name="rotary_attention",
    function=rotary_attention,
    reference=ref.rotary_attention,
    custom_ops=("esmkernels::rotary_attention_fwd", "esmkernels::rotary_attention_bwd"),
    kernels=(
        "_rotary_attention_fwd_kernel",
        "_rotary_attention_bwd_preprocess_kernel",
        "_rotary_attention_bwd_dkdv_kernel",
        "_rotary_attention_bwd_dq_kernel",
    ),
    unsupported=_unsupported,
    example=_example,
    bench_cases=("rotary_attention", "rotary_attention_varlen"),
)
