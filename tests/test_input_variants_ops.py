"""Inputs users really pass to the four ops, beyond the ones the op tests draw (issue 22).

See `tests/INPUT_VARIANTS.md` for the table of entry point | variant | test. Here:

- `ESMKERNELS_BACKEND` honoured by every op of the registry (no `backend=` argument): "triton"
  on inputs the kernels cannot take raises the predicate's reason instead of silently running
  torch, "torch" launches no kernel, "triton" on supported inputs launches only the op's kernels;
- masks given as int or float (nonzero = keep), not bool, on both paths of every masked op;
- 64-bit index arithmetic of the rotary kernels, checked in the IR as the axial and triangle
  kernels are (every stride typed i32; padded and packed launches).
"""

from __future__ import annotations

import re

import pytest
import torch

from esmkernels.ops import _dispatch, registry
from esmkernels.ops._dispatch import ENV_VAR
from tests._launches import launches
from tests._sm90 import Job, addptr_offset_types, assert_tile_row_offsets_int64
from tests.test_ops_registry import UNSUPPORTED

OPS = registry.ops()
IDS = [op.name for op in OPS]


# ------------------------------------------------------------------------------------------------
# ESMKERNELS_BACKEND, for every op of the registry
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_environment_backend_is_honoured_by_every_op(op, monkeypatch):
    """backend=None (the default every model and patch passes) reads ESMKERNELS_BACKEND."""
    monkeypatch.setattr(_dispatch, "on_fast_device", lambda t: True)  # as if on CUDA
    args, kwargs = UNSUPPORTED[op.name]()
    why = op.unsupported(*args, **kwargs)
    monkeypatch.setenv(ENV_VAR, "triton")
    with launches() as seen, pytest.raises(ValueError, match=re.escape(why)):
        op.function(*args, **kwargs)
    assert not seen.kernels and not seen.fallbacks, seen

    args, kwargs = op.example(5)
    with torch.no_grad(), launches() as seen:
        op.function(*args, **kwargs)
    assert set(seen.kernels) and set(seen.kernels) <= set(op.kernels), seen
    seen.no_fallback()

    monkeypatch.setenv(ENV_VAR, "torch")
    with torch.no_grad(), launches() as seen:
        op.function(*args, **kwargs)
    assert not seen.kernels and seen.fallbacks, seen

    monkeypatch.setenv(ENV_VAR, "Torch ")  # read as the CLI writes it: case and spaces
    with torch.no_grad(), launches() as seen:
        op.function(*args, **kwargs)
    assert not seen.kernels and seen.fallbacks, seen
    # an explicit backend wins over the environment
    with torch.no_grad(), launches() as seen:
        op.function(*args, **kwargs, backend="triton")
    assert set(seen.kernels) <= set(op.kernels) and seen.kernels, seen


# ------------------------------------------------------------------------------------------------
# Mask dtypes: bool, uint8, int32, int64, float32 (1 = keep) give the same output, both paths
# ------------------------------------------------------------------------------------------------

MASK_DTYPES = (torch.uint8, torch.int32, torch.int64, torch.float32)
BACKENDS = ("torch", "triton")


def _masked_example(name: str):
    """(op, args, kwargs, mask keyword, bool mask) of an op's example with a ragged mask: about
    a third of the keys dropped, the first key of every row kept."""
    op = registry.get(name)
    args, kwargs = op.example(7)
    key = "key_padding_mask" if name == "rotary_attention" else "mask"
    mask = kwargs.get(key)
    if mask is None:  # the triangle update takes its mask positionally
        args, mask = args[:1], args[1]
        kwargs = {**kwargs}
    g = torch.Generator().manual_seed(1)
    keep = torch.rand(mask.shape, generator=g) > 0.35
    keep[..., 0] = True
    return op, args, kwargs, key, keep


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["rotary_attention", "axial_attention", "triangle_multiplicative_update"])  # fmt: skip
def test_integer_and_float_masks_mean_nonzero_keeps(name, backend):
    """Users pass attention masks as int64 (tokenizers), float (HF ESMFold) or bool: every
    dtype gives the bool mask's output, and the mask matters (no mask differs)."""
    op, args, kwargs, key, keep = _masked_example(name)

    def run(mask):
        with torch.no_grad(), launches() as seen:
            if name == "triangle_multiplicative_update":
                out = op.function(*args, mask, **kwargs, backend=backend)
            else:
                out = op.function(*args, **{**kwargs, key: mask}, backend=backend)
        if backend == "triton":
            seen.no_fallback()
        return out

    want = run(keep)
    assert not torch.allclose(want, run(None), atol=1e-3), "the mask made no difference"
    for dtype in MASK_DTYPES:
        torch.testing.assert_close(run(keep.to(dtype)), want, atol=1e-6, rtol=1e-6,
                                   msg=f"{name} {backend} mask {dtype}")  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_rotary_mask_nonzero_values_other_than_one_keep(backend):
    """A float key mask is not an additive bias (SDPA's meaning of a float attn_mask): 0.5 and 2
    keep a key as 1 does."""
    op, args, kwargs, key, keep = _masked_example("rotary_attention")
    with torch.no_grad():
        want = op.function(*args, **{**kwargs, key: keep}, backend=backend)
        for scale in (0.5, 2.0):
            got = op.function(*args, **{**kwargs, key: keep.float() * scale}, backend=backend)
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Rotary: 64-bit index arithmetic in the IR (ESM-2 batches of 2^31 q elements), padded and packed
# ------------------------------------------------------------------------------------------------


def test_rotary_kernel_offsets_are_int64():
    """Every stride typed i32, padded and packed launches: each tile's row offset
    (b * stride_b + (start + row) * stride_t + h * stride_h) and, padded, each scalar base
    (b * stride_lb of lse / delta) is int64. ESM-2 650M's [B, L, 20, 64] q passes 2^31 elements
    at B * L = 1.7M tokens (a large embedding job), fused qkv views sooner. Column indices
    (< D) and positions within a sequence may stay 32-bit. BLOCK_M, BLOCK_N, D/2 and D all
    differ so that a row vector cannot pass for a column one."""
    fwd, bwd = "esmkernels.ops.rotary.forward", "esmkernels.ops.rotary.backward"
    for varlen in (False, True):
        jobs = []
        flags = dict(D=64, ROTARY=True, HAS_POS=True, HAS_MASK=not varlen, IS_VARLEN=varlen,
                     DOT_PRECISION="tf32", BLOCK_M=16, BLOCK_N=128)  # fmt: skip
        absent = {"mask_ptr": None} if varlen else {"cu_ptr": None}
        for module, kernel in (
            (fwd, "_rotary_attention_fwd_kernel"),
            (bwd, "_rotary_attention_bwd_dkdv_kernel"),
            (bwd, "_rotary_attention_bwd_dq_kernel"),
        ):
            jobs.append(Job(module, kernel, {**flags, **absent}))
        pre = dict(D=64, IS_VARLEN=varlen, BLOCK_M=16, **({} if varlen else {"cu_ptr": None}))
        jobs.append(Job(bwd, "_rotary_attention_bwd_preprocess_kernel", pre))
        # packed: `cu_ptr + i_b + 1` adds a constant i32 1 after the i64 i_b
        assert_tile_row_offsets_int64(addptr_offset_types(jobs), scalars=not varlen)


def test_layer_norm_kernel_offsets_are_int64():
    """The LayerNorm kernels see every token of a batch as one row: ESM-2 650M (N = 1280)
    passes 2^31 elements at 1.7M tokens, ESMFold's pair LayerNorm (N = 128) at a 4k x 4k pair.
    Every row offset is int64 (columns < N may stay 32-bit)."""
    flags = dict(HAS_WEIGHT=True, HAS_BIAS=True, BLOCK_M=4, BLOCK_N=128)
    jobs = [
        Job("esmkernels.ops.layernorm.forward", "_layer_norm_fwd_kernel", flags),
        Job("esmkernels.ops.layernorm.backward", "_layer_norm_bwd_kernel", flags),
    ]
    assert_tile_row_offsets_int64(addptr_offset_types(jobs))
