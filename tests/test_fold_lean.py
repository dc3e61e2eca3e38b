"""Memory-lean ESMFold inference: the streamed triangle multiplication (the triangle op's lean
PyTorch path, `esmkernels.ops.trimul.torch_path`), chunked == unchunked (with the chunks
observed), in-place == out-of-place, and fp16 / bf16 staying finite."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from esmkernels.models import fold_memory
from esmkernels.models.esmfold import EsmForProteinFolding
from esmkernels.ops import trimul
from esmkernels.ops.trimul import torch_path as lean_path
from esmkernels.ops.trimul.forward import PARAM_NAMES
from esmkernels.reference.esmfold import trunk_functional as ref
from tests.test_esmfold_model import random_sequence
from tests.test_esmfold_trunk import one_torch_thread  # noqa: F401
from tests.test_models_esmfold import FIELDS, assert_same_fold, fast_copy, tiny_model
from tests.tolerances import FP32, assert_within_rule

NAMES = PARAM_NAMES


def trimul_params(C: int, seed: int, *, big: float = 0.0) -> dict[str, torch.Tensor]:
    """Random parameters; `big` > 0 makes a and b ~ big everywhere (gates open), so the
    contraction sums L products of size big^2: real-protein magnitudes that overflow fp16."""
    g = torch.Generator().manual_seed(seed)
    p = {}
    for name in NAMES:
        shape = (C, C) if name.endswith("weight") and "ln" not in name else (C,)
        t = torch.randn(shape, generator=g)
        if len(shape) == 2:
            t = t / C**0.5
        elif "ln" in name and name.endswith("weight"):
            t = 1 + 0.1 * t
        else:
            t = 0.1 * t
        p[name] = t
    if big:
        for side in ("a", "b"):
            p[f"{side}_proj_bias"] = torch.full((C,), big)
            p[f"{side}_gate_bias"] = torch.full((C,), 8.0)
    return p


@given(
    L=st.integers(1, 11),
    chunk=st.sampled_from([None, 1, 2, 3, 5, 16]),
    outgoing=st.booleans(),
    masked=st.booleans(),
)
@example(L=9, chunk=2, outgoing=False, masked=True)  # several channel slices and row blocks
@example(L=1, chunk=None, outgoing=True, masked=False)
def test_lean_triangle_update_matches_reference(L, chunk, outgoing, masked):
    C = 16
    p = trimul_params(C, seed=L)
    g = torch.Generator().manual_seed(L + 100)
    z = torch.randn(2, L, L, C, generator=g)
    mask = (torch.rand(2, L, L, generator=g) > 0.3).float() if masked else None
    want = ref.triangle_multiplicative_update(z, mask, outgoing=outgoing, **p)
    with torch.no_grad():
        got = lean_path.lean_update(z, mask, outgoing=outgoing, chunk_size=chunk, **p)
    torch.testing.assert_close(got, want, **FP32)


def test_lean_triangle_update_streams_channel_slices(monkeypatch):
    """Chunking happened: one batched matmul per channel slice, of that slice's width."""
    widths = []
    original = torch.Tensor.__matmul__

    def counting(a, b):
        widths.append(a.shape[1])
        return original(a, b)

    monkeypatch.setattr(torch.Tensor, "__matmul__", counting)
    p = trimul_params(16, seed=0)
    with torch.no_grad():
        lean_path.lean_update(torch.randn(1, 12, 12, 16), None, outgoing=True, chunk_size=3, **p)
    step = trimul.channel_slice(3, 12, 16)
    assert step == 4 and widths == [4, 4, 4, 4]
    with pytest.raises(RuntimeError, match="inference-only"):
        lean_path.lean_update(torch.randn(1, 3, 3, 16), None, outgoing=True, **p)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("outgoing", [True, False])
def test_low_precision_triangle_update_stays_finite(dtype, outgoing):
    """Real-scale activations: x reaches ~1e5 > fp16's 65,504 (transformers #47470's NaN).
    Every implementation stays finite and within the low-precision tolerance rule."""
    C, L = 16, 24
    p32 = trimul_params(C, seed=3, big=70.0)
    z32 = torch.randn(1, L, L, C, generator=torch.Generator().manual_seed(4))
    want = ref.triangle_multiplicative_update(z32, None, outgoing=outgoing, **p32)
    x_scale = (
        ref.gated_projection(
            z32,
            None,
            p32["a_proj_weight"],
            p32["a_proj_bias"],
            p32["a_gate_weight"],
            p32["a_gate_bias"],
        )
        .abs()
        .mean()
        ** 2
        * L
    )
    assert x_scale > 65504  # the contraction does overflow fp16
    p = {k: v.to(dtype) for k, v in p32.items()}
    z = z32.to(dtype)
    torch_at_dtype = ref.triangle_multiplicative_update(z, None, outgoing=outgoing, **p)
    with torch.no_grad():
        lean = lean_path.lean_update(z, None, outgoing=outgoing, chunk_size=32, **p)
    assert torch.isfinite(torch_at_dtype).all()
    assert_within_rule(lean, torch_at_dtype, want, dtype, "lean")
    if dtype == torch.float16:  # the overflow case; the interpreter is slow, bf16 has the range
        with torch.no_grad():
            kernel = trimul.triangle_multiplicative_update(
                z, None, outgoing=outgoing, backend="triton", chunk_size=8, **p
            )
        assert_within_rule(kernel, torch_at_dtype, want, dtype, "kernel")


def count_attention_calls(model: EsmForProteinFolding) -> list[int]:
    """Replace the model's trunk-op `axial_attention` with a counting wrapper."""
    ops = model.trunk.blocks[0].tri_att_start.ops.namespace
    calls = [0]
    original = type(ops).axial_attention

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(ops, *args, **kwargs)

    ops.axial_attention = counting
    return calls


@given(
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=2),
    chunk=st.sampled_from([1, 2, 3, 5, "auto"]),
)
@example(lengths=[9, 4], chunk=2)
@example(lengths=[6], chunk="auto")
def test_chunked_equals_unchunked_and_chunks_are_used(lengths, chunk):
    """Outputs do not depend on the chunk size, and the chunks are observed: the triangle
    attentions run once per block of rows (columns), the sequence attention once."""
    fast = fast_copy(tiny_model(), "torch")
    seqs = [random_sequence(n, seed=n) for n in lengths]
    with torch.no_grad():
        fast.set_chunk_size(None)
        want = fast.infer(seqs, num_recycles=1)
        fast.set_chunk_size(chunk)
        calls = count_attention_calls(fast)
        got = fast.infer(seqs, num_recycles=1)
    used = fast.last_chunk_size
    L = max(lengths)
    if chunk == "auto":  # what the memory model picks for this shape (the lean cap, here)
        chunk = fold_memory.auto_chunk_size(fast.config, L, batch=len(seqs))
    assert used == chunk
    blocks = 1 if used is None else -(-L // used)
    passes = 2  # num_recycles=1
    assert calls[0] == passes * len(fast.trunk.blocks) * (1 + 2 * blocks)
    real = want.atom37_atom_exists[..., 1].bool()
    assert_same_fold(got, want, real, f"(chunk {chunk})")


def test_in_place_inference_equals_the_out_of_place_path():
    """no_grad (pair updates added in place, buffers reused) == autograd on (the spec's path)."""
    reference = tiny_model()
    fast = fast_copy(reference, "torch")
    fast.set_chunk_size(3)
    seqs = [random_sequence(8, 5), random_sequence(5, 6)]
    with torch.no_grad():
        got = fast.infer(seqs, num_recycles=2)
    with torch.enable_grad():
        want = reference.infer.__wrapped__(reference, seqs, num_recycles=2)
    assert want.s_z.requires_grad  # the out-of-place path really ran
    real = want.atom37_atom_exists[..., 1].bool()
    assert_same_fold(got, want, real, "(in place)")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_fold_is_finite_and_close(dtype):
    reference = tiny_model()
    fast = fast_copy(reference, "torch").to(dtype)
    seqs = [random_sequence(9, 7), random_sequence(6, 8)]
    with torch.no_grad():
        got = fast.infer(seqs, num_recycles=1)
        want = reference.infer(seqs, num_recycles=1)
    for name in FIELDS:
        assert torch.isfinite(getattr(got, name)).all(), name
    real = want.atom37_atom_exists[..., 1].bool()
    err = (got.positions[-1][real].float() - want.positions[-1][real]).abs().max()
    assert err < 1.0  # Angstrom, on a random tiny model


def test_model_error_paths():
    fast = fast_copy(tiny_model(), "torch")
    with pytest.raises(ValueError, match="max_tokens_per_batch=0"):
        fast.infer(["AC"], max_tokens_per_batch=0)
    with pytest.raises(ValueError, match="position_ids"):
        fast.infer(["AC"], max_tokens_per_batch=8, position_ids=[[0, 1]])
