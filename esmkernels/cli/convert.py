"""`esmkernels convert IN OUT_DIR`: any checkpoint we read -> an HF directory.

Reads fair-esm `.pt` files (ESM-1b, ESM-1v, ESM-2, with a `-contact-regression.pt` beside them
merged in; ESMFold `esmfold_3B_v1.pt` with its ESM-2 stem from `--stem`) and every other format
`esmkernels.load_checkpoint` reads, and writes `config.json`, `model.safetensors` and
`vocab.txt`: a directory that `from_pretrained` of esmkernels and of transformers both load.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from esmkernels.cli._common import EXIT_OK, UsageError, command_parser, log, output_dir

EXAMPLE = """
esmkernels convert esm2_t33_650M_UR50D.pt esm2_t33_650M_UR50D/
esmkernels convert esmfold_3B_v1.pt esmfold_v1/ --stem esm2_t36_3B_UR50D.pt
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = command_parser(
        subparsers,
        "convert",
        "convert a fair-esm .pt (or any checkpoint we read) into an HF directory",
        EXAMPLE,
        __doc__.split("\n\n", 1)[1],
    )
    p.add_argument("checkpoint", help="fair-esm .pt file, HF directory or weights file, Hub id")
    p.add_argument("out", help="output directory (config.json, model.safetensors, vocab.txt)")
    p.add_argument(
        "--stem", default=None, help="ESMFold .pt only: its ESM-2 language model checkpoint"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a checkpoint already in the directory"
    )
    return p


def architecture(config, state_dict) -> str:
    if config.is_folding_model:
        return "EsmForProteinFolding"
    return "EsmForMaskedLM" if any(k.startswith("lm_head.") for k in state_dict) else "EsmModel"


def run(args: argparse.Namespace) -> int:
    from esmkernels.core.checkpoint import load_checkpoint
    from esmkernels.core.hf_checkpoint import save_checkpoint
    from esmkernels.core.tokenization import EsmTokenizer
    from esmkernels.jobs.identity import resolve_model

    out = Path(args.out)
    if (out / "config.json").exists() and not args.overwrite:
        raise UsageError(f"{out} already holds a checkpoint; pass --overwrite to replace it")
    try:  # a missing path is tried on the Hub only when it is a plain org/name id
        source = resolve_model(args.checkpoint)
        stem = None if args.stem is None else resolve_model(args.stem)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from None
    except OSError as err:
        raise UsageError(f"cannot read {args.checkpoint}: {err}") from None
    try:
        config, state_dict, fmt = load_checkpoint(source, stem=stem)
    except (ValueError, TypeError, FileNotFoundError, OSError) as err:
        raise UsageError(f"cannot read {args.checkpoint}: {err}") from None
    if fmt == "fair-esm-esmfold" and not any(k.startswith("esm.") for k in state_dict):
        raise UsageError(
            f"{args.checkpoint} is a fair-esm ESMFold file without its ESM-2 stem; pass "
            "--stem esm2_t36_3B_UR50D.pt (or an HF directory / Hub id of that model)"
        )
    output_dir(str(out))
    config.architectures = [architecture(config, state_dict)]
    save_checkpoint(out, config, state_dict)
    EsmTokenizer().save_pretrained(out)  # fair-esm's alphabet for ESM-1b, ESM-1v, ESM-2
    log(f"{args.checkpoint} ({fmt}) -> {out} ({config.architectures[0]})")
    return EXIT_OK


__all__ = ["add_parser", "architecture", "run"]
