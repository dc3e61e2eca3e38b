"""What the subcommands share: exit codes, options, devices, scale-out, model loading."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

# Exit codes of every subcommand.
EXIT_OK = 0  # every record done
EXIT_FAILED = 1  # the job ran; some records failed (listed on stderr and in the outputs)
EXIT_USAGE = 2  # nothing was done: bad options, unreadable input, wrong model, unwritable output

DTYPES = ("float32", "bfloat16", "float16")


class UsageError(ValueError):
    """An error the user can fix before any work starts (exit code 2)."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def command_parser(subparsers, name: str, summary: str, example: str, description: str = ""):
    """A subcommand parser whose --help ends with a copy-paste example."""
    epilog = "example:\n" + textwrap.indent(textwrap.dedent(example).strip("\n"), "  ")
    return subparsers.add_parser(
        name,
        help=summary,
        description=(
            summary + ("\n\n" + textwrap.dedent(description).strip() if description else "")
        ),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_model_option(p: argparse.ArgumentParser, what: str, multiple: bool = False) -> None:
    kind = dict(action="append") if multiple else dict()
    p.add_argument(
        "--model",
        "-m",
        required=True,
        metavar="M",
        help=f"{what}: an HF checkpoint directory, a fair-esm .pt file, or a Hub id "
        "(downloaded only when huggingface_hub is installed)",
        **kind,
    )


def add_run_options(p: argparse.ArgumentParser, dtype_default: str | None = "float32") -> None:
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when present, else cpu)"
    )
    p.add_argument(
        "--dtype",
        default=dtype_default,
        choices=DTYPES,
        help=f"weights and compute dtype (default: {dtype_default})",
    )
    p.add_argument(
        "--backend",
        default=None,
        choices=("auto", "triton", "torch"),
        help="kernel backend (default: $ESMKERNELS_BACKEND or auto: Triton on CUDA)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def add_scale_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--shard",
        default=None,
        metavar="K/N",
        help="do share K (0-based) of N of the records, as rank K of N under torchrun does "
        "(for SLURM arrays, Nextflow); every share writes its own files into --out",
    )


def add_input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="record invalid or empty sequences as failed and go on (default: stop before any "
        "work, naming the record and position)",
    )


def add_resume_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-retry-failed",
        dest="retry_failed",
        action="store_false",
        help="on a rerun, keep the records the earlier run recorded as failed (default: retry "
        "them; records done are never recomputed)",
    )


def preflight(check, spec: str, device, backend: str | None) -> None:
    """Run a job's `preflight` (a made-up input through the model with the job's options);
    any error is a UsageError (exit 2, nothing written): it would fail every record."""
    try:
        check()
    except Exception as err:  # noqa: BLE001 - whatever fails here fails the whole job
        text = str(err).strip().splitlines()
        why = f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")
        raise UsageError(
            f"--model {spec} cannot run on {device} with backend {backend or 'auto'}: {why}"
        ) from None


# ---------------------------------------------------------------------------------------------
# Scale-out
# ---------------------------------------------------------------------------------------------


class Part:
    """This process's share of a job: K of N, from --shard or torchrun's environment.

    Under torchrun (WORLD_SIZE > 1) a process group is started (NCCL on CUDA, gloo otherwise)
    only to wait for every rank at the end; the work itself needs no communication.
    """

    def __init__(self, shard: str | None):
        from esmkernels.jobs.files import parse_shard

        world = int(os.environ.get("WORLD_SIZE", "1"))
        self.distributed = world > 1
        if self.distributed and shard:
            raise UsageError("--shard and torchrun both split the job; use one of them")
        if self.distributed:
            self.index, self.count = int(os.environ["RANK"]), world
            self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        else:
            try:
                self.index, self.count = parse_shard(shard) if shard else (0, 1)
            except ValueError as err:
                raise UsageError(str(err)) from None
            self.local_rank = 0
        self._group = False

    def start(self, device) -> None:
        if not self.distributed:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            from datetime import timedelta

            # Shares of real jobs finish hours apart; the default 30-minute timeout of the final
            # barrier would fail a job whose work is all done.
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                import torch

                torch.cuda.set_device(device)  # NCCL's barrier runs on the current device
            dist.init_process_group(backend, timeout=timedelta(days=7))
            self._group = True

    def finish(self) -> None:
        if not self._group:
            return
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
        self._group = False

    @property
    def tag(self) -> str:
        return f"part {self.index}/{self.count}" if self.count > 1 else ""


def pick_device(name: str | None, part: Part | None = None):
    import torch

    if name:
        try:
            device = torch.device(name)
        except RuntimeError as err:
            raise UsageError(f"--device {name!r}: {err}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--device {name!r}: CUDA is not available on this machine")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", part.local_rank if part is not None else 0)
    return torch.device("cpu")


def cpu_only(device: str | None, flag: bool, option: str) -> str | None:
    """The --device to use given fair-esm's CPU switch (`--nogpu`, `--cpu-only`)."""
    if not flag:
        return device
    if device is not None and device != "cpu":
        raise UsageError(f"{option} and --device {device} contradict each other; pass one")
    return "cpu"


# ---------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------


def read_input(path: str, *, multimer: bool, skip_invalid: bool):
    """`fasta.read_records` with warnings on stderr; errors become UsageError (exit 2)."""
    from esmkernels.jobs.fasta import read_records

    try:
        return read_records(path, multimer=multimer, skip_invalid=skip_invalid, warn=log)
    except ValueError as err:
        raise UsageError(str(err)) from None


def check_output_dir(path: str) -> Path:
    """`--out` checked (an existing writable directory, or one that can be created there)
    without creating it: nothing is written before every check of a command has passed."""
    from esmkernels.jobs.files import check_creatable

    try:
        return check_creatable(path)
    except ValueError as err:
        raise UsageError(str(err).replace("output directory", "--out", 1)) from None


def output_dir(path: str) -> Path:
    """`--out` checked and created (`check_output_dir`, then made): for a command whose checks
    are all done."""
    from esmkernels.jobs.files import check_writable

    check_output_dir(path)
    try:
        return check_writable(path)
    except ValueError as err:
        raise UsageError(str(err)) from None


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def model_kind(path_or_id: str) -> str | None:
    """ "fold" / "lm" from an HF directory's config.json without loading weights; None if unknown."""
    config = Path(path_or_id) / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    return "fold" if data.get("is_folding_model") else "lm"


_WRONG_KIND = {
    "fold": "{m} is an ESMFold model; `{cmd}` needs an ESM language model (ESM-2, ESM-1b, "
    "ESM-1v), e.g. --model facebook/esm2_t33_650M_UR50D",
    "lm": "{m} is a language model, not ESMFold; `fold` needs an ESMFold checkpoint, e.g. "
    "--model facebook/esmfold_v1",
}


def model_identity(spec: str):
    """The `--model`'s identity (`esmkernels.jobs.identity.model_identity`): where it
    resolves and its files' fingerprints; any problem is a UsageError naming the spelling."""
    from esmkernels.jobs.identity import model_identity as identify

    try:
        return identify(spec)
    except FileNotFoundError as err:
        raise UsageError(f"--model {err}") from None
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot load --model {spec}: {err}") from None


def load_model(cls, path_or_id: str, want: str, cmd: str, *, identity=None, **kwargs: Any):
    """`cls.from_pretrained` after checking the checkpoint is of kind `want` ("lm" / "fold").

    `identity` (from `model_identity`) gives the resolved path to load (a Hub id is then not
    resolved twice). Any loading error (missing path, corrupt file, wrong kind) is a
    UsageError.
    """
    if identity is None:
        identity = model_identity(path_or_id)
    local = str(identity.path)
    kind = model_kind(local)
    if kind is not None and kind != want:
        raise UsageError(_WRONG_KIND[kind].format(m=path_or_id, cmd=cmd))
    try:
        model = cls.from_pretrained(local, **kwargs)
    except (ValueError, TypeError, FileNotFoundError, OSError) as err:
        raise UsageError(f"cannot load --model {path_or_id}: {err}") from None
    folding = bool(getattr(model.config, "is_folding_model", False))
    if folding != (want == "fold"):
        raise UsageError(_WRONG_KIND["fold" if folding else "lm"].format(m=path_or_id, cmd=cmd))
    return model


def layer_numbers(values: list[int], n_layers: int, option: str = "--repr-layers") -> list[int]:
    """fair-esm's layer numbers of `--repr-layers` values, sorted and unique: 0 = embeddings ..
    `n_layers` = final, a negative value counting from the end (-1 = final); a value outside is
    a UsageError naming it."""
    layers = set()
    for layer in values:
        if not -(n_layers + 1) <= layer <= n_layers:
            raise UsageError(
                f"{option} {layer}: this model has layers 0..{n_layers} (or -1..-{n_layers + 1})"
            )
        layers.add(layer % (n_layers + 1))
    return sorted(layers)


def tokenizer_for(path_or_id: str):
    from esmkernels.core.tokenization import EsmTokenizer

    path = Path(path_or_id)
    if path.is_dir() and (path / "vocab.txt").is_file():
        return EsmTokenizer.from_pretrained(path)
    return EsmTokenizer()


def report_failures(failed: list[tuple[str, str]], where: str, noun: str = "record") -> int:
    """Print the failed records (id: reason) and return the exit code."""
    if not failed:
        return EXIT_OK
    log(f"{len(failed)} {noun}(s) failed (listed in {where}):")
    for rid, reason in failed[:50]:
        log(f"  {rid}: {reason}")
    if len(failed) > 50:
        log(f"  ... and {len(failed) - 50} more")
    return EXIT_FAILED
