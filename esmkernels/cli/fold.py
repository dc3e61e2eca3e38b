"""`esmkernels fold FASTA --model M --out DIR`: ESMFold structures, resumable.

Outputs in DIR, per record (file names are the record id when it is a plain name, else a
cleaned id plus a short hash; `summary.tsv` maps ids to files):
  NAME.pdb           atoms of the final structure, pLDDT (0-100) in the B-factor column, chains
                     A, B, ... for multimers written `A:B` in the FASTA;
  NAME.pae.json      with --pae: predicted aligned error in the AlphaFold DB layout,
                     `[{"predicted_aligned_error": [[...]], "max_predicted_aligned_error": x}]`;
  summary.tsv        id, length, no_atoms, mean_plddt (0-100), ptm, seconds, chunk_size, status,
                     reason, file; one row per record in input order (`summary-KofN.tsv` per
                     share of a split job; under torchrun rank 0 also writes the merged
                     `summary.tsv`). no_atoms lists the residues the PDB has no atoms for
                     (X, B, Z, U, O: folded as unknown) as letter and position (`X3,U5`).

Resuming: records listed in the summary are skipped; a rerun after a kill computes only the rest,
in the same batches, so every PDB and PAE file is byte-identical to an uninterrupted run's
(`seconds` in the summary is a measured time and differs). A rerun retries failed records in
their planned batch (whose other records are written again with them), unless
--no-retry-failed. What would fail every record (the backend cannot run here, a head size the
kernels do not take) is found on a made-up sequence first: exit 2, nothing written.

fair-esm's esm-fold spellings work: -i/--fasta, -o/--pdb, --num-recycles,
--max-tokens-per-batch, --chunk-size, --cpu-only.

Failure isolation: a batch that fails is folded record by record; a record that runs out of
memory alone is retried by the model's `infer` at half the trunk chunk size it ran with (the
memory model's pick under `--chunk-size auto`), down to 4, then recorded as failed with its
reason; invalid records with --skip-invalid are recorded as failed. Exit code 1 when any failed.
The job itself is `esmkernels.jobs.fold.FoldJob`.
"""

from __future__ import annotations

import argparse

from esmkernels.cli._common import (
    EXIT_OK,
    Part,
    UsageError,
    add_input_options,
    add_model_option,
    add_resume_options,
    add_run_options,
    add_scale_options,
    check_output_dir,
    command_parser,
    cpu_only,
    load_model,
    log,
    model_identity,
    pick_device,
    preflight,
    read_input,
    report_failures,
)

EXAMPLE = """
esmkernels fold proteins.fasta --model facebook/esmfold_v1 --out structures/ --pae \\
    --num-recycles 4 --chunk-size auto
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = command_parser(
        subparsers,
        "fold",
        "ESMFold structures of every record of a FASTA file (PDB + summary.tsv, resumable)",
        EXAMPLE,
        __doc__.split("\n\n", 1)[1],
    )
    p.add_argument(
        "fasta", nargs="?", help="input FASTA (plain or .gz); multimers as CHAINA:CHAINB"
    )
    p.add_argument(
        "-i", "--fasta", dest="input", metavar="FASTA", help="the input FASTA (esm-fold's spelling)"
    )
    add_model_option(p, "ESMFold model")
    p.add_argument("--out", "-o", "--pdb", help="output directory (required unless --plan)")
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
    p.add_argument(
        "--plan",
        action="store_true",
        help="print per record L, chunk, predicted peak (with and without weights), whether it "
        "fits and FLOPs, from the FASTA and config.json only; exit 1 if some would not fit",
    )
    p.add_argument(
        "--offload",
        choices=("auto", "on", "off"),
        default="auto",
        help="keep the triangle multiplication's pair-sized contraction in host memory: 'auto' "
        "(default) only on a GPU where a fold fits no other way; same results, slower",
    )
    p.add_argument("--json", action="store_true", help="with --plan: one JSON object per record")
    p.add_argument(
        "--memory", metavar="SIZE", help="with --plan: plan for a device of SIZE (e.g. 80GiB)"
    )
    add_input_options(p)
    add_resume_options(p)
    add_scale_options(p)
    add_run_options(p)
    p.add_argument("--cpu-only", action="store_true", help="run on the CPU (as --device cpu)")
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


def run(args: argparse.Namespace) -> int:
    from esmkernels.jobs.fold import FoldJob, merge_summaries
    from esmkernels.jobs.progress import residue_bar
    from esmkernels.models.esmfold import EsmForProteinFolding

    if (args.fasta is None) == (args.input is None):
        raise UsageError(
            "give the input FASTA once: as the first argument or as -i/--fasta"
            if args.fasta is None
            else f"two inputs: {args.fasta} and -i {args.input}; give one"
        )
    fasta = args.fasta or args.input
    chunk = parse_chunk(args.chunk_size)
    offload = {"auto": "auto", "on": True, "off": False}[args.offload]
    if args.plan:  # esmkernels.jobs.plan: reads the FASTA and config.json, never the weights
        from esmkernels.jobs.plan import run_plan

        try:
            return run_plan(
                fasta,
                args.model,
                as_json=args.json,
                memory=args.memory,
                dtype=args.dtype,
                backend=args.backend,
                device=cpu_only(args.device, args.cpu_only, "--cpu-only"),
                chunk_size=chunk,
                num_recycles=args.num_recycles,
                offload=offload,
            )
        except ValueError as err:
            raise UsageError(str(err)) from None
    if args.out is None:
        raise UsageError("--out is required (except with --plan)")
    if args.num_recycles is not None and args.num_recycles < 0:
        raise UsageError(f"--num-recycles {args.num_recycles}: must be >= 0")
    if args.max_tokens_per_batch < 1:
        raise UsageError(f"--max-tokens-per-batch {args.max_tokens_per_batch}: must be >= 1")
    device_name = cpu_only(args.device, args.cpu_only, "--cpu-only")
    records, rejected = read_input(fasta, multimer=True, skip_invalid=args.skip_invalid)
    part = Part(args.shard)
    out = check_output_dir(args.out)
    device = pick_device(device_name, part)
    identity = model_identity(args.model)
    model = load_model(
        EsmForProteinFolding,
        args.model,
        "fold",
        "fold",
        identity=identity,
        dtype=args.dtype,
        device=device,
        backend=args.backend,
    )
    if hasattr(model, "set_offload"):
        model.set_offload(offload)
    items = {r.order: (r.id, r.sequence, None) for r in records}
    items.update({r.order: (r.id, r.sequence, r.reason) for r in rejected})
    settings = {
        "model": identity.settings(),
        "num_recycles": args.num_recycles,
        "chunk_size": chunk,
        "dtype": args.dtype,
        "backend": args.backend or "auto",
        "pae": bool(args.pae),
    }
    try:
        job = FoldJob(
            out,
            [items[o] for o in sorted(items)],
            settings,
            part=part.index,
            parts=part.count,
            max_tokens=args.max_tokens_per_batch,
            retry_failed=args.retry_failed,
        )
    except ValueError as err:
        raise UsageError(str(err)) from None
    preflight(
        lambda: job.preflight(model, chunk_size=chunk, num_recycles=args.num_recycles),
        args.model,
        device,
        args.backend,
    )

    part.start(device)
    if job.retrying:
        log(f"retrying {job.retrying} failed record(s) (--no-retry-failed keeps them failed)")
    if job.unmodelled:
        (rid, gaps), more = job.unmodelled[0], len(job.unmodelled) - 1
        log(
            f"warning: {rid}: residues {gaps} are not standard amino acids: ESMFold folds them "
            "as unknown (X) and the PDB has no atoms for them"
            + (f"; {more} more record(s) have such residues" if more else "")
            + " (summary.tsv column no_atoms)"
        )
    label = "fold" + (f" {part.tag}" if part.tag else "")
    with residue_bar(job.total, label, initial=job.initial, enabled=not args.quiet) as bar:
        job.run(
            model,
            chunk_size=chunk,
            num_recycles=args.num_recycles,
            pae=args.pae,
            progress=bar.update,
        )
    done = len(job.rows) - len(job.failed)
    log(f"folded {done} record(s) into {out} ({job.summary_path.name}, on {device})")
    part.finish()
    if part.distributed and part.index == 0:
        merge_summaries(out, part.count)
    return report_failures(job.failed, str(job.summary_path)) if job.failed else EXIT_OK


__all__ = ["add_parser", "parse_chunk", "run"]
