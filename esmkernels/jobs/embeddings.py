"""An embedding store on disk: sharded safetensors files plus an index, written resumably.

`esmkernels embed` writes it; `open_embeddings(DIR)` reads it.

Layout of DIR for a job split into N parts (N = 1 without `--shard` / torchrun), part K:

* `index-KofN.json`: the part's index (manifest). Its `settings` (model, layers, pools, dtype,
  input checksum, ...) and, per record of the part in input order: `id`, `order` (0-based
  position in the FASTA), `length`, `sha256` of the sequence, `status` ("done" / "failed"),
  `reason` (failed), and where the numbers are: `shard`, `row`, `token_offset`,
  `stored_length` (residues embedded: fewer when truncated). Ids never become file names.
* `shard-KofN-SSSSS.safetensors`: one file per shard S of part K, holding for its done records
  (rows in input order) `mean.<layer>` [n, D], `bos.<layer>` [n, D], `per_tok.<layer>`
  [sum of lengths, D] (records concatenated; `token_offset` and `stored_length` in the index)
  and `contacts.<row>` [L, L], all float32, for each pool asked for.

Which records go to which part and shard is a pure function of the input (lengths, order) and
the settings, decided before any work (`split_parts` and `plan_shards` of
`esmkernels.jobs.files`). Work is done shard by shard; each shard file is written to a temporary name, flushed to disk and renamed, and only
then is the index rewritten (the same way) to list the shard's records. A run killed at any
point leaves complete shards listed in the index and nothing else that looks complete, and a
rerun computes exactly the shards that are missing, with the same batches, so its files are
byte-identical to an uninterrupted run's (same machine and software: the numbers come from the
same computations).

Example:
    >>> from esmkernels import open_embeddings
    >>> store = open_embeddings("emb/")  # doctest: +SKIP
    >>> store["sp|P69905|HBA_HUMAN"]["mean_representations"][33].shape  # doctest: +SKIP
    torch.Size([1280])
    >>> X, ids = store.matrix(33, "mean")  # [N, 1280] numpy (memory-mapped where possible)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from esmkernels.jobs.files import atomic_write, check_creatable, check_settings, check_writable

FORMAT = "esmkernels-embeddings/1"
POOLS = ("mean", "per_tok", "bos", "contacts")
# fair-esm's esm-extract record keys for each pool, which `EmbeddingStore[id]` returns.
RECORD_KEYS = {
    "mean": "mean_representations",
    "per_tok": "representations",
    "bos": "bos_representations",
}
_INDEX = re.compile(r"^index-(\d+)of(\d+)\.json$")


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def index_name(part: int, parts: int) -> str:
    return f"index-{part}of{parts}.json"


def shard_name(part: int, parts: int, shard: int) -> str:
    return f"shard-{part}of{parts}-{shard:05d}.safetensors"


class EmbeddingWriter:
    """The writing side of one part of a store: resume state, shard files, the index part.

    Constructing it only reads (the settings and index parts already in `directory`);
    `prepare` (called by the first `write_shard`) creates the directory and removes the
    temporary files a killed run of this part left.

    Args:
        directory: the store (created by `prepare` when missing; must be writable).
        settings: everything that determines the numbers (model, layers, pools, dtype, input
            checksum, ...); a rerun must pass equal settings, or ValueError names the
            differences (a store never mixes two jobs).
        part, parts: this writer's share K of N.

    Raises:
        ValueError: unwritable directory, settings differing from the stored ones, or index
            parts of another split (N) in the directory.
    """

    def __init__(self, directory: str | os.PathLike, settings: dict, part: int, parts: int):
        self.directory = check_creatable(directory)
        self.settings = json.loads(json.dumps(settings))  # plain JSON values, as stored
        self.part, self.parts = part, parts
        self.index_path = self.directory / index_name(part, parts)
        self.records: dict[int, dict] = {}
        self._prepared = False
        for path in sorted(self.directory.glob("index-*.json")):
            found = _INDEX.match(path.name)
            if found and int(found.group(2)) != parts:
                raise ValueError(
                    f"{self.directory} holds a job split {found.group(2)} ways ({path.name}); "
                    f"this run is split {parts} ways. Rerun with the same split, or use a new "
                    "--out directory"
                )
            other = _read_json(path)
            check_settings(other.get("settings", {}), self.settings, path)
        if self.index_path.exists():
            for entry in _read_json(self.index_path)["records"]:
                self.records[entry["order"]] = entry

    def prepare(self) -> None:
        """Create the directory, and remove the temporary files a killed run of this part left
        (a shard or index being written; nothing else writes them)."""
        if self._prepared:
            return
        check_writable(self.directory)
        pattern = (f".shard-{self.part}of{self.parts}-*.tmp", f".{self.index_path.name}.*.tmp")
        for glob in pattern:
            for stale in self.directory.glob(glob):
                stale.unlink(missing_ok=True)
        self._prepared = True

    def finished(self, orders: Sequence[int]) -> bool:
        """True when every record index in `orders` is in the index (done or failed)."""
        return all(i in self.records for i in orders)

    def write_shard(self, shard: int, entries: list[dict], tensors: dict[str, torch.Tensor]):
        """Make one shard durable, then list its records in the index.

        `entries`: index entries of the shard's records (done and failed); `tensors`: the
        shard's arrays (no file when empty: every record failed; a rewritten shard whose
        records all failed this time loses its old file).
        """
        self.prepare()
        name = shard_name(self.part, self.parts, shard)
        if tensors:
            from safetensors.torch import save

            payload = {
                k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()
            }
            atomic_write(self.directory / name, save(payload))
            for e in entries:
                if e["status"] == "done":
                    e["shard"] = name
        for e in entries:
            self.records[e["order"]] = e
        self._write_index()
        if not tensors:  # after the index: it no longer lists the file
            (self.directory / name).unlink(missing_ok=True)

    def _write_index(self) -> None:
        data = {
            "format": FORMAT,
            "part": self.part,
            "parts": self.parts,
            "settings": self.settings,
            "records": [self.records[i] for i in sorted(self.records)],
        }
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        atomic_write(self.index_path, (text + "\n").encode())


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: unreadable index ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not an esmkernels embedding index ({FORMAT})")
    return data


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def open_embeddings(directory: str | os.PathLike) -> EmbeddingStore:
    """Open a store written by `esmkernels embed` (every part of it, as one store).

    Example:
        >>> store = open_embeddings("emb/")  # doctest: +SKIP
        >>> len(store), store.ids[:2], store.failed  # doctest: +SKIP
        (2, ['seq1', 'seq2'], {'seq3': 'invalid residue ...'})
    """
    return EmbeddingStore(directory)


class EmbeddingStore(Mapping):
    """Read-only view of an embedding store: a mapping id -> record, in input order.

    * `store[id]` reads that record only (its rows of one shard, memory-mapped): a dict in
      fair-esm's `esm-extract` layout, `{"label", "length", "mean_representations": {layer:
      [D]}, "representations": {layer: [L, D]}, "bos_representations": {layer: [D]},
      "contacts": [L, L]}` with the pools the job computed (float32 torch tensors).
    * `store.ids`: ids of the embedded records in input order; iteration and `len` follow it.
    * `store.failed`: {id: reason} of records that failed; `store.settings`, `store.layers`.
    * `store.matrix(layer, "mean" | "bos")`: `(array [N, D], ids)`.

    Raises ValueError when the directory holds no index or parts of different jobs.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        paths = sorted(p for p in self.directory.glob("index-*.json") if _INDEX.match(p.name))
        if not paths:
            raise ValueError(f"{self.directory} holds no embedding index (index-KofN.json)")
        entries: list[dict] = []
        self.settings: dict | None = None
        for path in paths:
            data = _read_json(path)
            if self.settings is None:
                self.settings = data["settings"]
            else:
                check_settings(self.settings, data["settings"], path)
            entries += data["records"]
        entries.sort(key=lambda e: e["order"])
        self._entries = {e["id"]: e for e in entries if e["status"] == "done"}
        if len(self._entries) != sum(e["status"] == "done" for e in entries):
            raise ValueError(f"{self.directory}: an id appears in two index parts")
        self.ids: list[str] = list(self._entries)
        self.failed: dict[str, str] = {
            e["id"]: e.get("reason", "") for e in entries if e["status"] != "done"
        }
        self.layers: list[int] = list(self.settings.get("layers", []))
        self.pools: list[str] = list(self.settings.get("include", []))

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __contains__(self, rid: object) -> bool:
        return rid in self._entries

    def __repr__(self) -> str:
        return (
            f"EmbeddingStore({str(self.directory)!r}, {len(self)} records, "
            f"{len(self.failed)} failed, layers={self.layers}, pools={self.pools})"
        )

    def entry(self, rid: str) -> dict:
        """The index entry of `rid` (status, length, checksum, shard, ...)."""
        if rid not in self._entries:
            why = f" (it failed: {self.failed[rid]})" if rid in self.failed else ""
            raise KeyError(f"{rid!r} is not in the store{why}")
        return self._entries[rid]

    def __getitem__(self, rid: str) -> dict:
        from safetensors import safe_open

        e = self.entry(rid)
        row, n = e["row"], e["stored_length"]
        out: dict[str, Any] = {"label": rid, "length": e["length"]}
        with safe_open(self.directory / e["shard"], framework="pt") as f:
            for pool, key in RECORD_KEYS.items():
                if pool not in self.pools:
                    continue
                if pool == "per_tok":
                    start = e["token_offset"]
                    out[key] = {
                        layer: f.get_slice(f"per_tok.{layer}")[start : start + n]
                        for layer in self.layers
                    }
                else:
                    out[key] = {
                        layer: f.get_slice(f"{pool}.{layer}")[row : row + 1][0]
                        for layer in self.layers
                    }
            if "contacts" in self.pools:
                out["contacts"] = f.get_tensor(f"contacts.{row}")
        return out

    def matrix(self, layer: int, pool: str = "mean") -> tuple[np.ndarray, list[str]]:
        """One row per embedded record, in input order: `(array [N, D] float32, ids)`.

        `layer` is one of `store.layers` (negative counts from the end of that list);
        `pool` is "mean" or "bos". A store whose records all live in one shard gives a
        read-only memory map of that file; otherwise the shards' maps are concatenated.
        """
        if pool not in ("mean", "bos"):
            raise ValueError(f"matrix: pool={pool!r} must be 'mean' or 'bos' (fixed width)")
        if pool not in self.pools:
            raise ValueError(f"matrix: this store has pools {self.pools}, not {pool!r}")
        if layer < 0 and -len(self.layers) <= layer:
            layer = self.layers[layer]
        if layer not in self.layers:
            raise ValueError(f"matrix: layer {layer} is not stored; stored: {self.layers}")
        key = f"{pool}.{layer}"
        shards = list(dict.fromkeys(self._entries[r]["shard"] for r in self.ids))
        maps = {s: _memmap(self.directory / s, key) for s in shards}
        if len(shards) == 1:
            rows = [self._entries[r]["row"] for r in self.ids]
            array = maps[shards[0]]
            return (array if rows == list(range(len(array))) else array[rows]), list(self.ids)
        out = np.empty((len(self.ids), maps[shards[0]].shape[1]), dtype=np.float32)
        for n, rid in enumerate(self.ids):
            e = self._entries[rid]
            out[n] = maps[e["shard"]][e["row"]]
        return out, list(self.ids)


def _memmap(path: Path, key: str) -> np.ndarray:
    """A read-only numpy memory map of one float32 tensor of a safetensors file."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    info = header[key]
    if info["dtype"] != "F32":
        raise ValueError(f"{path}: {key} is {info['dtype']}, expected F32")
    start, end = info["data_offsets"]
    shape = tuple(info["shape"])
    if end == start:
        return np.zeros(shape, dtype=np.float32)
    return np.memmap(path, dtype=np.float32, mode="r", offset=8 + header_len + start, shape=shape)


__all__ = [
    "FORMAT",
    "POOLS",
    "EmbeddingStore",
    "EmbeddingWriter",
    "open_embeddings",
]
