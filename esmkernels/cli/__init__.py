"""The `esmkernels` command line (also `python -m esmkernels`, and under torchrun).

    esmkernels embed   FASTA --model M --out DIR    embeddings (sharded safetensors + index)
    esmkernels extract MODEL FASTA OUTDIR           fair-esm esm-extract's .pt per record
    esmkernels fold    FASTA --model M --out DIR    ESMFold structures (PDB, summary.tsv, PAE)
    esmkernels score   --model M --sequence S ...   ESM-1v variant effect scores (CSV)
    esmkernels convert IN.pt OUT_DIR                 fair-esm .pt -> HF directory
    esmkernels bench   --suite kernels              benchmark table, JSON and plots
    esmkernels demo                                  embed, fold and score a demo FASTA offline
    esmkernels info                                  versions, device, backend

Each subcommand is a module `esmkernels.cli.<name>` with `add_parser(subparsers)` and
`run(args) -> int`. Exit codes: 0 every record done; 1 the job ran but some records failed
(listed on stderr and in the outputs); 2 usage error, nothing done (bad options, unreadable
input, wrong model kind, unwritable output).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from esmkernels.cli._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError, log

COMMANDS = ("embed", "extract", "fold", "score", "convert", "bench", "demo", "info")


def _modules() -> dict[str, ModuleType]:
    """Each subcommand's module; one not installed yet is left out (and only that one)."""
    found = {}
    for name in COMMANDS:
        qualified = f"{__name__}.{name}"
        try:
            found[name] = importlib.import_module(qualified)
        except ModuleNotFoundError as err:
            if err.name != qualified:
                raise
    return found


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    modules = _modules()
    parser = argparse.ArgumentParser(
        prog="esmkernels",
        description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in modules.values():
        module.add_parser(sub)
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 done, 1 some records failed, 2 usage)."""
    parser, modules = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse: --help (0) or a usage error (2)
        return EXIT_USAGE if stop.code not in (0, None) else EXIT_OK
    if args.version:
        from esmkernels import __version__

        print(__version__)
        return EXIT_OK
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return modules[args.command].run(args)
    except UsageError as err:
        log(f"esmkernels {args.command}: error: {err}")
        return EXIT_USAGE
    except BrokenPipeError:  # `esmkernels score ... | head`: the reader left; not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


__all__ = ["COMMANDS", "EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "main"]
