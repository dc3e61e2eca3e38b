"""The registry of ops: what the rest of the house reads instead of lists kept by hand.

One `Op` entry per op, defined in its package (`ops/<package>/__init__.py`, `OP`) and listed
here by package name. Readers:

- `esmkernels.ops` exports every entry's function under its name;
- `esmkernels.ops._dispatch.choose` runs each entry's `unsupported` predicate for "auto";
- the fast ESMFold's trunk op namespace (`esmkernels.models.esmfold.KernelTrunkOps`) offers
  every entry marked `trunk`, called with the model's backend;
- the kernel benchmark suite (`esmkernels.benchmarks.kernels`) takes its cases from
  `bench_cases`, and times an op without a hand-written case through its `example` inputs;
- `esmkernels info` lists the entries; the tests check each entry's kernels, custom ops, the
  "auto" rule and the chunk-size rule over the whole registry.

Adding an op: its package (`__init__.py` with the function and `OP`, `op.py`, `forward.py`,
`backward.py`), its reference function in `esmkernels.reference`, its tests, and one line each
in `PACKAGES` below, in `ops/__init__.py` (the re-export) and in pyproject's package list.

Example:
    >>> from esmkernels.ops import registry
    >>> [op.name for op in registry.ops()]  # doctest: +NORMALIZE_WHITESPACE
    ['layer_norm', 'rotary_attention', 'triangle_multiplicative_update', 'axial_attention']
    >>> registry.get("axial_attention").custom_ops
    ('esmkernels::axial_attention_fwd', 'esmkernels::axial_attention_bwd')
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass

# The op packages under esmkernels.ops, in the order `ops()` lists them.
PACKAGES = ("layernorm", "rotary", "trimul", "axial")


@dataclass(frozen=True)
class Op:
    """One op as the rest of the house sees it.

    Fields:
        name: the public function's name, exported by `esmkernels.ops`.
        function: the public function (`backend=` keyword; `chunk_size=` when it chunks).
        reference: the plain-PyTorch spec in `esmkernels.reference`, same arguments, no backend.
        custom_ops: the `torch.library` operators of the Triton path ("esmkernels::<name>").
        kernels: the names of its `@triton.jit` kernels (keys of the recorded autotune configs).
        unsupported: called with the function's arguments, returns why the Triton kernels
            cannot run those inputs (a sentence naming the value), or None when they can. The
            device is not its business: `esmkernels.ops._dispatch.choose` checks that.
        example: `example(length, *, device, dtype, requires_grad=False, real=False)` ->
            (args, kwargs) for `function` and `reference`: inputs of sequence length `length`
            (`real`: the ESM-2 650M / ESMFold sizes, else tiny ones).
        trunk: an ESMFold trunk op (the trunk's op namespace offers it); it takes `chunk_size`
            in rows of the pair.
        bench_cases: names of its cases in the kernel benchmark suite (default: one case named
            after the op, timed through `example`).
    """

    name: str
    function: Callable
    reference: Callable
    custom_ops: tuple[str, ...]
    kernels: tuple[str, ...]
    unsupported: Callable[..., str | None]
    example: Callable[..., tuple[tuple, dict]]
    trunk: bool = False
    bench_cases: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.bench_cases:
            object.__setattr__(self, "bench_cases", (self.name,))


@functools.cache
def ops() -> tuple[Op, ...]:
    """Every registered op, in `PACKAGES` order (imports the packages on first call)."""
    return tuple(importlib.import_module(f"esmkernels.ops.{p}").OP for p in PACKAGES)


def get(name: str) -> Op:
    """The entry of the op named `name`; KeyError naming the registered ops otherwise."""
    for op in ops():
        if op.name == name:
            return op
    raise KeyError(f"no op named {name!r}; registered: {[op.name for op in ops()]}")


__all__ = ["PACKAGES", "Op", "get", "ops"]
