"""Job files: atomic writes, output checks, input checksums, and splitting a job into parts
(ranks) and shards. What `esmkernels embed`, `fold` and `score` share; the embedding store
(`esmkernels.jobs.embeddings`) is one user.

Every split is a pure function of the input (lengths, order) and the settings, decided before
any work, so a rerun of a killed job plans the same parts and shards and recomputes only what
is missing.

Example:
    >>> split_parts([10, 1, 8, 3], 2)
    [[0, 1], [2, 3]]
    >>> parse_shard("1/4")
    (1, 4)
"""

from __future__ import annotations

import hashlib
import heapq
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "atomic_write",
    "check_creatable",
    "check_settings",
    "check_writable",
    "input_sha256",
    "parse_shard",
    "plan_shards",
    "safe_name",
    "sequence_sha256",
    "split_parts",
]


# ---------------------------------------------------------------------------------------------
# Atomic files
# ---------------------------------------------------------------------------------------------


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that it is either absent/old or complete, never partial.

    A temporary file in the same directory is written, flushed and fsynced, then renamed over
    `path`; the directory is fsynced so the rename itself survives a crash.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # some filesystems cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(directory: str | os.PathLike) -> Path:
    """Create `directory` if needed and prove a file can be written there (ValueError if not)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"output directory {directory} is not writable: {err}") from None
    return directory


def check_creatable(directory: str | os.PathLike) -> Path:
    """Check, without creating anything, that `directory` can hold the job's files: an existing
    directory a file can be written in, or a missing one whose nearest existing parent is a
    writable directory. ValueError naming the problem otherwise."""
    directory = Path(directory)
    if directory.exists():
        if not directory.is_dir():
            raise ValueError(f"output directory {directory} exists and is not a directory")
        return check_writable(directory)
    parent = directory.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"output directory {directory} is not writable: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(
            f"output directory {directory} is not writable: cannot create it in {parent}"
        )
    return directory


def sequence_sha256(sequence: str) -> str:
    return hashlib.sha256(sequence.encode()).hexdigest()


def input_sha256(records: Sequence[tuple[str, str]]) -> str:
    """Checksum of a job's input: every (id, sequence) in order."""
    h = hashlib.sha256()
    for rid, seq in records:
        h.update(rid.encode() + b"\0" + seq.encode() + b"\n")
    return h.hexdigest()


def safe_name(rid: str, taken: set[str]) -> str:
    """A file-name stem for a record id: the id when it is a plain name, else a cleaned form
    plus a short hash of the id (so two ids never share a file)."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", rid)[:100].lstrip(".") or "record"
    if clean != rid or clean.lower() in taken:
        clean = f"{clean}-{hashlib.sha256(rid.encode()).hexdigest()[:8]}"
    taken.add(clean.lower())
    return clean


# ---------------------------------------------------------------------------------------------
# Splitting work: parts (ranks) and shards
# ---------------------------------------------------------------------------------------------


def parse_shard(text: str) -> tuple[int, int]:
    """ "K/N" (0-based K) -> (K, N); ValueError naming the text otherwise."""
    found = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not found:
        raise ValueError(f"--shard {text!r}: expected K/N, e.g. 0/4 (K counts from 0)")
    k, n = int(found.group(1)), int(found.group(2))
    if n < 1 or not 0 <= k < n:
        raise ValueError(f"--shard {text!r}: need 0 <= K < N")
    return k, n


def split_parts(lengths: Sequence[int], parts: int) -> list[list[int]]:
    """Deal record indices into `parts` disjoint shares with balanced residue counts.

    Longest first, each to the share with the fewest residues so far (ties: lowest share).
    Deterministic; every index lands in exactly one share; nothing is repeated (unlike
    `DistributedSampler`, which pads shares with duplicates). Each share is sorted.

    Example:
        >>> split_parts([10, 1, 8, 3], 2)
        [[0, 1], [2, 3]]
    """
    if parts < 1:
        raise ValueError(f"parts={parts} must be >= 1")
    heap = [(0, k) for k in range(parts)]
    shares: list[list[int]] = [[] for _ in range(parts)]
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        load, k = heapq.heappop(heap)
        shares[k].append(i)
        heapq.heappush(heap, (load + lengths[i] + 2, k))
    return [sorted(s) for s in shares]


def plan_shards(
    lengths: Mapping[int, int], max_records: int, max_bytes: int, bytes_of: Callable[[int], int]
) -> list[list[int]]:
    """Group record indices (keys of `lengths`) into shards, longest first.

    A shard closes when it holds `max_records` records or its estimated size
    (`bytes_of(length)` per record) reaches `max_bytes`. Each shard is returned sorted (its rows
    are stored in input order). Deterministic for the same input.
    """
    shards: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i in sorted(lengths, key=lambda i: (-lengths[i], i)):
        if current and (len(current) >= max_records or size + bytes_of(lengths[i]) > max_bytes):
            shards.append(sorted(current))
            current, size = [], 0
        current.append(i)
        size += bytes_of(lengths[i])
    if current:
        shards.append(sorted(current))
    return shards


def check_settings(stored: dict, wanted: dict, where: Path) -> None:
    """ValueError naming every setting that differs between a stored job and this run.

    The `model` setting is a model identity (`esmkernels.jobs.identity`): it is the same when
    the fingerprints are, however the model was spelled; a difference names the changed files.
    """
    from esmkernels.jobs.identity import describe_model_change, same_model

    def differs(k: str) -> bool:
        if k == "model":
            return not same_model(stored.get(k), wanted.get(k))
        return stored.get(k) != wanted.get(k)

    diff = sorted(k for k in set(stored) | set(wanted) if differs(k))
    if diff:
        shown = ", ".join(
            describe_model_change(stored.get(k), wanted.get(k))
            if k == "model"
            else f"{k}: {stored.get(k)!r} -> {wanted.get(k)!r}"
            for k in diff
        )
        raise ValueError(
            f"{where} was written by a job with other settings ({shown}); rerun with the same "
            "input and options to resume, or use a new --out directory"
        )
