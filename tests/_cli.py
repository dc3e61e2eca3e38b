"""Shared set-up of the command-line tests: tiny checkpoints on disk, running `main`, reading
the outputs back, and comparing directories byte for byte."""

from __future__ import annotations

from pathlib import Path

import torch

from esmkernels.cli import main
from esmkernels.core.tokenization import EsmTokenizer
from esmkernels.jobs.fasta import write_fasta
from esmkernels.reference import esm as ref
from tests._configs import tiny_lm_config

_DIRS: dict[tuple, Path] = {}


def lm_checkpoint(root: Path, style: str = "esm2", seed: int = 0, **overrides) -> Path:
    """A tiny random masked-LM HF directory (config.json, model.safetensors, vocab.txt)."""
    key = (root, style, seed, tuple(sorted(overrides.items())))
    if key not in _DIRS:
        path = root / f"lm-{style}-{seed}-{len(_DIRS)}"
        torch.manual_seed(seed)
        model = ref.EsmForMaskedLM(tiny_lm_config(style, **overrides)).eval()
        with torch.no_grad():  # a non-trivial contact head (its init is zero in the reference)
            g = torch.Generator().manual_seed(seed)
            head = model.esm.contact_head.regression
            head.weight.copy_(torch.randn(head.weight.shape, generator=g))
        model.save_pretrained(path)
        EsmTokenizer().save_pretrained(path)
        _DIRS[key] = path
    return _DIRS[key]


def fold_checkpoint(root: Path) -> Path:
    from tests.test_esmfold_model import tiny_model

    key = (root, "fold")
    if key not in _DIRS:
        path = root / "esmfold-tiny"
        tiny_model().save_pretrained(path)
        _DIRS[key] = path
    return _DIRS[key]


def fasta(path: Path, records) -> Path:
    write_fasta(list(records), path)
    return path


def run(*argv) -> int:
    return main([str(a) for a in argv])


def files(directory: Path) -> dict[str, bytes]:
    """Name -> bytes of every file in a directory (no listing order involved)."""
    return {p.name: p.read_bytes() for p in Path(directory).iterdir() if p.is_file()}
