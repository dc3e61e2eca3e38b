"""A dependency-free progress bar for long CLI work (stderr; quiet when not a terminal)."""

from __future__ import annotations

import sys
import time


class Progress:
    """`with Progress(total, "embed") as bar: bar.update(n)`: prints rate and ETA to stderr.

    On a non-terminal stream it prints a line every ~10% instead of redrawing.
    """

    def __init__(self, total: int, desc: str = "", unit: str = "it", stream=None, enabled=True):
        self.total = max(int(total), 0)
        self.desc = desc
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.n = 0
        self.start = time.monotonic()
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_decile = -1

    def __enter__(self) -> Progress:
        self._draw()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._draw(final=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        self._draw()

    def _draw(self, final: bool = False) -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        frac = self.n / self.total if self.total else 1.0
        eta = (self.total - self.n) / rate if rate > 0 else float("nan")
        width = 30
        filled = int(width * min(frac, 1.0))
        line = (
            f"{self.desc} [{'#' * filled}{'.' * (width - filled)}] {self.n}/{self.total} {self.unit} "
            f"{rate:.1f} {self.unit}/s eta {eta:.0f}s"
        )
        if self._tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
            self.stream.flush()
            return
        decile = int(frac * 10)
        if final or decile > self._last_decile:
            self._last_decile = decile
            self.stream.write(line + "\n")
            self.stream.flush()
