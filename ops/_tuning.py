"""Autotune config lists and the fp32-aware `dot` shared by the attention and triangle kernels.

fp32 operands take 3xTF32 dots (`dot`), which need about twice the registers of bf16 ones: tiles
that fit in bf16 spill in fp32, and "ieee" FMA dots spill at every useful tile size on sm_90
(ptxas). So each kernel gets one config list for bf16 / fp16 and one for fp32 (`tuning`), and
an early prune keeps the list that matches the launch's dtype (and, for head-dim tables, its
`D`). Every config left in a space compiles for sm_90 without register spills under the Triton
it runs on (checked per kernel by the `tests/_sm90.py` compile tests, under Triton 3.9 by
`make test` and 3.6 by `make compat`): a config that spills under one release only is left out
there, by the table `esmkernels.ops._spills.SPILLS`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from esmkernels.ops import _spills
from esmkernels.ops._compat import parse_version
from esmkernels.ops._dispatch import interpreting
from esmkernels.ops._recorded_configs import AUTOTUNE_DISK_CACHE, recorded_choice


def block_configs(choices):
    """Config maker for `tuning`: (BLOCK_M, BLOCK_N, num_warps, num_stages) tuples.

    Under the interpreter: one 8 x 8 config (a GPU needs >= 16 for tl.dot; the interpreter does
    not) so that tiny test shapes still cross block boundaries. Square on purpose, for speed:
    the op tests run every autotuned kernel with rectangular tiles in both orders
    (`tests/_launches.py::tiles`), where a BLOCK_M / BLOCK_N mix-up fails.
    """
    if interpreting():
        return [triton.Config({"BLOCK_M": 8, "BLOCK_N": 8}, num_warps=1, num_stages=1)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in choices
    ]


# kernel name -> (lowp, fp32, make) as given to `tuning`: the spaces before any config is left out
# (the spill-table tests check every list against every supported Triton release).
SPACES: dict[str, tuple] = {}


def drop_spilling(
    configs: list,
    kernel: str | None,
    dtype: str,
    max_d: int | None,
    release: tuple[int, int] | None = None,
) -> list:
    """`configs` (triton.Config) less those `_spills.SPILLS` lists for `kernel`'s `dtype` /
    `max_d` list under Triton `release` (default: the installed one). ValueError when a row names
    a config the list does not have (stale data) or when nothing would be left."""
    if kernel is None:
        return configs
    release = parse_version(triton.__version__) if release is None else tuple(release)
    rows = _spills.spilling(kernel, dtype, max_d, release)
    for row in rows:
        if not any(_spills.matches(row, c) for c in configs):
            raise ValueError(f"{kernel}: {row} names a config its {dtype} list does not have")
    kept = [c for c in configs if not any(_spills.matches(row, c) for row in rows)]
    if not kept:
        where = "" if max_d is None else f" for D <= {max_d}"
        raise ValueError(
            f"{kernel}: every {dtype} config{where} spills on Triton {release}: add "
            "one that compiles without spills (tests/_sm90.py)"
        )
    return kept


def tuning(lowp, fp32, make=block_configs, kernel: str | None = None) -> dict:
    """`triton.autotune` arguments with one config list for bf16 / fp16 and one for fp32.

    lowp, fp32: lists of config tuples for `make`, or tables {max_D: list} keyed on the
    kernel's `D` constexpr (a launch takes the list of the smallest key >= D). The early prune
    keeps the list matching the dtype of the kernel's first tensor argument (the autotune cache
    is keyed on argument dtypes too); `prune` is exposed for the sm_90 compile tests. Under
    the interpreter: `make`'s single config, no prune.
    On a GPU with recorded winners the prune keeps just the recorded config, and autotune
    results are kept on disk (`esmkernels.ops._recorded_configs`).
    kernel: the tuned kernel's name; the configs `esmkernels.ops._spills.SPILLS` lists for it
    under the installed Triton are left out (on a GPU, not under the interpreter).

    Example: `@triton.autotune(key=["N_KEY"], **tuning(lowp=[(64, 64, 4, 3)],
    fp32=[(64, 32, 4, 2)]))`.
    """
    if kernel is not None:
        SPACES[kernel] = (lowp, fp32, make)
    if interpreting():
        return {"configs": make(next(iter(lowp.values())) if isinstance(lowp, dict) else lowp)}
    tables = {}
    for name, spec in (("lowp", lowp), ("fp32", fp32)):
        rows = spec if isinstance(spec, dict) else {None: spec}
        tables[name] = {d: drop_spilling(make(c), kernel, name, d) for d, c in rows.items()}

    def prune(configs, named_args, **kwargs):
        first = next(v for v in named_args.values() if isinstance(v, torch.Tensor))
        table = tables["fp32" if first.dtype == torch.float32 else "lowp"]
        if None in table:
            wanted = table[None]
        else:
            d = kwargs.get("D", named_args.get("D"))
            wanted = table[min(k for k in table if k >= d)]
        kept = [c for c in configs if any(c is w for w in wanted)]
        return recorded_choice(configs, named_args, kwargs, kept)  # a recorded winner, if any

    configs = [c for table in tables.values() for group in table.values() for c in group]
    return {
        "configs": configs,
        "prune_configs_by": {"early_config_prune": prune},
        **AUTOTUNE_DISK_CACHE,
    }


# Triton 3.9's interpreter multiplies bf16 operands of tl.dot as their raw uint16 bit patterns.
# Under the interpreter only, `dot` widens bf16 operands to fp32 first: the same numbers a GPU
# computes (bf16 products are exact in fp32, accumulation is fp32 on both).
_WIDEN_BF16_DOT = tl.constexpr(interpreting())


@triton.jit
def dot(a, b):
    """tl.dot with fp32 accumulation. fp32 operands use 3xTF32 (hi/lo split products on tensor
    cores, fp32-level accuracy): plain tf32 loses ~3 digits, and "ieee" FMA dots spill
    thousands of bytes of registers at these tile sizes (ptxas, sm_90). The interpreter ignores
    input_precision (exact fp32 products); 16-bit operands use tensor cores either way."""
    if _WIDEN_BF16_DOT and a.dtype == tl.bfloat16:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision="tf32x3")
