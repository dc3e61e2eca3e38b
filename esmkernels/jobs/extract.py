"""An extraction job in fair-esm's `esm-extract` layout: one `<label>.pt` per record, resumably.

Each file is what `esm-extract` (fair-esm `scripts/extract.py`) writes for the record, readable
with `torch.load(path, weights_only=True)`:

    {"label": str,                                  # the whole FASTA header after '>'
     "representations": {layer: [L, D] float32},       # --include per_tok
     "mean_representations": {layer: [D] float32},    # --include mean
     "bos_representations": {layer: [D] float32},     # --include bos
     "contacts": [L, L] float32}                      # --include contacts

`layer` is an int from 0 (the embeddings) to N (the final layer, after the last LayerNorm);
L is the record's length truncated to `truncation` residues (`<cls>` and `<eos>` excluded), and
every tensor is a clone with its own storage, as fair-esm saves them. The label may hold `/`:
the file then lands in a subdirectory, as with fair-esm.

The numbers come from the embedding job's machinery (`esmkernels.jobs.embed.EmbedJob`, in its
"truncate" mode): records truncated to `truncation` residues, batched by
`esmkernels.core.batching.token_batches` within `max_tokens` padded tokens, a failing batch split
in halves, a record failing alone recorded as failed, and its `preflight`.

Resume: the batches are planned once from the whole input. A run computes the batches that hold
a record without a complete file and writes every member of such a batch, so each record is
computed with the companions of an uninterrupted run (also after a failure had split its batch)
and the files are byte-identical to that run's; records of other batches are never recomputed.
`OUTDIR/.esmkernels-extract.json` (the manifest) holds the settings (model identity, layers,
pools, truncation, dtype, ...), the SHA-256 of each label's sequence and the failed records. A
rerun with other settings, or with another sequence under a label whose file exists, is refused
naming the difference; a failed record (no file) is retried unless `retry_failed=False`. Records
added to the FASTA are extracted by a rerun. Nothing is written before `run`.

Example:
    >>> job = ExtractJob(out, [("seq1 a protein", "MKTAYIAKQR", None)], {"model": "..."},
    ...                  layers=[0, 33], include=["mean"], truncation=1022,
    ...                  max_tokens=4096)  # doctest: +SKIP
    >>> job.run(model, tokenizer, device)  # doctest: +SKIP
    >>> torch.load(out / "seq1 a protein.pt", weights_only=True)["mean_representations"][33]
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from esmkernels.core.batching import token_batches
from esmkernels.jobs.embed import EmbedJob
from esmkernels.jobs.embeddings import RECORD_KEYS
from esmkernels.jobs.files import atomic_write, check_settings, check_writable, sequence_sha256

MANIFEST = ".esmkernels-extract.json"
FORMAT = "esmkernels-extract/1"
# fair-esm's order of the keys in a record's dict.
POOL_ORDER = ("per_tok", "mean", "bos", "contacts")

__all__ = ["FORMAT", "MANIFEST", "ExtractJob", "output_path", "output_paths"]


def output_path(label: str) -> PurePosixPath:
    """The file of a record, relative to the output directory: `<label>.pt`, as esm-extract.

    Raises:
        ValueError: a label that would leave the output directory or is no file name (absolute,
            a `..` or empty path component, a NUL byte, a component over 255 bytes).

    Example:
        >>> str(output_path("sp|P69905|HBA_HUMAN Hemoglobin alpha"))
        'sp|P69905|HBA_HUMAN Hemoglobin alpha.pt'
        >>> str(output_path("a/b"))
        'a/b.pt'
    """
    name = f"{label}.pt"
    parts = name.split("/")
    why = None
    if "\0" in name:
        why = "holds a NUL byte"
    elif name.startswith("/"):
        why = "is an absolute path"
    elif any(p in ("", ".", "..") for p in parts):
        why = "has an empty, '.' or '..' path component"
    elif any(len(p.encode()) > 255 for p in parts):
        why = "has a path component over 255 bytes"
    if why:
        raise ValueError(
            f"label {label!r} {why}: esm-extract writes <label>.pt under the output directory, "
            "so it must be a relative file name (edit the FASTA header)"
        )
    return PurePosixPath(name)


def output_paths(labels: Sequence[str]) -> list[PurePosixPath]:
    """`output_path` of each label; ValueError for a bad label or two labels with one file."""
    seen: dict[PurePosixPath, str] = {}
    for label in labels:
        rel = output_path(label)
        if rel in seen:
            raise ValueError(f"labels {seen[rel]!r} and {label!r} would share the file {rel}")
        seen[rel] = label
    return list(seen)


class ExtractJob(EmbedJob):
    """Every record of `records` extracted into `out/<label>.pt`.

    Constructing it reads the manifest and checks the settings and the existing files against
    this input; nothing is written until `run` (which creates `out`), so `preflight` can stop a
    job that cannot work before it touches `out`.

    Args:
        out: the output directory.
        records: (label, sequence, reason) in input order; `reason` is None for a valid record,
            else why it is invalid (reported as failed, no file written).
        settings: what determines the numbers besides the options below (model identity,
            dtype, backend); a rerun with other settings is refused.
        layers: layers to save, sorted, 0 = embeddings .. N = final.
        include: pools, of ("mean", "per_tok", "bos", "contacts").
        truncation: residues kept per record (esm-extract's --truncation_seq_length).
        max_tokens: padded tokens per batch, <cls> and <eos> included.
        retry_failed: compute the records the manifest lists as failed (default); False keeps
            them failed.

    Raises:
        ValueError: a bad label or two labels with one file (`output_paths`), settings differing
            from the manifest's, a label whose file exists but whose sequence differs from the
            manifest's, or target files in `out` without a manifest.
    """

    def __init__(
        self,
        out: Path,
        records: Sequence[tuple[str, str, str | None]],
        settings: dict[str, Any],
        *,
        layers: list[int],
        include: list[str],
        truncation: int,
        max_tokens: int,
        retry_failed: bool = True,
    ):
        # The embedding job's computing state, without its store: `_plan`, `_compute` and
        # `preflight` run as they do for `embed` in its "truncate" mode.
        self.records = list(records)
        self.layers, self.include = layers, include
        self.limit, self.long_sequences, self.max_tokens = truncation, "truncate", max_tokens
        self.keep_tokens: set[int] = set()
        self.retry_failed = retry_failed
        self.out = Path(out)
        self.paths = [self.out / rel for rel in output_paths([r[0] for r in self.records])]
        self.settings = json.loads(
            json.dumps(
                {
                    **settings,
                    "layers": layers,
                    "include": include,
                    "truncation_seq_length": truncation,
                    "toks_per_batch": max_tokens,
                }
            )
        )
        self.sequences, stored_failed = self._read_manifest()
        self.stored_failed = set(stored_failed)
        entries, segments = self._plan([(i, *rec) for i, rec in enumerate(self.records)])
        self.segments = {seg[0]: seg for seg in segments}  # one per record: truncated
        # Padded batches within max_tokens, counting <cls> and <eos> (segments in input order).
        lengths = [end - start + 2 for _, start, end, _ in segments]
        self.batches = [[segments[k][0] for k in b] for b in token_batches(lengths, max_tokens)]
        # This run's failures: invalid records now, failures at work as they happen.
        self.failures = {i: e["reason"] for i, e in entries.items() if e.get("status")}
        self.done = {i for b in self.batches for i in b if self.complete(i)}
        labels = {label: i for i, (label, _, _) in enumerate(self.records)}
        self.kept_failed = {}  # failed before, not retried (retry_failed=False)
        if not retry_failed:
            for label, reason in stored_failed.items():
                i = labels.get(label)
                if i is not None and i in self.segments and i not in self.done:
                    self.kept_failed[i] = reason

    # -- resume state ------------------------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.out / MANIFEST

    def _read_manifest(self) -> tuple[dict[str, str], dict[str, str]]:
        """({label: sequence SHA-256}, {label: reason failed}) of the manifest merged with this
        input, after checking both against it (ValueError naming the difference)."""
        stored: dict[str, str] = {}
        failed: dict[str, str] = {}
        if self.manifest_path.exists():
            try:
                data = json.loads(self.manifest_path.read_text())
                if data.get("format") != FORMAT:
                    raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
            except (OSError, ValueError) as err:
                raise ValueError(f"{self.manifest_path}: unreadable manifest ({err})") from None
            check_settings(data["settings"], self.settings, self.manifest_path)
            stored, failed = data["sequences"], data.get("failed", {})
        else:
            present = [p for p in self.paths if p.exists()]
            if present:
                raise ValueError(
                    f"{self.out} holds {len(present)} file(s) this job would write (e.g. "
                    f"{present[0].name}) but no {MANIFEST}: they were not written by "
                    "esmkernels extract, so their settings are unknown; use a new output directory"
                )
        sequences = dict(stored)
        for path, (label, seq, _) in zip(self.paths, self.records):
            sha = sequence_sha256(seq)
            if label in stored and stored[label] != sha and path.exists():
                raise ValueError(
                    f"{path} holds record {label!r} of another sequence (the input's differs "
                    "from the one extracted); remove the file or use a new output directory"
                )
            if stored.get(label, sha) != sha:
                failed.pop(label, None)  # a new sequence under the label: not that failure
            sequences[label] = sha
        return sequences, failed

    def _write_manifest(self) -> None:
        failed = {**self.kept_failed, **self.failures}
        data = {
            "format": FORMAT,
            "settings": self.settings,
            "sequences": self.sequences,
            "failed": {self.records[i][0]: failed[i] for i in sorted(failed)},
        }
        text = json.dumps(data, sort_keys=True, indent=1, ensure_ascii=False)
        atomic_write(self.manifest_path, (text + "\n").encode())

    def complete(self, i: int) -> bool:
        """True when record i's file exists, loads, and holds its label and every pool asked
        for (an atomic write leaves nothing partial; a foreign or damaged file is redone)."""
        import torch

        path = self.paths[i]
        if not path.is_file():
            return False
        try:
            data = torch.load(path, weights_only=True, mmap=True, map_location="cpu")
        except Exception:  # noqa: BLE001 - any unreadable file is simply redone
            return False
        keys = {"label"} | {RECORD_KEYS.get(p, p) for p in self.include}
        if not isinstance(data, dict) or set(data) != keys or data["label"] != self.records[i][0]:
            return False
        return all(
            set(data[RECORD_KEYS[p]]) == set(self.layers) for p in self.include if p in RECORD_KEYS
        )

    # -- progress ----------------------------------------------------------------------------

    @property
    def pending(self) -> list[list[int]]:
        """The planned batches this run computes: those holding a record without a complete
        file (and not kept failed); each is recomputed and written whole."""
        skip = self.done | set(self.kept_failed)
        return [b for b in self.batches if not set(b) <= skip]

    @property
    def total(self) -> int:
        """Residues of the valid records (the progress bar's total)."""
        return sum(len(self.records[i][1]) for i in self.segments)

    @property
    def initial(self) -> int:
        """Residues of the records this run does not compute."""
        return self.total - sum(len(self.records[i][1]) for b in self.pending for i in b)

    @property
    def retrying(self) -> int:
        """Records an earlier run recorded as failed that this run computes again."""
        return sum(self.records[i][0] in self.stored_failed for b in self.pending for i in b)

    @property
    def failed(self) -> list[tuple[str, str]]:
        """(label, reason) of the records that failed, in input order."""
        failed = {**self.kept_failed, **self.failures}
        return [(self.records[i][0], failed[i]) for i in sorted(failed)]

    # -- work --------------------------------------------------------------------------------

    def run(self, model, tokenizer, device, progress: Callable[[int], object] | None = None):
        """Create `out`, write the manifest, then compute and write the `pending` batches;
        `progress(residues)` after each. Records that fail get no file and are in `failed` and
        in the manifest; the rest of the job goes on."""
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self._plan([(i, *rec) for i, rec in enumerate(self.records)])  # keep_tokens (preflight)
        check_writable(self.out)
        self._write_manifest()  # before any file: a file on disk has its checksum listed
        for batch in self.pending:
            results, errors = self._compute([[self.segments[i] for i in batch]])
            for i in batch:
                if i in errors:
                    if i not in self.done:  # a companion failing now keeps its complete file
                        self.failures[i] = errors[i]
                    continue
                ((_, outputs),) = results[i]  # truncate mode: one segment per record
                self._write(i, self._record(i, outputs))
                self.done.add(i)
                self.kept_failed.pop(i, None)
            if progress is not None:
                progress(sum(len(self.records[i][1]) for i in batch))
        self._write_manifest()

    def _record(self, i: int, outputs: dict) -> dict[str, Any]:
        """Record i's esm-extract dict from `EmbedJob._forward`'s outputs, every tensor a clone
        with its own storage (a view would save its whole batch)."""
        result: dict[str, Any] = {"label": self.records[i][0]}
        for pool in POOL_ORDER:
            if pool not in self.include:
                continue
            if pool == "contacts":
                result["contacts"] = outputs["contacts"].clone()
            else:
                result[RECORD_KEYS[pool]] = {
                    layer: outputs[pool][layer].clone() for layer in self.layers
                }
        return result

    def _write(self, i: int, record: dict[str, Any]) -> None:
        import torch

        buffer = io.BytesIO()
        torch.save(record, buffer)
        path = self.paths[i]
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, buffer.getvalue())
