"""An ESMFold job: every record of a FASTA file folded into PDB (and PAE) files plus a summary,
resumably. `esmkernels fold` parses and validates its options, loads the model and runs a
`FoldJob`; the file formats are described there (`esmkernels fold --help`).

Plan (a pure function of the input and the settings, decided before any work): the records are
dealt into parts (`esmkernels.jobs.files.split_parts`), and a part's valid records into padded
batches within the token budget (`esmkernels.core.batching.token_batches`, positions counting
the multimer linkers). A rerun after a kill plans the same batches and folds only those with a
record the summary does not list yet, so every PDB and PAE file is byte-identical to an
uninterrupted run's.

Folding a batch is `EsmForProteinFolding.infer_records`: a batch that fails is folded record by
record, and a record that runs out of memory alone is retried at smaller chunk sizes by `infer`
itself; what still fails is recorded in the summary with its reason, and the job goes on.

Example:
    >>> job = FoldJob(out, records, settings, max_tokens=1024)  # doctest: +SKIP
    >>> job.run(model, chunk_size="auto", num_recycles=None, pae=True)  # doctest: +SKIP
    >>> job.failed  # [(id, reason), ...]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from esmkernels.core.batching import token_batches
from esmkernels.jobs.files import (
    atomic_write,
    check_settings,
    input_sha256,
    safe_name,
    split_parts,
)
from esmkernels.reference.esmfold.inference import DEFAULT_LINKER
from esmkernels.reference.esmfold.residue_constants import restypes

COLUMNS = (
    "id",
    "length",
    "no_atoms",
    "mean_plddt",
    "ptm",
    "seconds",
    "chunk_size",
    "status",
    "reason",
    "file",
)
SETTINGS_FILE = "fold-job.json"
STANDARD = frozenset(restypes)  # the residues ESMFold gives atoms; others are folded as X
PROBE = "GSAGS"  # the made-up sequence of `preflight`

__all__ = [
    "COLUMNS",
    "FoldJob",
    "format_summary",
    "merge_summaries",
    "no_atoms",
    "pae_json",
    "read_summary",
    "residues",
    "tokens",
]


def residues(seq: str) -> int:
    return len(seq.replace(":", ""))


def no_atoms(seq: str) -> str:
    """The residues a PDB of `seq` holds no atoms for: letters other than the 20 standard ones
    (X, B, Z, U, O are folded as unknown, X), as `<letter><position>` joined by ',', positions
    1-based over the record's residues (chains in order, ':' not counted); "" when none.

    Example:
        >>> no_atoms("MKXA:UG")
        'X3,U5'
    """
    letters = seq.replace(":", "")
    return ",".join(f"{a}{n}" for n, a in enumerate(letters, 1) if a not in STANDARD)


def tokens(seq: str) -> int:
    """Positions the model folds: residues plus a linker between chains."""
    return residues(seq) + len(DEFAULT_LINKER) * seq.count(":")


class FoldJob:
    """Part K of N of a fold job writing into `out` (checked by the caller, created by `run`).

    Constructing it plans the part and reads what `out` holds: the settings are checked against
    `fold-job.json` and the part's summary is read. Nothing is written before `run`, so that
    `preflight` can stop a job that cannot work before it touches `out`. `run` then writes the
    settings, removes temporary files a killed run of this part left, lists records that failed
    validation as failed, and folds.

    Args:
        out: the output directory.
        records: (id, sequence, reason) of every record in input order; `reason` is None for a
            valid record, else why it is invalid (recorded as failed, never folded).
        settings: what determines the numbers (model, chunk size, dtype, ...); the parts count
            and the input checksum are added. A rerun with other settings is refused.
        part, parts: this job's share K (0-based) of N.
        max_tokens: the padded-token budget of a batch.
        retry_failed: fold again the records the summary lists as failed at work (not those
            invalid for their input); each is folded in its planned batch, and that batch's
            other records (folded apart from it after the failure) are written again with it.
            Batches without a failure are never folded again. False: failed records stay.

    Raises:
        ValueError: settings differing from the stored job's, or a summary this version does
            not write.
    """

    def __init__(
        self,
        out: Path,
        records: Sequence[tuple[str, str, str | None]],
        settings: dict[str, Any],
        *,
        part: int = 0,
        parts: int = 1,
        max_tokens: int,
        retry_failed: bool = True,
    ):
        self.out = Path(out)
        self.records = list(records)
        self.settings = {
            **settings,
            "max_tokens_per_batch": max_tokens,
            "parts": parts,
            "input_sha256": input_sha256([(rid, seq) for rid, seq, _ in self.records]),
        }
        self._check_settings()
        taken: set[str] = set()
        self.names = [safe_name(rid, taken) for rid, _, _ in self.records]
        self.share = split_parts([tokens(seq) for _, seq, _ in self.records], parts)[part]
        self.summary_path = self.out / (
            "summary.tsv" if parts == 1 else f"summary-{part}of{parts}.tsv"
        )
        mine = {self.records[i][0] for i in self.share}
        self.rows = {r["id"]: r for r in read_summary(self.summary_path) if r["id"] in mine}
        valid = [i for i in self.share if self.records[i][2] is None]
        self.batches = [
            [valid[k] for k in batch]
            for batch in token_batches([tokens(self.records[i][1]) for i in valid], max_tokens)
        ]
        failed = {rid for rid, row in self.rows.items() if row["status"] != "done"}
        self.retried = {i for i in valid if retry_failed and self.records[i][0] in failed}
        # Per batch, the records this run writes: all of a batch holding a retried record,
        # else those the summary does not list (a killed run).
        self.todo = {}
        for b, batch in enumerate(self.batches):
            if any(i in self.retried for i in batch):
                self.todo[b] = list(batch)
            elif missing := [i for i in batch if self.records[i][0] not in self.rows]:
                self.todo[b] = missing

    @property
    def retrying(self) -> int:
        """Failed records this run folds again."""
        return len(self.retried)

    @property
    def total(self) -> int:
        """Residues of the part's valid records (the progress bar's total)."""
        return sum(residues(self.records[i][1]) for b in self.batches for i in b)

    @property
    def initial(self) -> int:
        """Residues of the valid records this run does not write (done before it)."""
        return self.total - sum(residues(self.records[i][1]) for t in self.todo.values() for i in t)

    @property
    def failed(self) -> list[tuple[str, str]]:
        """(id, reason) of the part's failed records."""
        return [(r["id"], r["reason"]) for r in self.rows.values() if r["status"] != "done"]

    @property
    def unmodelled(self) -> list[tuple[str, str]]:
        """(id, residues without atoms) of the records this run writes that have such residues,
        in input order (the summary's `no_atoms` column keeps them for every record)."""
        writes = sorted(i for t in self.todo.values() for i in t)
        return [
            (self.records[i][0], gaps) for i in writes if (gaps := no_atoms(self.records[i][1]))
        ]

    def preflight(self, model, *, chunk_size: int | str | None, num_recycles: int | None):
        """Fold a short made-up sequence with the job's options, writing nothing: what fails
        here (a backend that cannot run on this device, a head size the kernels do not take)
        would fail every record, so the caller stops before any work."""
        import torch

        model.set_chunk_size(chunk_size)
        with torch.inference_mode():
            model.infer(PROBE, num_recycles=0 if num_recycles is None else min(num_recycles, 1))

    def run(
        self,
        model,
        *,
        chunk_size: int | str | None,
        num_recycles: int | None,
        pae: bool,
        progress: Callable[[int], object] | None = None,
    ) -> None:
        """Fold every batch with a record to write (see `todo`); write its files and the
        summary after each batch; `progress(residues)` after each."""
        import torch

        self._prepare()
        model.set_chunk_size(chunk_size)
        for b, batch in enumerate(self.batches):
            todo = self.todo.get(b)
            if not todo:
                continue
            with torch.inference_mode():
                folded = model.infer_records(
                    [self.records[i][1] for i in batch],
                    num_recycles=num_recycles,
                    outputs="lean",  # structures, pLDDT, pTM and PAE only: no [L, L, C] tensors
                )
            for i, record in zip(batch, folded):
                if i in todo:  # a record finished in an earlier run keeps its files untouched
                    self._write(model, i, record, pae)
            self._save_summary()
            if progress is not None:
                progress(sum(residues(self.records[i][1]) for i in todo))

    def _prepare(self) -> None:
        """The writes of a start: settings, stale temporaries gone, invalid records listed."""
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / SETTINGS_FILE
        if not path.exists():
            text = json.dumps(self._stored_settings(), sort_keys=True, indent=1) + "\n"
            atomic_write(path, text.encode())
        self._remove_stale_temporaries()
        for i in self.share:  # invalid records fail before any work
            rid, seq, reason = self.records[i]
            if reason is not None and rid not in self.rows:
                self.rows[rid] = _row(rid, seq, status="failed", reason=reason)
        self._save_summary()

    def _write(self, model, i: int, record, pae: bool) -> None:
        rid, seq, _ = self.records[i]
        name = self.names[i]
        if record.error is not None:
            reason = f"{type(record.error).__name__}: {record.error}"
            self.rows[rid] = _row(rid, seq, file=f"{name}.pdb", status="failed", reason=reason)
            for stale in (f"{name}.pdb", f"{name}.pae.json"):  # a companion's earlier files
                (self.out / stale).unlink(missing_ok=True)
            return
        out = record.output  # batch 1, cut to the record's positions (linkers included)
        atomic_write(self.out / f"{name}.pdb", model.output_to_pdb(out)[0].encode())
        if pae:
            keep = out.atom37_atom_exists[0].sum(-1) > 0  # [L]: residues, not linkers
            matrix = out.predicted_aligned_error[0][keep][:, keep].float().cpu()
            top = out.max_predicted_aligned_error  # the top bin: [] or [B]
            top = float(top if top.dim() == 0 else top[0])
            atomic_write(self.out / f"{name}.pae.json", pae_json(matrix, top).encode())
        self.rows[rid] = _row(
            rid,
            seq,
            file=f"{name}.pdb",
            mean_plddt=f"{float(out.mean_plddt[0]) * 100:.2f}",
            ptm=f"{float(out.ptm[0]):.4f}",
            seconds=f"{record.seconds:.3f}",
            chunk_size="none" if record.chunk_size is None else record.chunk_size,
            status="done",
        )

    def _stored_settings(self) -> dict:
        return json.loads(json.dumps(self.settings))  # as stored: plain JSON values

    def _check_settings(self) -> None:
        path = self.out / SETTINGS_FILE
        if path.exists():
            check_settings(json.loads(path.read_text()), self._stored_settings(), path)

    def _remove_stale_temporaries(self) -> None:
        # Only this part's: other parts' may be being written now.
        mine = {self.names[i] for i in self.share}
        for path in self.out.iterdir():
            found = re.match(r"^\.(.+)\.(pdb|pae\.json|tsv)\.[^.]+\.tmp$", path.name)
            if found and (
                found.group(1) in mine or f"{found.group(1)}.tsv" == self.summary_path.name
            ):
                path.unlink(missing_ok=True)

    def _save_summary(self) -> None:
        ids = [self.records[i][0] for i in self.share]
        text = format_summary([self.rows[rid] for rid in ids if rid in self.rows])
        atomic_write(self.summary_path, text.encode())


def _row(rid: str, seq: str, **fields) -> dict:
    row = {c: "" for c in COLUMNS}
    row.update(id=rid, length=str(residues(seq)), no_atoms=no_atoms(seq))
    row.update({k: str(v) for k, v in fields.items()})
    return row


def format_summary(rows: list[dict]) -> str:
    lines = ["\t".join(COLUMNS)]
    for r in rows:
        lines.append("\t".join(str(r[c]).replace("\t", " ").replace("\n", " ") for c in COLUMNS))
    return "\n".join(lines) + "\n"


def read_summary(path: Path) -> list[dict]:
    """Rows of a summary file ([] when absent); ValueError when this version did not write it."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    if not lines or lines[0].split("\t") != list(COLUMNS):
        raise ValueError(f"{path} is not a summary this version writes (header {lines[:1]})")
    return [dict(zip(COLUMNS, line.split("\t"))) for line in lines[1:] if line]


def merge_summaries(out: Path, parts: int) -> None:
    """One summary.tsv of every part's rows (in part order), e.g. by rank 0 under torchrun."""
    rows = []
    for k in range(parts):
        rows += read_summary(Path(out) / f"summary-{k}of{parts}.tsv")
    atomic_write(Path(out) / "summary.tsv", format_summary(rows).encode())


def pae_json(pae, max_pae: float) -> str:
    """PAE [L, L] (Angstrom) as the AlphaFold DB's `predicted_aligned_error` JSON (2 decimals)."""
    data = [
        {
            "predicted_aligned_error": [[round(float(v), 2) for v in row] for row in pae.tolist()],
            "max_predicted_aligned_error": round(max_pae, 2),
        }
    ]
    return json.dumps(data, separators=(",", ":")) + "\n"
