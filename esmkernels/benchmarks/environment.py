"""Where a benchmark ran: device name, package versions, git commit (recorded with every result)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def cuda_usable() -> bool:
    """CUDA present and the kernels compiled for it (not the Triton interpreter)."""
    return torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")


def default_device() -> torch.device:
    return torch.device("cuda") if cuda_usable() else torch.device("cpu")


def device_name(device: torch.device | str | None = None) -> str:
    device = default_device() if device is None else torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def device_slug(device: torch.device | str | None = None) -> str:
    """File-name form of the device: 'nvidia-h200', 'cpu-x86-64-2-cores'."""
    return re.sub(r"[^A-Za-z0-9]+", "-", device_name(device)).strip("-").lower()[:40]


def git_commit(short: bool = False) -> str:
    """HEAD of the checkout this package runs from, '-dirty' when tracked files changed.
    Outside a git checkout (a copied tree, as on a lent GPU machine): $ESMKERNELS_COMMIT, else
    'unknown'."""
    given = os.environ.get("ESMKERNELS_COMMIT", "").strip()
    if given and not (REPO / ".git").exists():
        return given[:10] if short else given
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=REPO,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return (given[:10] if short else given) if given else "unknown"
    return (head[:10] if short else head) + ("-dirty" if dirty else "")


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def versions() -> dict[str, str]:
    """torch, triton, transformers, matplotlib versions (from metadata: nothing imported)."""
    out = {"torch": torch.__version__, "cuda": torch.version.cuda or "none"}
    for name in ("triton", "transformers", "matplotlib"):
        out[name] = package_version(name)
    return out


def environment(device: torch.device | str | None = None) -> dict:
    """Everything a result needs to be read later: device, versions, commit, date."""
    device = default_device() if device is None else torch.device(device)
    env = {
        "device": device_name(device),
        "device_type": device.type,
        "commit": git_commit(),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
        **versions(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
        env["multiprocessors"] = props.multi_processor_count
    return env


def results_dir(root: str | os.PathLike = "bench/results", device=None) -> Path:
    """`<root>/<date>-<device>-<commit>/` (not created)."""
    date = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d")
    return Path(root) / f"{date}-{device_slug(device)}-{git_commit(short=True)}"
