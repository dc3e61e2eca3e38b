"""The one token-budget batcher (`esmkernels.core.batching`) and the one out-of-memory helper
(`esmkernels.core.memory`): their contracts, and that neither they nor the job files'
`atomic_write` (`esmkernels.jobs.files`) have a second copy in product code."""

from __future__ import annotations

import ast

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from esmkernels.core import memory
from esmkernels.core.batching import token_batches
from esmkernels.core.memory import free_memory, is_oom
from tests.test_layers import product_modules

# ---------------------------------------------------------------------------------------------
# token_batches
# ---------------------------------------------------------------------------------------------


@given(
    lengths=st.lists(st.integers(0, 30), max_size=14),
    budget=st.integers(1, 80),
)
@example(lengths=[5, 2, 3, 9], budget=9)
@example(lengths=[4, 4, 4, 4], budget=8)  # ties: index order, exactly two per batch
@example(lengths=[100, 1], budget=10)  # over budget: alone
@example(lengths=[], budget=3)
def test_token_batches_contract(lengths, budget):
    batches = token_batches(lengths, budget)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))  # every item exactly once
    # Longest first, ties in index order, across and within batches.
    assert flat == sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    for k, batch in enumerate(batches):
        assert batch, "no empty batch"
        longest = max(lengths[i] for i in batch)
        assert len(batch) == 1 or len(batch) * longest <= budget
        if k + 1 < len(batches):  # greedy: the next batch's first item did not fit
            nxt = batches[k + 1][0]
            assert (len(batch) + 1) * lengths[batch[0]] > budget or lengths[nxt] > budget
    assert token_batches(list(lengths), budget) == batches  # deterministic


def test_token_batches_example_and_errors():
    assert token_batches([5, 2, 3, 9], 9) == [[3], [0], [2, 1]]
    assert token_batches([3, 3, 3], 9) == [[0, 1, 2]]
    assert token_batches([3, 3, 3], 8) == [[0, 1], [2]]
    with pytest.raises(ValueError, match="max_tokens=0"):
        token_batches([1], 0)
    with pytest.raises(TypeError, match="max_tokens=2.5"):
        token_batches([1], 2.5)
    with pytest.raises(ValueError, match=r"lengths\[1\]=-1"):
        token_batches([1, -1], 4)


# ---------------------------------------------------------------------------------------------
# is_oom / free_memory
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "err, expected",
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (torch.cuda.OutOfMemoryError("x"), True),
        (MemoryError("predicted peak 3 GiB > free 1 GiB"), True),
        (RuntimeError("CUDA error: out of memory"), True),
        (RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"), True),
        (
            RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8 bytes"),
            True,
        ),
        (RuntimeError("shape mismatch"), False),
        (ValueError("out of memory"), False),  # a user error that mentions memory is not an OOM
        (KeyError("oom"), False),
    ],
)
def test_is_oom(err, expected):
    assert is_oom(err) is expected


def test_free_memory_collects_cycles_and_empties_the_cuda_cache(monkeypatch):
    calls = []
    monkeypatch.setattr(memory.gc, "collect", lambda: calls.append("gc") or 0)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    free_memory(torch.device("cpu"))
    assert calls == ["gc"]
    free_memory("cuda:1")
    assert calls == ["gc", "gc", "empty_cache"]
    calls.clear()
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    free_memory(None)
    assert calls == ["gc"]


# ---------------------------------------------------------------------------------------------
# One copy of each in the product
# ---------------------------------------------------------------------------------------------

ONE_HOME = {
    "is_oom": "esmkernels.core.memory",
    "free_memory": "esmkernels.core.memory",
    "token_batches": "esmkernels.core.batching",
    "atomic_write": "esmkernels.jobs.files",
    "check_writable": "esmkernels.jobs.files",
    "split_parts": "esmkernels.jobs.files",
}
# Names the older copies had: none may come back under them either.
RETIRED = ("pack_by_length", "plan_batches", "_batches")


def definitions() -> list[tuple[str, str, int]]:
    """(module, function name, line) of every function defined in a product module."""
    found = []
    for module, path in product_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                found.append((module, node.name, node.lineno))
    return found


def test_one_definition_of_each_job_helper():
    defs = definitions()
    for name, home in ONE_HOME.items():
        where = [(m, line) for m, n, line in defs if n == name]
        assert where and all(m == home for m, _ in where), f"{name} defined at {where}"
        assert len(where) == 1, f"{name} defined {len(where)} times: {where}"
    retired = [(m, n, line) for m, n, line in defs if n in RETIRED]
    assert not retired, f"a second batcher is back: {retired}"
