"""The token-budget batcher: items of given lengths into padded batches within a budget.

Used by `EsmForProteinFolding.infer(max_tokens_per_batch=...)`, `esmkernels fold` and
`esmkernels embed`; one rule, so a job and the API pack the same sequences the same way.

Example:
    >>> token_batches([5, 2, 3, 9], max_tokens=9)
    [[3], [0], [2, 1]]
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

__all__ = ["token_batches"]


def token_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices of `lengths` in batches whose padded size fits `max_tokens`.

    Items are taken longest first (equal lengths in index order); a batch takes the next item
    while (items in the batch + 1) x (its longest, the first one) <= `max_tokens`, else a new
    batch starts. An item longer than `max_tokens` is a batch alone. Within a batch, indices are
    in that same order. A pure function of its arguments: a resumed job gets the same batches.

    Args:
        lengths: [N] ints >= 0, the padded length of each item as the model sees it (count any
            special tokens or linkers in it).
        max_tokens: the budget of padded positions per batch (batch size x longest), >= 1.

    Returns:
        A list of batches, each a non-empty list of indices into `lengths`; every index appears
        exactly once. Empty when `lengths` is.

    Raises:
        TypeError / ValueError: `max_tokens` not a positive int, or a length not an int >= 0.
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, Integral):
        raise TypeError(f"max_tokens={max_tokens!r} must be an int")
    if max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens} must be >= 1")
    for i, n in enumerate(lengths):
        if isinstance(n, bool) or not isinstance(n, Integral) or n < 0:
            raise ValueError(f"lengths[{i}]={n!r} must be an int >= 0")
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches
