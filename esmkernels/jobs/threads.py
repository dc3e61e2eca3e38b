"""How many torch CPU threads the commands use: at most the physical cores this process may use.

Policy (`esmkernels embed`, `score` and `bench`): `--threads N` sets `torch.set_num_threads(N)`;
without it the command caps torch's current count at `physical_cores()` and never raises it (a
count lowered on purpose, by OMP_NUM_THREADS or by a program that calls the command, stands).
Importing esmkernels never changes torch's threads. Why a cap: inside a container or a
batch-scheduler allocation torch counts the host's cores, not the CPUs this process is allowed
(affinity) or its CPU quota (cgroup `cpu.max`), and oversubscribed threads make a CPU forward
several times slower; one thread per SMT sibling adds contention, not matmul units.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path


def _allowed_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return set(range(os.cpu_count() or 1))


def _quota() -> int | None:
    """CPUs granted by the cgroup v2 quota ("max" or absent: None)."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))


def physical_cores() -> int:
    """Physical cores among the CPUs this process may use, capped by the cgroup CPU quota
    (at least 1). SMT siblings count once (Linux topology files; elsewhere every CPU counts)."""
    cpus = _allowed_cpus()
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
            cores.add((package, core))
        except OSError:
            cores.add(("cpu", str(cpu)))
    count = len(cores) or 1
    quota = _quota()
    return max(1, min(count, quota) if quota else count)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads {text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--threads {value}: must be >= 1")
    return value


def add_option(parser: argparse.ArgumentParser, note: str = "") -> None:
    """The commands' `--threads N` option (>= 1; default None: see `set_threads`)."""
    parser.add_argument(
        "--threads",
        type=_count,
        default=None,
        metavar="N",
        help=f"torch CPU threads (default: torch's, at most the physical cores we may use{note})",
    )


def set_threads(requested: int | None) -> int:
    """Set torch's intra-op threads to `requested` (>= 1), or when None to
    min(torch's current count, `physical_cores()`); returns the count set.
    ValueError for requested < 1."""
    import torch

    if requested is not None and requested < 1:
        raise ValueError(f"threads={requested}: must be >= 1")
    threads = requested or min(torch.get_num_threads(), physical_cores())
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads
