"""`esmkernels embed FASTA --model M --out DIR`: embeddings of every record, resumable.

Output: an embedding store (`esmkernels.jobs.embeddings`): sharded safetensors files plus an index;
read it with `esmkernels.open_embeddings(DIR)`. Options follow fair-esm's `esm-extract`
(`--repr-layers`, `--include mean per_tok bos contacts`, `--truncation-seq-length`,
`--max-tokens-per-batch`), and its underscore spellings work too (`--repr_layers`,
`--toks_per_batch`, `--truncation_seq_length`, `--nogpu`).

Long sequences. An absolute-position model (ESM-1b, ESM-1v) takes at most
`max_position_embeddings - 4` residues (1,022); `--truncation-seq-length N` sets a limit for any
model. A record over the limit is handled by `--long-sequences`:
  error     the record fails ("too long"); the rest of the job goes on (default);
  truncate  its first N residues are embedded (`stored_length` in the index says so);
  window    windows of N residues overlapping by half cover it; per-residue outputs are the
            mean over the windows that contain the residue, the BOS output the mean over
            windows, mean pooling the mean of the per-residue outputs, and a contact the mean
            over the windows holding both residues (0 where none does).

Failure isolation: a batch that runs out of memory is split and retried; a record that fails
alone (out of memory, too long, invalid with --skip-invalid) is listed in the index with its
reason and skipped, and the exit code is 1. A rerun retries failed records in their planned
batch (whose other records are recomputed with them), unless --no-retry-failed. What would fail
every record (the backend cannot run here, a head size the kernels do not take) is found on a
made-up input first: exit 2, nothing written. The job itself is
`esmkernels.jobs.embed.EmbedJob`.
"""

from __future__ import annotations

import argparse

from esmkernels.cli._common import (
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
    layer_numbers,
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
esmkernels embed proteins.fasta --model facebook/esm2_t33_650M_UR50D --out emb/ \\
    --repr-layers -1 --include mean per_tok --dtype bfloat16
python -c "import esmkernels; X, ids = esmkernels.open_embeddings('emb/').matrix(-1, 'mean')"
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = command_parser(
        subparsers,
        "embed",
        "embeddings of every record of a FASTA file (sharded safetensors + index, resumable)",
        EXAMPLE,
        __doc__.split("\n\n", 2)[2],
    )
    p.add_argument("fasta", help="input FASTA (plain or .gz)")
    add_model_option(p, "ESM language model (ESM-2, ESM-1b, ESM-1v)")
    p.add_argument("--out", "-o", required=True, help="output directory (the store)")
    p.add_argument(
        "--repr-layers",
        "--repr_layers",
        type=int,
        nargs="+",
        default=[-1],
        metavar="L",
        help="hidden-state layers to save: 0 = embeddings, N = final layer; negative counts "
        "from the end (-1 = final) (default: -1)",
    )
    p.add_argument(
        "--include",
        nargs="+",
        default=["mean"],
        choices=("mean", "per_tok", "bos", "contacts"),
        help="what to save: mean over residues, per-residue (per_tok), the BOS (<cls>) token, "
        "contact maps (default: mean)",
    )
    p.add_argument(
        "--max-tokens-per-batch",
        "--toks_per_batch",
        type=int,
        default=4096,
        metavar="T",
        help="padded tokens per batch (default 4096)",
    )
    p.add_argument(
        "--truncation-seq-length",
        "--truncation_seq_length",
        type=int,
        default=None,
        metavar="N",
        help="residue limit per record (default: the model's own limit, none for ESM-2)",
    )
    p.add_argument(
        "--long-sequences",
        choices=("error", "truncate", "window"),
        default="error",
        help="records over the limit: fail them, embed the first N residues, or sliding "
        "windows (default: error)",
    )
    p.add_argument(
        "--records-per-shard",
        type=int,
        default=1000,
        metavar="R",
        help="records per shard file (default 1000; shards also close at ~1 GiB)",
    )
    add_input_options(p)
    add_resume_options(p)
    add_scale_options(p)
    add_run_options(p)
    p.add_argument(
        "--quantize",
        default=None,
        choices=("int8",),
        help="int8 linear layers for CPU inference (float32 model on the CPU only; default: off)",
    )
    add_threads_option(p)
    p.add_argument("--nogpu", action="store_true", help="run on the CPU (as --device cpu)")
    return p


def run(args: argparse.Namespace) -> int:
    from esmkernels.jobs.embed import EmbedJob, model_limit
    from esmkernels.jobs.progress import residue_bar
    from esmkernels.jobs.threads import set_threads
    from esmkernels.models.esm import EsmModel

    for name in ("max_tokens_per_batch", "records_per_shard", "truncation_seq_length"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} {value}: must be >= 1")
    device_name = cpu_only(args.device, args.nogpu, "--nogpu")
    set_threads(args.threads)
    records, rejected = read_input(args.fasta, multimer=False, skip_invalid=args.skip_invalid)
    part = Part(args.shard)
    out = check_output_dir(args.out)
    device = pick_device(device_name, part)
    identity = model_identity(args.model)
    model = load_model(
        EsmModel,
        args.model,
        "lm",
        "embed",
        identity=identity,
        dtype=args.dtype,
        device=device,
        backend=args.backend,
        quantize=args.quantize,
    )
    tokenizer = tokenizer_for(str(identity.path))
    config = model.config
    layers = layer_numbers(args.repr_layers, config.num_hidden_layers)
    include = [p for p in ("mean", "per_tok", "bos", "contacts") if p in args.include]
    limit = model_limit(config)
    if args.truncation_seq_length is not None:
        limit = min(limit or args.truncation_seq_length, args.truncation_seq_length)
    if args.long_sequences == "window" and limit is None:
        raise UsageError("--long-sequences window needs a limit: pass --truncation-seq-length")

    items = {r.order: (r.id, r.sequence, None) for r in records}
    items.update({r.order: (r.id, r.sequence, r.reason) for r in rejected})
    settings = {
        "model": identity.settings(),
        "dtype": args.dtype,
        "backend": args.backend or "auto",
    }
    if args.quantize:  # absent when off, so runs from before the option still resume
        settings["quantize"] = args.quantize
    try:
        job = EmbedJob(
            out,
            [items[o] for o in sorted(items)],
            settings,
            layers=layers,
            include=include,
            limit=limit,
            long_sequences=args.long_sequences,
            max_tokens=args.max_tokens_per_batch,
            records_per_shard=args.records_per_shard,
            width=config.hidden_size,
            part=part.index,
            parts=part.count,
            retry_failed=args.retry_failed,
        )
    except ValueError as err:
        raise UsageError(str(err)) from None
    preflight(lambda: job.preflight(model, tokenizer, device), args.model, device, args.backend)

    part.start(device)
    if job.retrying:
        log(f"retrying {job.retrying} failed record(s) (--no-retry-failed keeps them failed)")
    label = "embed" + (f" {part.tag}" if part.tag else "")
    with residue_bar(job.total, label, initial=job.initial, enabled=not args.quiet) as bar:
        job.run(model, tokenizer, device, progress=bar.update)
    done = len(job.writer.records) - len(job.failed)
    log(f"embedded {done} record(s) into {out} ({job.index_path.name}, on {device})")
    part.finish()
    return report_failures(job.failed, str(job.index_path))


__all__ = ["add_parser", "run"]
