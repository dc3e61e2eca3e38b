"""`esmkernels extract MODEL FASTA OUTDIR --include ...`: fair-esm's `esm-extract`, resumable.

Writes what fair-esm's `esm-extract` writes, so pipelines that read its output need no change:
one `OUTDIR/<label>.pt` per record (label: the whole FASTA header), a dict with `label` and,
per --include, `representations` {layer: [L, D]} (per_tok), `mean_representations` {layer: [D]}
(mean), `bos_representations` {layer: [D]} (bos) and `contacts` [L, L]; float32, loadable with
`torch.load(path, weights_only=True)`. Layers count 0 = embeddings to N = final (after the last
LayerNorm); negative --repr_layers count from the end. Records longer than
--truncation_seq_length (default 1022, as esm-extract) are truncated to their first N residues.
The options take esm-extract's spellings (--repr_layers, --toks_per_batch,
--truncation_seq_length, --nogpu) and the dashed ones of `embed`.

Unlike esm-extract it resumes safely: files are written atomically, a rerun skips records
whose file is complete and recomputes only the batches that still miss one (same numbers as an
uninterrupted run), and OUTDIR/.esmkernels-extract.json (settings, model identity, sequence
checksums) refuses a rerun with other settings. A record that fails (out of memory alone, invalid
with --skip-invalid) gets no file and is listed on stderr (exit 1); a rerun retries it.
MODEL is an HF directory, a fair-esm .pt file, a Hub id, or a fair-esm model name
(esm2_t33_650M_UR50D means facebook/esm2_t33_650M_UR50D). The job is
`esmkernels.jobs.extract.ExtractJob`.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from esmkernels.cli._common import (
    UsageError,
    add_input_options,
    add_resume_options,
    add_run_options,
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

EXAMPLE = """
esmkernels extract esm2_t33_650M_UR50D proteins.fasta emb_esm2/ \\
    --repr_layers 0 32 33 --include mean per_tok contacts
python -c "import torch; print(torch.load('emb_esm2/p2.pt', weights_only=True).keys())"
"""

# fair-esm's pretrained names (`esm.pretrained`), which esm-extract accepts as MODEL.
_FAIR_ESM_NAME = re.compile(r"esm(1b|1v|2)_t\d+_\d+[MB]_UR\d+[SD](_\d)?")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = command_parser(
        subparsers,
        "extract",
        "fair-esm esm-extract compatible: one <label>.pt per record (resumable)",
        EXAMPLE,
        __doc__.split("\n\n", 1)[1],
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="ESM language model: an HF directory, a fair-esm .pt file, a Hub id or a fair-esm "
        "model name",
    )
    p.add_argument("fasta", metavar="FASTA", help="input FASTA (plain or .gz)")
    p.add_argument("outdir", metavar="OUTDIR", help="output directory (one <label>.pt per record)")
    p.add_argument(
        "--repr_layers",
        "--repr-layers",
        dest="repr_layers",
        type=int,
        nargs="+",
        default=[-1],
        metavar="L",
        help="layers to save: 0 = embeddings .. N = final; negative from the end (default: -1)",
    )
    p.add_argument(
        "--include",
        nargs="+",
        required=True,
        choices=("mean", "per_tok", "bos", "contacts"),
        help="what to save (required, as in esm-extract)",
    )
    p.add_argument(
        "--toks_per_batch",
        "--toks-per-batch",
        dest="toks_per_batch",
        type=int,
        default=4096,
        metavar="T",
        help="padded tokens per batch, <cls> and <eos> included (default 4096)",
    )
    p.add_argument(
        "--truncation_seq_length",
        "--truncation-seq-length",
        dest="truncation_seq_length",
        type=int,
        default=1022,
        metavar="N",
        help="keep the first N residues of longer records (default 1022, as esm-extract)",
    )
    p.add_argument("--nogpu", action="store_true", help="run on the CPU even if a GPU is present")
    add_input_options(p)
    add_resume_options(p)
    add_run_options(p)
    return p


def model_location(text: str) -> str:
    """MODEL as the loaders take it: a fair-esm name that is no local path becomes its Hub id."""
    if _FAIR_ESM_NAME.fullmatch(text) and not Path(text).exists():
        return f"facebook/{text}"
    return text


def run(args: argparse.Namespace) -> int:
    from esmkernels.jobs.embed import model_limit
    from esmkernels.jobs.extract import ExtractJob, output_paths
    from esmkernels.jobs.progress import residue_bar
    from esmkernels.models.esm import EsmModel

    for name in ("toks_per_batch", "truncation_seq_length"):
        value = getattr(args, name)
        if value < 1:
            raise UsageError(f"--{name} {value}: must be >= 1")
    device_name = cpu_only(args.device, args.nogpu, "--nogpu")
    out = check_output_dir(args.outdir)
    records, rejected = read_input(args.fasta, multimer=False, skip_invalid=args.skip_invalid)
    items = {r.order: (r.header, r.sequence, None) for r in records}
    items.update({r.order: (r.id, r.sequence, r.reason) for r in rejected})
    items = [items[o] for o in sorted(items)]
    try:
        output_paths([label for label, _, _ in items])
    except ValueError as err:
        raise UsageError(str(err)) from None

    device = pick_device(device_name)
    location = model_location(args.model)
    identity = model_identity(location)
    model = load_model(
        EsmModel,
        location,
        "lm",
        "extract",
        identity=identity,
        dtype=args.dtype,
        device=device,
        backend=args.backend,
    )
    layers = layer_numbers(args.repr_layers, model.config.num_hidden_layers, "--repr_layers")
    limit = model_limit(model.config)
    if limit is not None and args.truncation_seq_length > limit:
        raise UsageError(
            f"--truncation_seq_length {args.truncation_seq_length}: this model takes at most "
            f"{limit} residues"
        )
    include = [p for p in ("mean", "per_tok", "bos", "contacts") if p in args.include]
    settings = {
        "model": identity.settings(),
        "dtype": args.dtype,
        "backend": args.backend or "auto",
    }
    try:
        job = ExtractJob(
            out,
            items,
            settings,
            layers=layers,
            include=include,
            truncation=args.truncation_seq_length,
            max_tokens=args.toks_per_batch,
            retry_failed=args.retry_failed,
        )
    except ValueError as err:
        raise UsageError(str(err)) from None
    tokenizer = tokenizer_for(str(identity.path))
    preflight(lambda: job.preflight(model, tokenizer, device), args.model, device, args.backend)

    if job.retrying:
        log(f"retrying {job.retrying} failed record(s) (--no-retry-failed keeps them failed)")
    with residue_bar(job.total, "extract", initial=job.initial, enabled=not args.quiet) as bar:
        job.run(model, tokenizer, device, progress=bar.update)
    done = len(job.done)
    log(f"extracted {done} record(s) into {out} (on {device})")
    return report_failures(job.failed, str(job.manifest_path))


__all__ = ["add_parser", "model_location", "run"]
