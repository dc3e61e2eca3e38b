"""Autotune configs that spill registers on sm_90 under one Triton release, as data.

Each supported Triton release bundles its own ptxas, and the same tile can fit in registers under
one and spill under another (docs/COMPATIBILITY.md). Every config of an autotune space must
compile without spills under the Triton it runs on, so a config that spills under one release
only is listed here and `esmkernels.ops._tuning.tuning` leaves it out of the space there; the
space keeps it under the other releases. One row per (Triton major.minor, kernel, dtype list, D
list, config), with the spill measured by the sm_90 compile checks (`tests/_sm90.py`: Triton's
own ptxas invocation, launch-time 16-divisibility hints; bytes of spill stores + loads; trimul
kernels at C = Ch = 128, ESMFold's c_z).

Checked both ways by `tests/test_spills.py`: under the running Triton, every row of its release
still spills (else the row is stale), and every config left in a space compiles spill-free (the
op tests' compile checks). `make test` checks the Triton 3.9 rows, `make compat` the 3.6 ones.
"""

from __future__ import annotations

from typing import NamedTuple


class Spill(NamedTuple):
    """One config left out of a kernel's autotune space under one Triton release.

    triton: (major, minor) of the release whose ptxas spills.
    kernel: the `@triton.jit` function's name.
    dtype: "lowp" (the bf16 / fp16 list) or "fp32".
    max_d: the list's head-dim key (`tuning` tables keyed on D), None for a kernel with one list.
    blocks, num_warps, num_stages: the config, as the kernel's `triton.Config` has it.
    spill_bytes: spill stores + loads that ptxas reported.
    """

    triton: tuple[int, int]
    kernel: str
    dtype: str
    max_d: int | None
    blocks: dict[str, int]
    num_warps: int
    num_stages: int
    spill_bytes: int


SPILLS: tuple[Spill, ...] = (
    # Triton 3.6 (the GPU image's), measured with triton 3.6.0.
    Spill((3, 6), "_rotary_attention_fwd_kernel", "fp32", 128, {"BLOCK_M": 32, "BLOCK_N": 32}, 4, 2, 132),
    Spill((3, 6), "_rotary_attention_bwd_dkdv_kernel", "fp32", 64, {"BLOCK_M": 16, "BLOCK_N": 32}, 4, 2, 20),
    Spill((3, 6), "_rotary_attention_bwd_dkdv_kernel", "fp32", 128, {"BLOCK_M": 16, "BLOCK_N": 16}, 8, 2, 36),
    Spill((3, 6), "_rotary_attention_bwd_dq_kernel", "fp32", 128, {"BLOCK_M": 16, "BLOCK_N": 16}, 8, 2, 64),
    Spill((3, 6), "_rotary_attention_bwd_dq_kernel", "lowp", 128, {"BLOCK_M": 64, "BLOCK_N": 64}, 8, 3, 32),
    Spill((3, 6), "_trimul_proj_kernel", "lowp", None, {"BLOCK_P": 64, "BLOCK_H": 64}, 4, 2, 128),
    Spill((3, 6), "_trimul_proj_kernel", "fp32", None, {"BLOCK_P": 64, "BLOCK_H": 64}, 8, 2, 316),
    Spill((3, 6), "_trimul_out_kernel", "fp32", None, {"BLOCK_P": 32, "BLOCK_N": 64}, 8, 3, 1144),
    # Triton 3.9 (the pinned CPU set), measured with triton 3.9.0.
    Spill((3, 9), "_rotary_attention_bwd_dkdv_kernel", "fp32", 128, {"BLOCK_M": 16, "BLOCK_N": 16}, 8, 1, 12),
)  # fmt: skip


def spilling(kernel: str, dtype: str, max_d: int | None, triton: tuple[int, int]) -> list[Spill]:
    """The rows for one of `kernel`'s lists under Triton `triton` (major, minor)."""
    return [
        s
        for s in SPILLS
        if (s.triton, s.kernel, s.dtype, s.max_d) == (tuple(triton), kernel, dtype, max_d)
    ]


def matches(spill: Spill, config) -> bool:
    """Whether the triton.Config `config` is the row's config."""
    return (dict(config.kwargs), config.num_warps, config.num_stages) == (
        spill.blocks,
        spill.num_warps,
        spill.num_stages,
    )
