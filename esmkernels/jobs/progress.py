"""Progress bars for long command-line work: tqdm, counted in residues (rate and ETA).

A job's size is its residues, not its records: a proteome mixes 30- and 3,000-residue proteins,
so residues/s is the rate that predicts the remaining time. The bar goes to stderr; it is off
with `enabled=False` (`--quiet`) and tqdm itself redraws sparingly when stderr is not a terminal.

Example:
    >>> with residue_bar(total=12345, desc="embed") as bar:  # doctest: +SKIP
    ...     bar.update(300)  # residues finished
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def residue_bar(total: int, desc: str, *, initial: int = 0, enabled: bool = True) -> tqdm:
    """A tqdm bar over `total` residues, `initial` of them already done (a resumed job).

    Shows residues done / total, residues/s and the ETA (tqdm's unit scaling, 12.3k res/s, from
    1,000 residues on).
    """
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="res",
        unit_scale=total >= 1000,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5,
        smoothing=0.1,
    )


def count_bar(
    total: int, desc: str, unit: str, *, enabled: bool = True, delay: float = 2.0
) -> tqdm:
    """A tqdm bar over `total` items of `unit` (e.g. the sequences `score` runs through a model),
    shown only once the work has taken `delay` seconds: short runs stay silent."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=total >= 1000,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5,
        delay=delay,
    )


__all__ = ["count_bar", "residue_bar"]
