"""Rotary self-attention for the ESM language models: dispatch, validation, autograd, torch path.

The Triton kernels live in `ops/rotary_attention_fwd.py` (forward, shared jit helpers) and
`ops/rotary_attention_bwd.py` (backward); this module holds the layers above them:
the custom ops `esmkernels::rotary_attention_fwd` / `rotary_attention_bwd` (fake implementations
with the fp32 log-sum-exp the backward keeps; the backward registered as the forward op's autograd;
see `esmkernels.ops._custom_ops`) and the public `rotary_attention`.

The torch path (backend="torch", and "auto" off CUDA) is what the CPU models run, so it is built
for speed rather than as a second reference: rotary is applied once in fp32 with the reference's
`rotary_cos_sin` / `apply_rotary`, then `torch.nn.functional.scaled_dot_product_attention` runs at
the input dtype. Varlen input is scattered into a padded `[B, max_seqlen]` batch with a key mask
(one gather, one SDPA call, one gather back) instead of a Python loop over sequences. A sequence
whose keys are all masked is given an all-keep mask for SDPA (so no NaN appears, forward or
backward) and its output is then replaced by zeros, matching the reference's convention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from esmkernels.ops._custom_ops import define
from esmkernels.ops._dispatch import default_backend, resolve_backend
from esmkernels.ops.rotary_attention_bwd import rotary_attention_bwd
from esmkernels.ops.rotary_attention_fwd import SUPPORTED_HEAD_DIMS, rotary_attention_fwd
from esmkernels.reference import functional as ref

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ------------------------------------------------------------------------------------------------
# Custom ops (torch.library): fake implementations and autograd, see esmkernels.ops._custom_ops
# ------------------------------------------------------------------------------------------------


def _fwd_fake(q, k, v, inv_freq, position_ids, key_padding_mask, cu_seqlens, max_seqlen, scale):
    if cu_seqlens is None:
        B, L, H, _ = q.shape
        lse_shape = (B, H, L)
    else:
        T, H, _ = q.shape
        lse_shape = (H, T)
    return q.new_empty(q.shape), q.new_empty(lse_shape, dtype=torch.float32)


def _bwd_fake(do, q, k, v, out, lse, inv_freq, position_ids, key_padding_mask, cu_seqlens,
              max_seqlen, scale):  # fmt: skip
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


@define("rotary_attention_bwd", fake=_bwd_fake)
def _rotary_attention_bwd_op(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    inv_freq: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    side = dict(inv_freq=inv_freq, position_ids=position_ids, key_padding_mask=key_padding_mask)
    return rotary_attention_bwd(
        do, q, k, v, out, lse, **side, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, scale=scale
    )


def _setup_context(ctx, inputs, output):
    q, k, v, inv_freq, position_ids, key_padding_mask, cu_seqlens, max_seqlen, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, inv_freq, position_ids, key_padding_mask, cu_seqlens)
    ctx.max_seqlen, ctx.scale = max_seqlen, scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, do, _dlse):
    q, k, v, out, lse, *side = ctx.saved_tensors
    dq, dk, dv = _rotary_attention_bwd_op(do, q, k, v, out, lse, *side, ctx.max_seqlen, ctx.scale)
    return dq, dk, dv, None, None, None, None, None, None


@define("rotary_attention_fwd", fake=_fwd_fake, backward=_backward, setup_context=_setup_context)
def _rotary_attention_fwd_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    inv_freq: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse): see `rotary_attention_fwd`; differentiable in q, k and v."""
    side = dict(inv_freq=inv_freq, position_ids=position_ids, key_padding_mask=key_padding_mask)
    return rotary_attention_fwd(
        q, k, v, **side, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, scale=scale
    )


def _torch_padded(q, k, v, inv_freq, position_ids, key_padding_mask, scale):
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


def _torch_varlen(q, k, v, cu_seqlens, max_seqlen, inv_freq, position_ids, scale):
    """[T, H, D] packed attention: gather into [B, max_seqlen], run the padded path, gather back."""
    lens = cu_seqlens[1:] - cu_seqlens[:-1]  # [B]
    j = torch.arange(max_seqlen, device=q.device)
    valid = j[None, :] < lens[:, None]  # [B, max_seqlen]
    index = (cu_seqlens[:-1, None].long() + j[None, :]).clamp_(max=max(q.shape[0] - 1, 0))
    pad = [t[index] for t in (q, k, v)]  # [B, max_seqlen, H, D]
    pos = None if position_ids is None else position_ids[index]
    out = _torch_padded(*pad, inv_freq, pos, valid, scale)
    # Back to packed tokens by index, not by the boolean mask: the output shape [T, H, D] stays
    # static, so torch.compile traces this without a graph break.
    t = torch.arange(q.shape[0], device=q.device)
    seq = torch.searchsorted(cu_seqlens[1:].long(), t, right=True)  # [T]
    return out[seq, t - cu_seqlens[seq].long()]


def requested_backend(backend: str | None) -> str:
    """The backend the caller asked for ("auto" | "triton" | "torch"), before resolution."""
    return default_backend() if backend is None else str(backend).lower()


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
    chosen = resolve_backend(
        backend,
        q,
        k,
        v,
        inv_freq,
        position_ids,
        key_padding_mask,
        cu_seqlens,
        op="rotary_attention",
    )
    if chosen == "triton" and D not in SUPPORTED_HEAD_DIMS:
        if requested_backend(backend) == "triton":
            raise ValueError(
                f"rotary_attention: the Triton kernels support head dims {SUPPORTED_HEAD_DIMS}, got D={D}; use backend='torch'"
            )
        chosen = "torch"  # "auto": a head dim the kernels do not tile runs on the torch path
    if chosen == "torch":
        if cu_seqlens is None:
            return _torch_padded(q, k, v, inv_freq, position_ids, key_padding_mask, scale)
        return _torch_varlen(q, k, v, cu_seqlens, max_seqlen, inv_freq, position_ids, scale)
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.to(torch.int32)
    out, _ = _rotary_attention_fwd_op(
        q, k, v, inv_freq, position_ids, key_padding_mask, cu_seqlens, max_seqlen, scale
    )
    return out
