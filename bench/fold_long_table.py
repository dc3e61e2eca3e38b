"""The predicted long-fold tables of docs/LONG_PROTEINS.md, from the memory model.

    python -m bench.fold_long_table [--dtype bfloat16] [--backend triton]

Prints two markdown tables for the full esmfold_v1 architecture (ESM-2 3B stem, 48 blocks):
the smallest achievable device peak (over chunk sizes) of one fold at L = 1k ... 20k in both
output modes, and lean with the triangle contraction offloaded to the host (`offload=True`,
with the host memory it needs), with and without the weights; and the longest L that the
model's automatic plan (`fold_memory.auto_fold_plan`) accepts on cards of 24, 48, 80 and
141 GB (their memory less the weights is what the fold may use; auto keeps its 15% margin;
the host is assumed to have the memory offload needs). Predictions, not measurements.
"""

from __future__ import annotations

import argparse

import torch

from esmkernels.models import fold_memory as fm
from esmkernels.models.fold_cost import predict_fold_flops

LENGTHS = (1000, 2000, 4096, 8000, 10000, 16384, 20000)
# Card -> bytes its driver reports (24 GB: 24 GiB; 48 GB: 48 GiB; 80 GB: 80 GiB; H200 141 GB:
# 143,771 MiB).
CARDS = {"24 GB": 24 * 2**30, "48 GB": 48 * 2**30, "80 GB": 80 * 2**30, "141 GB": 143771 * 2**20}


def floor_peak(
    config, length: int, dtype, backend: str, outputs: str, offload: bool = False
) -> tuple[int | None, int]:
    """(chunk, peak) of the smallest predicted peak over auto's candidates."""
    peaks = {
        c: fm.predict_fold_peak_bytes(
            config, length, dtype=dtype, backend=backend, chunk_size=c, outputs=outputs,
            offload=offload,
        )
        for c in fm._candidates(length)
    }  # fmt: skip
    chunk = min(peaks, key=lambda c: (peaks[c], -(c or length)))
    return chunk, peaks[chunk]


def fits(
    config, length: int, memory: int, dtype, backend: str, outputs: str, offload="auto"
) -> bool:
    free = memory - fm.model_weight_bytes(config, dtype)
    try:
        fm.auto_fold_plan(
            config, length, dtype=dtype, backend=backend, free_bytes=free, outputs=outputs,
            offload=offload, host_free_bytes=2**60,
        )  # fmt: skip
    except MemoryError:
        return False
    return True


def longest(config, memory: int, dtype, backend: str, outputs: str, offload="auto") -> int:
    """The largest L (to 10 residues) that fits: peaks grow with L, so a bisection."""
    args = (memory, dtype, backend, outputs, offload)
    lo, hi = 0, 64
    while fits(config, hi, *args):
        lo, hi = hi, hi * 2
    while hi - lo > 10:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(config, mid, *args) else (lo, mid)
    return lo


def tables(dtype=torch.bfloat16, backend: str = "triton") -> str:
    cfg = fm.esmfold_v1_config()
    weights = fm.model_weight_bytes(cfg, dtype)
    gib = 2**30
    lines = [
        f"Predicted peaks, esmfold_v1, {str(dtype).split('.')[-1]}, backend {backend}, the chunk "
        f"with the smallest peak; weights {weights / gib:.1f} GiB.",
        "",
        "| L | full: chunk | full (GiB) | full + weights | lean: chunk | lean (GiB) "
        "| lean + weights | lean + offload + weights | offload's host memory "
        "| one pair tensor | TFLOPs (4 passes) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    e = torch.empty((), dtype=dtype).element_size()
    for L in LENGTHS:
        fc, fp = floor_peak(cfg, L, dtype, backend, "full")
        lc, lp = floor_peak(cfg, L, dtype, backend, "lean")
        _, op = floor_peak(cfg, L, dtype, backend, "lean", offload=True)
        host = fm.predict_host_bytes(cfg, L, dtype=dtype)
        flops = predict_fold_flops(cfg, L, outputs="lean")
        lines.append(
            f"| {L:,} | {fc or 'none'} | {fp / gib:.1f} | {(fp + weights) / gib:.1f} "
            f"| {lc or 'none'} | {lp / gib:.1f} | {(lp + weights) / gib:.1f} "
            f"| {(op + weights) / gib:.1f} | {host / gib:.1f} "
            f"| {L * L * 128 * e / gib:.1f} | {flops / 1e12:,.0f} |"
        )
    lines += ["", "| card | longest L, full outputs | lean outputs, on the device | lean, "
              "offload when needed (auto) |", "| --- | ---: | ---: | ---: |"]  # fmt: skip
    for name, memory in CARDS.items():
        full = longest(cfg, memory, dtype, backend, "full", offload=False)
        lean = longest(cfg, memory, dtype, backend, "lean", offload=False)
        auto = longest(cfg, memory, dtype, backend, "lean", offload="auto")
        lines.append(f"| {name} | {full:,} | {lean:,} | {auto:,} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--backend", default="triton", choices=fm.BACKENDS)
    args = p.parse_args(argv)
    print(tables(getattr(torch, args.dtype), args.backend))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
