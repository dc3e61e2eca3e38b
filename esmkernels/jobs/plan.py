"""Plan a fold before any work: per record its length, chunk, predicted peak and FLOPs, and
whether it fits (`esmkernels fold --plan`).

Only the FASTA and the model's configuration are read: no weights file is opened and no module
is built (the parameter bytes and FLOPs are closed-form, `esmkernels.models.fold_cost`; the
peak is the memory model's, `esmkernels.models.fold_memory`). A FASTA with lengths 50 to 20,000
plans in well under a second.

The verdict is the one `chunk_size="auto"` gives when the model folds the record alone:
`auto_fold_plan` with the memory the fold may use, i.e. the memory where it runs (CUDA free
memory, the CPU's available RAM, or `memory_bytes` for a device not at hand) less the weights.
On a GPU (or one planned with `memory_bytes`) a record that fits only with the triangle
contraction offloaded to the host gets `offload` and the host bytes it needs (`host_bytes`;
this machine's available RAM must hold them, or `host_memory_bytes` for a host not at hand).
A record it refuses does not fit; its chunk is then None and its peak the smallest achievable.

Example:
    >>> from esmkernels.models.fold_memory import esmfold_v1_config
    >>> plans = plan_fold(esmfold_v1_config(), [("a", "M" * 2000)], dtype="bfloat16",
    ...                   memory_bytes=80 * 2**30)
    >>> plans[0].fits, plans[0].chunk_size
    (True, 1024)
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from esmkernels.core.configuration import EsmConfig
from esmkernels.models import fold_memory as fm
from esmkernels.models.fold_cost import predict_fold_flops
from esmkernels.reference.esmfold.inference import DEFAULT_LINKER

# Model names planned with the built-in esmfold_v1 architecture when no directory is at hand.
ESMFOLD_V1_NAMES = ("esmfold_v1", "facebook/esmfold_v1")
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip

__all__ = ["FoldPlan", "format_plans", "load_config", "parse_memory", "plan_fold", "run_plan"]


@dataclass(frozen=True)
class FoldPlan:
    """One record's plan. Bytes are predicted tensor peaks of the fold; `flops` is forward FLOPs."""

    id: str
    length: int
    chunk_size: int | None
    peak_bytes: int
    peak_bytes_with_weights: int
    fits: bool
    flops: int
    memory_bytes: int  # the memory the plan was made for (weights included)
    offload: bool = False  # the triangle contraction in host memory (`set_offload`)
    host_bytes: int = 0  # host memory the offload holds

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def parse_memory(text: str) -> int:
    """'80GiB', '24GB', '141 GB', '1.5TiB' or a number of bytes -> bytes.

    Example:
        >>> parse_memory("80GiB"), parse_memory("24GB")
        (85899345920, 24000000000)
    """
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = found.group(2).lower() if found else None
    if not found or unit not in _UNITS or float(found.group(1)) <= 0:
        raise ValueError(f"memory {text!r}: expected a size such as 80GiB, 24GB or 1.5TiB")
    return int(float(found.group(1)) * _UNITS[unit])


def load_config(model: str | os.PathLike) -> EsmConfig:
    """The ESMFold configuration of `model`: a checkpoint directory (its config.json) or a
    JSON file; `esmfold_v1` / `facebook/esmfold_v1` without such a path on disk give the
    published architecture. Weights are never read."""
    path = Path(model)
    if path.is_dir() and (path / "config.json").is_file() or path.suffix == ".json":
        config = EsmConfig.from_pretrained(path)
    elif str(model) in ESMFOLD_V1_NAMES:
        config = fm.esmfold_v1_config()
    else:
        raise ValueError(
            f"plan: model {str(model)!r} is not a directory with a config.json, a .json file or "
            f"one of {ESMFOLD_V1_NAMES} (a plan reads the configuration only, never the weights)"
        )
    if not config.is_folding_model or config.esmfold_config is None:
        raise ValueError(f"plan: {str(model)!r} is not an ESMFold configuration")
    return config


def positions(sequence: str, chain_linker: str = DEFAULT_LINKER) -> int:
    """L of a record as the model folds it: its chains and the linkers between them."""
    chains = sequence.split(":")
    return sum(len(c) for c in chains) + len(chain_linker) * (len(chains) - 1)


def plan_fold(
    config: EsmConfig,
    records: Sequence[tuple[str, str]],
    *,
    dtype: torch.dtype | str = torch.float32,
    backend: str | None = None,
    device: torch.device | str | None = None,
    memory_bytes: int | None = None,
    chunk_size: int | str | None = "auto",
    outputs: str = "lean",
    num_recycles: int | None = None,
    chain_linker: str = DEFAULT_LINKER,
    offload: bool | str = "auto",
    host_memory_bytes: int | None = None,
) -> list[FoldPlan]:
    """Plan each record folded alone; see the module docstring.

    Args:
        config: an ESMFold `EsmConfig` (`load_config`).
        records: `[(id, sequence), ...]`, multimer chains joined by ':'.
        dtype: the model's dtype (a torch dtype or its name).
        backend: "torch" or "triton" (None / "auto": Triton on a GPU; a plan with
            `memory_bytes` and no CPU `device` is for a GPU).
        device: where the fold would run (default: CUDA when present, else the CPU).
        memory_bytes: the device's memory, weights included, instead of this machine's free
            memory (plan for a GPU not at hand).
        chunk_size: "auto" (the memory model's pick, as the CLI), rows per block, or None.
        outputs: "lean" (what `fold` writes) or "full".
        num_recycles: as `forward` (None: the model's `max_recycles` passes), for the FLOPs.
        chain_linker: the multimer linker (its residues count in L).
        offload: "auto" (offload where a GPU fold fits only so), True or False, as
            `EsmForProteinFolding.set_offload`.
        host_memory_bytes: the host's free memory for offload (default: this machine's
            available RAM; with `memory_bytes`, a host not at hand, assumed large enough, and
            the plan says how much it needs).

    Returns:
        `[len(records)]` `FoldPlan`s in input order.
    """
    if isinstance(dtype, str):
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"plan: dtype={dtype!r} is not float32, bfloat16 or float16")
        dtype = getattr(torch, dtype)
    named_cpu = device is not None and torch.device(device).type == "cpu"
    if device is None:
        device = "cuda" if memory_bytes is None and torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    gpu = device.type == "cuda" or (memory_bytes is not None and not named_cpu)
    if backend in (None, "auto"):
        backend = "triton" if gpu else "torch"
    weights = fm.model_weight_bytes(config, dtype)
    total = fm.free_memory_bytes(device) + weights if memory_bytes is None else memory_bytes
    free = max(total - weights, 0)
    plans = []
    # The device the plan is for: a GPU with memory_bytes unless the CPU was named.
    where = torch.device("cuda") if gpu else device
    if host_memory_bytes is None and memory_bytes is not None:
        host_memory_bytes = 2**62
    for rid, seq in records:
        L = positions(seq, chain_linker)
        kw = dict(dtype=dtype, backend=backend, outputs=outputs)
        try:
            chunk, off = fm.auto_fold_plan(
                config, L, **kw, device=where, free_bytes=free, offload=offload,
                chunk_size=chunk_size, host_free_bytes=host_memory_bytes,
            )  # fmt: skip
            fits = True
        except MemoryError:
            chunk, off, fits = None, gpu, False
        off = bool(off and offload is not False)
        sizes = [chunk] if fits else fm._candidates(L)
        peak = min(
            fm.predict_fold_peak_bytes(config, L, chunk_size=c, offload=off, **kw) for c in sizes
        )
        if chunk_size != "auto":
            fits = peak <= free * (1 - fm.SAFETY_MARGIN)
        host = fm.predict_host_bytes(config, L, dtype=dtype, offload=off)
        flops = predict_fold_flops(config, L, num_recycles=num_recycles, outputs=outputs)
        plans.append(FoldPlan(rid, L, chunk, peak, peak + weights, fits, flops, total, off, host))
    return plans


def format_plans(plans: Sequence[FoldPlan]) -> str:
    """A table: id, L, chunk, device peak and peak with weights (GiB), offload's host GiB (or
    -), fits, TFLOPs."""
    head = (
        f"{'id':<24} {'L':>7} {'chunk':>6} {'peak GiB':>9} {'+weights':>9} {'host GiB':>9} "
        f"{'fits':>5} {'TFLOP':>10}"
    )
    rows = [head]
    for p in plans:
        chunk = "none" if p.chunk_size is None else str(p.chunk_size)
        host = f"{p.host_bytes / 2**30:.2f}" if p.offload else "-"
        rows.append(
            f"{p.id[:24]:<24} {p.length:>7} {chunk:>6} {p.peak_bytes / 2**30:>9.2f} "
            f"{p.peak_bytes_with_weights / 2**30:>9.2f} {host:>9} {'yes' if p.fits else 'NO':>5} "
            f"{p.flops / 1e12:>10.1f}"
        )
    return "\n".join(rows)


def run_plan(
    fasta: str | os.PathLike,
    model: str | os.PathLike,
    *,
    as_json: bool = False,
    memory: str | None = None,
    print_line=print,
    **kwargs,
) -> int:
    """`esmkernels fold --plan`: plan every record of `fasta` and print the plans (a table, or
    one JSON object per record). Returns the exit code: 0 when all fit, 1 when some would be
    refused. `kwargs` go to `plan_fold` (dtype, backend, device, chunk_size, num_recycles)."""
    from esmkernels.jobs.fasta import read_records

    records, _rejected = read_records(fasta, multimer=True, skip_invalid=True)
    plans = plan_fold(
        load_config(model),
        [(r.id, r.sequence) for r in records],
        memory_bytes=None if memory is None else parse_memory(memory),
        **kwargs,
    )
    if as_json:
        for plan in plans:
            print_line(plan.to_json())
    else:
        print_line(format_plans(plans))
    return 0 if all(p.fits for p in plans) else 1
