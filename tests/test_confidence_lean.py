"""Lean confidence heads: pTM and PAE streamed from the pair state equal the full heads' values.

`aligned_error_from_pair` never holds the [B, N, N, 64] logits for more than one block of rows;
the chunks are observed by counting the head's calls and the rows each call sees.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from esmkernels.reference.esmfold import confidence as C
from tests.tolerances import FP32, assert_within_rule


class CountingHead(torch.nn.Module):
    def __init__(self, c_z: int, bins: int = 64):
        super().__init__()
        self.linear = torch.nn.Linear(c_z, bins)
        self.rows: list[int] = []

    def forward(self, z):
        self.rows.append(z.shape[1])
        return self.linear(z)


def _case(B, N, c_z, pad, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, N, N, c_z, generator=g) * 2
    head = CountingHead(c_z)
    with torch.no_grad():
        head.linear.weight.copy_(torch.randn(head.linear.weight.shape, generator=g))
    mask = torch.ones(B, N)
    for b in range(B):
        mask[b, N - min(pad * b, N - 1) :] = 0 if pad * b else 1
    return z, head, mask


@settings(deadline=None)
@given(
    B=st.integers(1, 3),
    N=st.integers(1, 23),
    pad=st.integers(0, 5),
    chunk=st.one_of(st.none(), st.integers(1, 9)),
)
@example(B=2, N=17, pad=4, chunk=5)  # several blocks, a short last block, padding
@example(B=1, N=1, pad=0, chunk=1)  # one residue
def test_lean_equals_full_heads(B, N, pad, chunk):
    z, head, mask = _case(B, N, 8, pad)
    with torch.no_grad():
        logits = head(z)
        head.rows.clear()
        want_ptm = C.compute_tm(logits, mask)
        want_pae = C.compute_predicted_aligned_error(logits, mask)
        got = C.aligned_error_from_pair(z, head, mask, chunk_size=chunk)
    torch.testing.assert_close(got["ptm"], want_ptm, **FP32)
    torch.testing.assert_close(
        got["predicted_aligned_error"], want_pae["predicted_aligned_error"], **FP32
    )
    assert got["max_predicted_aligned_error"] == want_pae["max_predicted_aligned_error"]
    # The chunks are real: ceil(N / chunk) calls, each on at most `chunk` rows, covering N.
    step = N if chunk is None else min(chunk, N)
    assert len(head.rows) == math.ceil(N / step) and sum(head.rows) == N
    assert max(head.rows) <= step


def test_padding_does_not_change_a_proteins_scores():
    z, head, _ = _case(1, 12, 8, 0, seed=3)
    alone = C.aligned_error_from_pair(z[:, :9, :9], head, torch.ones(1, 9), chunk_size=4)
    mask = torch.ones(1, 12)
    mask[:, 9:] = 0
    padded = C.aligned_error_from_pair(z, head, mask, chunk_size=4)
    torch.testing.assert_close(padded["ptm"], alone["ptm"], **FP32)
    pae = padded["predicted_aligned_error"]
    torch.testing.assert_close(pae[:, :9, :9], alone["predicted_aligned_error"], **FP32)
    assert pae[:, 9:].abs().max() == 0 and pae[:, :, 9:].abs().max() == 0


def test_bf16_pae_follows_the_tolerance_rule():
    z, head, mask = _case(2, 13, 8, 3, seed=5)
    with torch.no_grad():
        ref = C.aligned_error_from_pair(z, head, mask, chunk_size=4)
        z16, head16 = z.bfloat16(), CountingHead(8).bfloat16()
        head16.linear.load_state_dict(head.linear.bfloat16().state_dict())
        head.float()
        got = C.aligned_error_from_pair(z16, head16, mask, chunk_size=4)
        plain = C.compute_predicted_aligned_error(head16(z16), mask.bfloat16())
    assert got["predicted_aligned_error"].dtype == torch.bfloat16
    assert_within_rule(
        got["predicted_aligned_error"],
        plain["predicted_aligned_error"],
        ref["predicted_aligned_error"],
        torch.bfloat16,
        "PAE",
    )


@pytest.mark.parametrize(
    ("z", "mask", "message"),
    [
        (torch.zeros(1, 4, 5, 8), torch.ones(1, 4), "must be"),
        (torch.zeros(1, 4, 4, 8), torch.ones(1, 5), "residue_mask shape"),
    ],
)
def test_bad_shapes_are_named(z, mask, message):
    with pytest.raises(ValueError, match=message):
        C.aligned_error_from_pair(z, CountingHead(8), mask)
