"""A scoring job: mutations of one wild type scored by masked language models (ESM-1v).
`esmkernels score` reads the wild type and the mutation rows, checks them here before any model
loads, then scores the valid rows with each model and writes the table.

Checking (`check_mutations`): every row is parsed (`esmkernels.core.variants.parse_mutations`)
against the wild type and the residue letters of every model's vocabulary
(`residue_alphabet`), so a bad row (`M1J`, `K2*`, a wrong wild-type letter) is found before a
model is loaded; the caller stops on it or, with `--skip-invalid`, records its reason.

Scoring (`score_mutants`): `esmkernels.core.variants.score_variants` on the valid rows, with a
progress callback counting the sequences each forward pass runs (`forward_count` predicts the
total from the strategy's cost: one per mutated site for masked-marginals, one in total for
wt-marginals, one per position per distinct sequence for pseudo-ppl).

Example:
    >>> check_mutations("MKTAY", ["K2A", "M1J"], 1, set("ACDEFGHIKLMNPQRSTVWY"))
    [None, "mutation 'M1J': the mutant residue 'J' is not in the vocabulary"]
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from esmkernels.core.variants import parse_mutations, score_variants

__all__ = [
    "PROBE",
    "check_mutations",
    "forward_count",
    "preflight",
    "residue_alphabet",
    "score_mutants",
]

PROBE = "MKTAYIAK"  # the made-up sequence of `preflight`


def residue_alphabet(tokenizer) -> set[str]:
    """The residue letters of a tokenizer's vocabulary (its one-character upper-case tokens)."""
    return {t for t in tokenizer.get_vocab() if len(t) == 1 and t.isalpha() and t.isupper()}


def check_mutations(
    wild_type: str, mutants: Sequence[str], offset: int, alphabet: Collection[str]
) -> list[str | None]:
    """Why each mutation cannot be scored (None when it can): format, position, wild-type
    letter, a repeated site, or a mutant letter outside `alphabet`."""
    reasons: list[str | None] = []
    for mutant in mutants:
        if not mutant:
            reasons.append("empty mutation")
            continue
        try:
            parse_mutations(wild_type, mutant, offset, alphabet=alphabet)
        except ValueError as err:
            reasons.append(str(err))
        else:
            reasons.append(None)
    return reasons


def forward_count(
    wild_type: str, mutants: Sequence[str], strategy: str, offset: int, window: int | None
) -> int:
    """Sequences `score_variants` runs through the model for these (valid) mutations."""
    parsed = [parse_mutations(wild_type, m, offset) for m in mutants]
    if not parsed:
        return 0
    sites = {i for p in parsed for i, _, _ in p}
    if strategy == "pseudo-ppl":
        distinct = {tuple(sorted((i, mt) for i, w, mt in p if mt != w)) for p in parsed}
        return len(wild_type) * len(distinct | {()})
    if strategy == "wt-marginals" and (window is None or len(wild_type) <= window):
        return 1
    return len(sites)


class _Counting:
    """A model as `score_variants` sees it, reporting the sequences of each forward pass."""

    def __init__(self, model, progress: Callable[[int], object]):
        self._model, self._progress = model, progress

    def __call__(self, *args, **kwargs):
        out = self._model(*args, **kwargs)
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._progress(int(ids.shape[0]) if ids is not None else 1)
        return out

    def __getattr__(self, name: str) -> Any:  # parameters(), eval(), train(), training
        return getattr(self._model, name)


def score_mutants(
    model,
    tokenizer,
    wild_type: str,
    mutants: Sequence[str],
    strategy: str,
    *,
    batch_size: int,
    window: int | None,
    offset: int,
    progress: Callable[[int], object] | None = None,
) -> list[float]:
    """Scores of valid `mutants` (`score_variants`); `progress(sequences)` after each forward."""
    counted = model if progress is None else _Counting(model, progress)
    values = score_variants(
        counted,
        tokenizer,
        wild_type,
        list(mutants),
        strategy,
        batch_size=batch_size,
        window=window,
        offset=offset,
    )
    return [float(v) for v in values]


def preflight(model, tokenizer, device) -> None:
    """One forward pass of a made-up sequence, writing nothing: what fails here (a backend
    that cannot run on this device, a head size the kernels do not take) fails every row."""
    import torch

    enc = tokenizer(PROBE, return_tensors="pt")
    with torch.inference_mode():
        model(
            input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)
        )
