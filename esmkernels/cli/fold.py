"""`esmkernels fold FASTA --model M --out DIR`: ESMFold structures, resumable.

Outputs in DIR, per record (file names are the record id when it is a plain name, else a
cleaned id plus a short hash; `summary.tsv` maps ids to files):
  NAME.pdb           atoms of the final structure, pLDDT (0-100) in the B-factor column, chains
                     A, B, ... for multimers written `A:B` in the FASTA;
  NAME.pae.json      with --pae: predicted aligned error in the AlphaFold DB layout,
                     `[{"predicted_aligned_error": [[...]], "max_predicted_aligned_error": x}]`;
  summary.tsv        id, length, mean_plddt (0-100), ptm, seconds, chunk_size, status, reason,
                     file; one row per record in input order (`summary-KofN.tsv` per share of a
                     split job; under torchrun rank 0 also writes the merged `summary.tsv`).

Resuming: records listed in the summary are skipped; a rerun after a kill computes only the rest,
in the same batches, so every PDB and PAE file is byte-identical to an uninterrupted run's
(`seconds` in the summary is a measured time and differs).

Failure isolation: a batch that runs out of memory is split; a record that runs out alone is
retried with a smaller trunk chunk size (halving the one that failed, the memory model's pick
under `--chunk-size auto`, down to 4), then recorded as failed with its reason; invalid records with --skip-invalid are recorded as failed. Exit code 1 when any failed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import time

from esmkernels.cli._common import (
    EXIT_OK,
    Part,
    UsageError,
    add_input_options,
    add_model_option,
    add_run_options,
    add_scale_options,
    command_parser,
    load_model,
    log,
    output_dir,
    pick_device,
    read_input,
    report_failures,
    safe_name,
)
from esmkernels.core.batching import token_batches
from esmkernels.core.memory import free_memory, is_oom

EXAMPLE = """
esmkernels fold proteins.fasta --model facebook/esmfold_v1 --out structures/ --pae \\
    --num-recycles 4 --chunk-size auto
"""

COLUMNS = ("id", "length", "mean_plddt", "ptm", "seconds", "chunk_size", "status", "reason", "file")
LINKER = 25  # residues of the poly-G linker ESMFold puts between chains
MIN_CHUNK = 4


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = command_parser(
        subparsers,
        "fold",
        "ESMFold structures of every record of a FASTA file (PDB + summary.tsv, resumable)",
        EXAMPLE,
        __doc__.split("\n\n", 1)[1],
    )
    p.add_argument("fasta", help="input FASTA (plain or .gz); multimers as CHAINA:CHAINB")
    add_model_option(p, "ESMFold model")
    p.add_argument("--out", "-o", required=True, help="output directory")
    p.add_argument(
        "--num-recycles",
        type=int,
        default=None,
        metavar="N",
        help="recycling iterations (default: the model's, 4 for ESMFold v1)",
    )
    p.add_argument(
        "--chunk-size",
        default="auto",
        metavar="auto|N",
        help="trunk chunk size: lower uses less memory, same result; 'auto' picks it from the "
        "memory model when the model has one, else unchunked (default: auto)",
    )
    p.add_argument(
        "--max-tokens-per-batch",
        type=int,
        default=1024,
        metavar="T",
        help="fold short records together up to T padded residues per batch (default 1024)",
    )
    p.add_argument("--pae", action="store_true", help="also write NAME.pae.json per record")
    add_input_options(p)
    add_scale_options(p)
    add_run_options(p)
    return p


def parse_chunk(text: str) -> str | int:
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--chunk-size {text!r}: expected 'auto' or a positive integer") from None
    if value < 1:
        raise UsageError(f"--chunk-size {value}: must be >= 1")
    return value


def residues(seq: str) -> int:
    return len(seq.replace(":", ""))


def tokens(seq: str) -> int:
    """Positions the model folds: residues plus a linker between chains."""
    return residues(seq) + LINKER * seq.count(":")


# ---------------------------------------------------------------------------------------------
# Chunk-size adapters (the memory model of the fast ESMFold, when present)
# ---------------------------------------------------------------------------------------------


def set_chunk(model, chunk: str | int | None, length: int) -> None:
    """Apply a chunk size; "auto" goes to the model when it takes it, else to
    `esmkernels.models.fold_memory.auto_chunk_size`, else means unchunked."""
    if chunk != "auto":
        model.set_chunk_size(chunk)
        return
    try:
        model.set_chunk_size("auto")
        return
    except (TypeError, ValueError):
        pass
    try:
        memory = importlib.import_module("esmkernels.models.fold_memory")
    except ModuleNotFoundError:
        model.set_chunk_size(None)
        return
    model.set_chunk_size(memory.auto_chunk_size(model.config, length))


def used_chunk(model, fallback):
    used = getattr(model, "last_chunk_size", None)
    if used is None:
        used = getattr(getattr(model, "trunk", None), "chunk_size", fallback)
    return "none" if used is None else used


# ---------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from esmkernels.jobs.files import atomic_write, input_sha256, split_parts
    from esmkernels.jobs.progress import residue_bar
    from esmkernels.models.esmfold import EsmForProteinFolding

    chunk = parse_chunk(args.chunk_size)
    if args.num_recycles is not None and args.num_recycles < 0:
        raise UsageError(f"--num-recycles {args.num_recycles}: must be >= 0")
    if args.max_tokens_per_batch < 1:
        raise UsageError(f"--max-tokens-per-batch {args.max_tokens_per_batch}: must be >= 1")
    records, rejected = read_input(args.fasta, multimer=True, skip_invalid=args.skip_invalid)
    part = Part(args.shard)
    out = output_dir(args.out)
    device = pick_device(args.device, part)
    model = load_model(
        EsmForProteinFolding,
        args.model,
        "fold",
        "fold",
        dtype=args.dtype,
        device=device,
        backend=args.backend,
    )

    items = {r.order: (r.id, r.sequence, None) for r in records}
    items.update({r.order: (r.id, r.sequence, r.reason) for r in rejected})
    orders = sorted(items)
    taken: set[str] = set()
    names = {o: safe_name(items[o][0], taken) for o in orders}
    settings = {
        "model": args.model,
        "num_recycles": args.num_recycles,
        "chunk_size": chunk,
        "dtype": args.dtype,
        "backend": args.backend or "auto",
        "max_tokens_per_batch": args.max_tokens_per_batch,
        "pae": bool(args.pae),
        "parts": part.count,
        "input_sha256": input_sha256([items[o][:2] for o in orders]),
    }
    _check_job(out, settings)

    share = [
        orders[i]
        for i in split_parts([tokens(items[o][1]) for o in orders], part.count)[part.index]
    ]
    summary_path = out / (
        "summary.tsv" if part.count == 1 else f"summary-{part.index}of{part.count}.tsv"
    )
    rows = {r["id"]: r for r in read_summary(summary_path)}
    by_id = {items[o][0]: o for o in share}
    rows = {rid: r for rid, r in rows.items() if rid in by_id}

    def save_summary() -> None:
        text = format_summary([rows[items[o][0]] for o in share if items[o][0] in rows])
        atomic_write(summary_path, text.encode())

    # Temporary files a killed run of this share left behind (other shares' are not touched:
    # they may be writing theirs now).
    mine = {names[o] for o in share}
    for path in out.iterdir():
        found = re.match(r"^\.(.+)\.(pdb|pae\.json|tsv)\.[^.]+\.tmp$", path.name)
        if found and (found.group(1) in mine or f"{found.group(1)}.tsv" == summary_path.name):
            path.unlink(missing_ok=True)
    for o in share:  # invalid records (--skip-invalid) fail before any work
        rid, seq, reason = items[o]
        if reason is not None and rid not in rows:
            rows[rid] = _row(rid, seq, status="failed", reason=reason)
    save_summary()

    valid = [o for o in share if items[o][2] is None]
    batches = [
        [valid[i] for i in batch]
        for batch in token_batches([tokens(items[o][1]) for o in valid], args.max_tokens_per_batch)
    ]
    part.start(device)
    total = sum(residues(items[o][1]) for o in share if items[o][2] is None)
    initial = sum(residues(items[o][1]) for b in batches for o in b if items[o][0] in rows)
    label = "fold" + (f" {part.tag}" if part.tag else "")
    folder = _Folder(model, chunk, args.num_recycles, args.pae, device)
    with residue_bar(total, label, initial=initial, enabled=not args.quiet) as bar:
        for batch in batches:
            todo = [o for o in batch if items[o][0] not in rows]
            if not todo:
                continue
            for o, result in folder.fold([(o, items[o][1]) for o in batch]).items():
                if o not in todo:
                    continue  # finished in an earlier run: its files stay untouched
                rid, seq, _ = items[o]
                if result["status"] == "done":
                    atomic_write(out / f"{names[o]}.pdb", result["pdb"].encode())
                    if args.pae:
                        atomic_write(out / f"{names[o]}.pae.json", result["pae"].encode())
                rows[rid] = _row(rid, seq, file=f"{names[o]}.pdb", **result["row"])
            save_summary()
            bar.update(sum(residues(items[o][1]) for o in todo))

    failed = [(r["id"], r["reason"]) for r in rows.values() if r["status"] != "done"]
    log(f"folded {len(rows) - len(failed)} record(s) into {out} ({summary_path.name}, on {device})")
    part.finish()
    if part.distributed and part.index == 0:
        merge_summaries(out, part.count, atomic_write)
    return report_failures(failed, str(summary_path)) if failed else EXIT_OK


def _check_job(out, settings) -> None:
    """The job's settings in fold-job.json; a rerun with other settings is refused."""
    from esmkernels.jobs.files import atomic_write, check_settings

    path = out / "fold-job.json"
    settings = json.loads(json.dumps(settings))  # as stored: plain JSON values
    if path.exists():
        try:
            check_settings(json.loads(path.read_text()), settings, path)
        except ValueError as err:
            raise UsageError(str(err)) from None
        return
    atomic_write(path, (json.dumps(settings, sort_keys=True, indent=1) + "\n").encode())


def _row(rid: str, seq: str, **fields) -> dict:
    row = {c: "" for c in COLUMNS}
    row.update(id=rid, length=str(residues(seq)))
    row.update({k: str(v) for k, v in fields.items()})
    return row


def format_summary(rows: list[dict]) -> str:
    lines = ["\t".join(COLUMNS)]
    for r in rows:
        lines.append("\t".join(str(r[c]).replace("\t", " ").replace("\n", " ") for c in COLUMNS))
    return "\n".join(lines) + "\n"


def read_summary(path) -> list[dict]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    if not lines or lines[0].split("\t") != list(COLUMNS):
        raise UsageError(f"{path} is not a summary this version writes (header {lines[:1]})")
    return [dict(zip(COLUMNS, line.split("\t"))) for line in lines[1:] if line]


def merge_summaries(out, parts: int, atomic_write) -> None:
    """Rank 0 under torchrun: one summary.tsv of every share (rows by id order of the shares)."""
    rows = []
    for k in range(parts):
        rows += read_summary(out / f"summary-{k}of{parts}.tsv")
    atomic_write(out / "summary.tsv", format_summary(rows).encode())


class _Folder:
    def __init__(self, model, chunk, num_recycles, pae: bool, device):
        self.model, self.chunk, self.num_recycles = model, chunk, num_recycles
        self.pae, self.device = pae, device

    def fold(self, batch: list[tuple[int, str]]) -> dict[int, dict]:
        """Fold a batch; on out-of-memory fold its records alone, then at smaller chunks."""
        longest = max(tokens(s) for _, s in batch)
        try:
            return self._infer(batch, self.chunk, longest)
        except (RuntimeError, ValueError) as err:
            free_memory(self.device)
            if len(batch) > 1:
                results = {}
                for item in batch:
                    results.update(self.fold([item]))
                return results
            return self._retry_alone(batch[0], err)

    def _retry_alone(self, item, err) -> dict[int, dict]:
        order, seq = item
        if not is_oom(err):
            return {order: _failure(f"{type(err).__name__}: {err}")}
        # Halve the chunk the failed attempt used: the given one, or the one "auto" picked from
        # the memory model (`last_chunk_size`); 128 when it ran unchunked.
        used = (
            self.chunk
            if isinstance(self.chunk, int)
            else getattr(self.model, "last_chunk_size", None)
        )
        size = used // 2 if isinstance(used, int) else 128
        tried = []
        while size >= MIN_CHUNK:
            tried.append(size)
            try:
                return self._infer([item], size, tokens(seq))
            except (RuntimeError, ValueError) as again:
                free_memory(self.device)
                if not is_oom(again):
                    return {order: _failure(f"{type(again).__name__}: {again}")}
            size //= 2
        return {
            order: _failure(
                f"out of memory ({tokens(seq)} positions) even alone at chunk sizes {tried}"
            )
        }

    def _infer(self, batch, chunk, longest) -> dict[int, dict]:
        import torch

        set_chunk(self.model, chunk, longest)
        if hasattr(self.model, "last_chunk_size"):
            self.model.last_chunk_size = None  # set again by this forward (the fast ESMFold)
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.infer([s for _, s in batch], num_recycles=self.num_recycles)
        pdbs = self.model.output_to_pdb(out)
        seconds = time.perf_counter() - start
        used = used_chunk(self.model, chunk)
        exists = out.atom37_atom_exists.sum(-1) > 0  # [B, L]: real residues (no linker, padding)
        total = sum(residues(s) for _, s in batch)
        results = {}
        for b, (order, seq) in enumerate(batch):
            row = {
                "mean_plddt": f"{float(out.mean_plddt[b]) * 100:.2f}",
                "ptm": f"{float(out.ptm[b]):.4f}",
                "seconds": f"{seconds * residues(seq) / total:.3f}",
                "chunk_size": used,
                "status": "done",
            }
            result = {"status": "done", "pdb": pdbs[b], "row": row}
            if self.pae:
                keep = exists[b]
                pae = out.predicted_aligned_error[b][keep][:, keep].float().cpu()
                max_pae = out.max_predicted_aligned_error  # the top bin: [] or [B]
                max_pae = float(max_pae if max_pae.dim() == 0 else max_pae[b])
                result["pae"] = pae_json(pae, max_pae)
            results[order] = result
        return results


def _failure(reason: str) -> dict:
    return {"status": "failed", "row": {"status": "failed", "reason": reason}}


def pae_json(pae, max_pae: float) -> str:
    """PAE [L, L] (Angstrom) as the AlphaFold DB's `predicted_aligned_error` JSON (2 decimals)."""
    data = [
        {
            "predicted_aligned_error": [[round(float(v), 2) for v in row] for row in pae.tolist()],
            "max_predicted_aligned_error": round(max_pae, 2),
        }
    ]
    return json.dumps(data, separators=(",", ":")) + "\n"


__all__ = ["COLUMNS", "add_parser", "pae_json", "run"]
