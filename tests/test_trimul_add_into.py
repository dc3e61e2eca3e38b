"""The triangle update added into the pair state (`add_into`, the inference trunk's call): equal
to adding the returned update, on every backend; the kernels' output is written in row blocks
(observed) and no full [B, L, L, C] update is allocated (measured tensor peak)."""

from __future__ import annotations

import pytest
import torch

from esmkernels.models.fold_memory import track_peak_bytes
from esmkernels.ops import triangle_multiplicative_update
from esmkernels.ops.trimul import forward
from esmkernels.reference.esmfold import trunk_functional as ref
from tests.test_ops_triangle_multiplicative import make_params
from tests.tolerances import FP32


def _case(L, C=16, seed=0, dtype=torch.float32):
    p = {k: v.detach().to(dtype) for k, v in make_params(C, C, seed=seed).items()}
    g = torch.Generator().manual_seed(seed + 1)
    z = torch.randn(1, L, L, C, generator=g).to(dtype)
    seq = (torch.arange(L) < L - 2).to(dtype)
    return z, (seq[:, None] * seq[None, :])[None], p


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize(
    ("L", "chunk", "outgoing"), [(9, 4, True), (7, None, False), (10, 3, False)]
)
def test_add_into_z_equals_adding_the_update(backend, L, chunk, outgoing, monkeypatch):
    z, mask, p = _case(L)
    blocks = []
    real = forward.trimul_output

    def spy(x, zz, pp, eps, rows=None):
        blocks.append(rows)
        return real(x, zz, pp, eps, rows)

    monkeypatch.setattr(forward, "trimul_output", spy)
    kw = dict(outgoing=outgoing, chunk_size=chunk, backend=backend)
    with torch.no_grad():
        want = z + triangle_multiplicative_update(z, mask, **p, **kw)
        blocks.clear()
        got = triangle_multiplicative_update(z, mask, **p, **kw, add_into=z)
    assert got is z
    torch.testing.assert_close(got, want, **FP32)  # the same math per pixel, the same add
    if backend == "triton":  # the output went in row blocks of `chunk` rows
        step = L if chunk is None else chunk
        assert blocks == [(r, min(r + step, L)) for r in range(0, L, step)]


def test_add_into_the_reference_and_a_separate_tensor():
    z, mask, p = _case(8, seed=3)
    acc = torch.randn_like(z)
    with torch.no_grad():
        want = acc + ref.triangle_multiplicative_update(z, mask, **p, outgoing=True)
        got = ref.triangle_multiplicative_update(z, mask, **p, outgoing=True, add_into=acc.clone())
        fast = triangle_multiplicative_update(
            z, mask, **p, outgoing=True, backend="triton", chunk_size=3, add_into=acc.clone()
        )
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    torch.testing.assert_close(fast, want, **FP32)


def test_kernels_never_hold_a_full_update():
    """Peak of the Triton path with add_into: the contraction x, the a | b channel slices (a
    quarter of the channels each, at least) and one row block, not x plus a full update
    (L = 32, chunk 4: the full update is 8 blocks)."""
    L, C = 32, 16
    z, mask, p = _case(L, C)
    pair = z.numel() * z.element_size()
    with torch.no_grad():
        with track_peak_bytes() as out_of_place:
            z + triangle_multiplicative_update(z, mask, **p, outgoing=True, chunk_size=4,
                                               backend="triton")  # fmt: skip
        with track_peak_bytes() as in_place:
            triangle_multiplicative_update(z, mask, **p, outgoing=True, chunk_size=4,
                                           backend="triton", add_into=z)  # fmt: skip
    assert out_of_place.peak >= 2 * pair, out_of_place.peak
    assert in_place.peak <= pair + pair / 2 + 2 * pair / 8, (in_place.peak, pair)


def test_add_into_must_match_z():
    z, mask, p = _case(5)
    with pytest.raises(ValueError, match="add_into"):
        triangle_multiplicative_update(z, mask, **p, outgoing=True, add_into=z[..., :8])
