"""`esmkernels score`: zero-shot variant effect scores from masked language models (ESM-1v).

The wild type comes from `--sequence` or a one-record `--fasta`; the mutations from
`--mutations` or a deep-mutational-scan table (`--dms-input` CSV or TSV, column
`--mutation-col`). A mutation is `<wt><position><mut>` (`A42G`), a multi-mutant joins them with
':' (`A42G:S50T`); positions are numbered from `--offset-idx` (default 1; ESM-1v's predict.py
defaults to 0). Every row is parsed and checked against the wild type and the models'
vocabularies before any model is loaded: a bad row (`M1J`, `K2*`, a wrong wild-type letter) is
an error naming it, or with `--skip-invalid` its reason goes into the `reason` column, its
scores stay empty, the other rows are scored, and the exit code is 1.

Strategies (`esmkernels.core.variants`): masked-marginals (default), wt-marginals, pseudo-ppl.
Several `--model`s give one score column each plus their mean (the ESM-1v ensemble: pass the
five esm1v_t33_650M_UR90S_1..5 checkpoints). A sequence longer than an absolute-position model
takes (ESM-1b / ESM-1v: 1,022 residues) is scored in windows of that length centred on each
site.

Output: the input table with the score columns added (or `mutant` plus scores), and with
`--skip-invalid` a `reason` column, as CSV to `--out` or stdout. A progress bar (sequences run
through the model) appears when scoring takes more than two seconds. The checks and the
scoring are `esmkernels.jobs.score`'s.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from functools import partial
from pathlib import Path

from esmkernels.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    add_model_option,
    add_run_options,
    check_output_dir,
    command_parser,
    load_model,
    log,
    model_identity,
    pick_device,
    preflight,
    read_input,
    report_failures,
    tokenizer_for,
)
from esmkernels.jobs.threads import add_option as add_threads_option

EXAMPLE = """
esmkernels score --model facebook/esm1v_t33_650M_UR90S_1 --model facebook/esm1v_t33_650M_UR90S_2 \\
    --sequence MKTAYIAKQRQISFVKSHFSRQ --mutations K2A,T3G:A4C --out scores.csv
esmkernels score --model facebook/esm1v_t33_650M_UR90S_1 --fasta wt.fasta \\
    --dms-input dms.csv --mutation-col mutant --offset-idx 1 --scoring-strategy wt-marginals
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = command_parser(
        subparsers,
        "score",
        "variant effect scores of mutations with masked language models (ESM-1v)",
        EXAMPLE,
        __doc__.split("\n\n", 1)[1],
    )
    add_model_option(p, "masked language model (repeat for an ensemble)", multiple=True)
    wt = p.add_mutually_exclusive_group(required=True)
    wt.add_argument("--sequence", help="the wild-type sequence")
    wt.add_argument("--fasta", help="a FASTA file with one record: the wild type")
    muts = p.add_mutually_exclusive_group(required=True)
    muts.add_argument("--mutations", help="comma-separated mutations, e.g. A42G,K45R:S50T")
    muts.add_argument("--dms-input", metavar="TABLE", help="CSV or TSV with a mutation column")
    p.add_argument(
        "--mutation-col", default="mutant", help="column of --dms-input (default mutant)"
    )
    p.add_argument(
        "--offset-idx",
        type=int,
        default=1,
        help="number of the first residue in the mutations (default 1)",
    )
    p.add_argument(
        "--scoring-strategy",
        default="masked-marginals",
        choices=("masked-marginals", "wt-marginals", "pseudo-ppl"),
    )
    p.add_argument("--batch-size", type=int, default=32, help="masked copies per forward pass")
    p.add_argument("--out", "-o", default=None, help="output CSV (default: stdout)")
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="give a row that cannot be scored (bad format, position, wild-type or mutant "
        "letter) empty scores and its reason in a `reason` column, and go on (default: stop "
        "before any model loads, naming the row)",
    )
    add_run_options(p)
    p.add_argument(
        "--quantize",
        default=None,
        choices=("int8",),
        help="int8 linear layers for CPU inference (float32 model on the CPU only; default: off)",
    )
    add_threads_option(p)
    return p


def read_table(path: str, column: str) -> tuple[list[str], list[dict]]:
    """Rows of a CSV / TSV (delimiter from the extension, else sniffed) and its columns."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--dms-input {path}: cannot read it ({err})") from None
    name = path.lower().removesuffix(".gz")
    if name.endswith((".tsv", ".tab")):
        delimiter = "\t"
    elif name.endswith(".csv"):
        delimiter = ","
    else:
        try:
            delimiter = csv.Sniffer().sniff(text.splitlines()[0] if text else "", ",\t;").delimiter
        except csv.Error:
            delimiter = ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    columns = list(reader.fieldnames or [])
    if column not in columns:
        raise UsageError(
            f"--dms-input {path}: no column {column!r} (columns: {columns}); pass --mutation-col"
        )
    return columns, list(reader)


def model_columns(models: list[str], taken: list[str]) -> list[str]:
    """One score column per model: its directory / file / Hub name, unique, not an input column."""
    names = [Path(m.rstrip("/")).name or m for m in models]
    if len(set(names)) < len(names):
        names = list(models)
    return [n if n not in taken else f"{n}_score" for n in names]


def run(args: argparse.Namespace) -> int:
    from esmkernels.core.memory import is_oom
    from esmkernels.jobs.embed import model_limit
    from esmkernels.jobs.fasta import check_sequence
    from esmkernels.jobs.progress import count_bar
    from esmkernels.jobs.score import (
        check_mutations,
        forward_count,
        residue_alphabet,
        score_mutants,
    )
    from esmkernels.jobs.score import preflight as score_preflight
    from esmkernels.jobs.threads import set_threads
    from esmkernels.models.esm import EsmForMaskedLM

    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: must be >= 1")
    set_threads(args.threads)
    if args.fasta:
        records, _ = read_input(args.fasta, multimer=False, skip_invalid=False)
        if len(records) != 1:
            raise UsageError(
                f"--fasta {args.fasta}: holds {len(records)} records; give the wild type only"
            )
        wild_type = records[0].sequence
    else:
        wild_type = args.sequence
        if wild_type != wild_type.upper():
            log("--sequence has lowercase letters; read as uppercase")
            wild_type = wild_type.upper()
        why = check_sequence(wild_type)
        if why is not None:
            raise UsageError(f"--sequence: {why}")

    if args.dms_input:
        columns, rows = read_table(args.dms_input, args.mutation_col)
        source, first_row = args.dms_input, 2  # line 1 is the header
    else:
        columns = ["mutant"]
        rows = [{"mutant": m.strip()} for m in args.mutations.split(",") if m.strip()]
        source, first_row = "--mutations", 1
        if not rows:
            raise UsageError("--mutations is empty")
    # Every model resolved, and every row checked against its vocabulary, before any loads.
    identities = [model_identity(spec) for spec in args.model]
    tokenizers = [tokenizer_for(str(ident.path)) for ident in identities]
    alphabet = set.intersection(*(residue_alphabet(t) for t in tokenizers))
    outside = sorted(set(wild_type) - alphabet)
    if outside:
        raise UsageError(f"the wild type has residue letter(s) {outside} no model's vocabulary has")
    column = args.mutation_col if args.dms_input else "mutant"
    mutants = [(row.get(column) or "").strip() for row in rows]
    reasons = check_mutations(wild_type, mutants, args.offset_idx, alphabet)
    wheres = [
        f"{source} row {n + first_row}" if args.dms_input else f"{source} item {n + 1}"
        for n in range(len(rows))
    ]
    bad = [(where, why) for where, why in zip(wheres, reasons) if why is not None]
    if bad and not args.skip_invalid:
        where, why = bad[0]
        more = (
            f" ({len(bad) - 1} more bad row(s); --skip-invalid scores the rest)"
            if len(bad) > 1
            else ""
        )
        raise UsageError(f"{where}: {why}{more}")
    valid = [m for m, why in zip(mutants, reasons) if why is None]
    if args.out:
        check_output_dir(str(Path(args.out).resolve().parent))

    device = pick_device(args.device)
    score_cols = model_columns(args.model, columns)
    scores: list[list[float]] = []
    for spec, ident, tokenizer in zip(args.model, identities, tokenizers):
        model = load_model(
            EsmForMaskedLM,
            spec,
            "lm",
            "score",
            identity=ident,
            dtype=args.dtype,
            device=device,
            backend=args.backend,
            quantize=args.quantize,
        )
        preflight(partial(score_preflight, model, tokenizer, device), spec, device, args.backend)
        log(f"scoring {len(valid)} mutation(s) with {spec} ({args.scoring_strategy})")
        limit = model_limit(model.config)
        window = limit if limit is not None and len(wild_type) > limit else None
        total = forward_count(wild_type, valid, args.scoring_strategy, args.offset_idx, window)
        try:
            with count_bar(total, "score", "seq", enabled=not args.quiet) as bar:
                values = score_mutants(
                    model,
                    tokenizer,
                    wild_type,
                    valid,
                    args.scoring_strategy,
                    batch_size=args.batch_size,
                    window=window,
                    offset=args.offset_idx,
                    progress=bar.update,
                )
        except (RuntimeError, MemoryError) as err:
            if not is_oom(err):
                raise
            log(
                f"esmkernels score: out of memory scoring with {spec} on {device} "
                f"(--batch-size {args.batch_size}); lower --batch-size. Nothing was written."
            )
            return EXIT_FAILED
        scores.append(values)
        del model

    out_cols = columns + score_cols + (["mean"] if len(score_cols) > 1 else [])
    if args.skip_invalid:
        out_cols.append("reason" if "reason" not in columns else "score_reason")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=out_cols, lineterminator="\n")
    writer.writeheader()
    k = 0
    for row, why in zip(rows, reasons):
        out = {c: row.get(c, "") for c in columns}
        if args.skip_invalid:
            out[out_cols[-1]] = why or ""
        if why is None:
            values = [scores[m][k] for m in range(len(score_cols))]
            k += 1
            out.update({c: f"{v:.6f}" for c, v in zip(score_cols, values)})
            if len(values) > 1:
                out["mean"] = f"{sum(values) / len(values):.6f}"
        writer.writerow(out)
    if args.out:
        from esmkernels.jobs.files import atomic_write

        atomic_write(args.out, buffer.getvalue().encode())
        log(f"wrote {len(rows)} row(s) to {args.out}")
    else:
        sys.stdout.write(buffer.getvalue())
    return report_failures(bad, args.out or "the reason column", "row") if bad else EXIT_OK


__all__ = ["add_parser", "model_columns", "read_table", "run"]
