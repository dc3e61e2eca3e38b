"""Version pairs known to break Triton's interpreter, checked before any kernel runs.

The interpreter (`TRITON_INTERPRET=1`) runs kernels on numpy arrays, so it depends on numpy's
behaviour as well as on Triton's. One pair is known to fail on every interpreted kernel:

- Triton < 3.7 with numpy >= 2.4. numpy 2.4 made `int()` of an array with one element but
  `ndim > 0` a TypeError (deprecated since numpy 1.25), and the interpreter of Triton 3.6 and
  older converts its scalars that way (`tensor.__index__` is `int(self.handle.data)`, used by
  every `range()` over a kernel value). Triton 3.7.0 squeezes first. Checked here with a small
  kernel: Triton 3.6.0 passes with numpy 2.3.5 and fails with 2.4.0; Triton 3.7.0 passes with
  numpy 2.4.0. The GPU image's numpy 2.5 fails the same way (issue 21: every interpreted test
  fails with a TypeError deep inside the interpreter).

`interpreter_problem()` names the broken pair in one line (with the fix); `check_interpreter()`
raises it. The test session calls it at start (`tests/conftest.py`), and the dispatch calls it
before the first interpreted launch. Compiled kernels (a GPU, `TRITON_INTERPRET` unset) are not
affected. Versions are read from package metadata: nothing here imports Triton or numpy.
"""

from __future__ import annotations

import functools
import re
from importlib.metadata import PackageNotFoundError, version

# (Triton below this, numpy from this, why): the interpreter fails on every kernel for a Triton
# release below the first bound together with a numpy release at or above the second.
INTERPRETER_BREAKS: tuple[tuple[tuple[int, int], tuple[int, int], str], ...] = (
    (
        (3, 7),
        (2, 4),
        "numpy >= 2.4 no longer converts a 1-element array to an int, which the interpreter of "
        "Triton < 3.7 relies on",
    ),
)


def parse_version(text: str) -> tuple[int, int]:
    """(major, minor) of a version string such as "3.6.0", "2.4.0rc1" or "3.9.0+git1a2b".

    Raises ValueError when `text` does not start with "<int>.<int>".
    """
    match = re.match(r"\s*(\d+)\.(\d+)", str(text))
    if match is None:
        raise ValueError(f"cannot read a version from {text!r}")
    return int(match.group(1)), int(match.group(2))


def _installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def interpreter_problem(triton_version: str | None, numpy_version: str | None) -> str | None:
    """One line naming a known-broken Triton / numpy pair for the interpreter and the fix, or
    None when the pair is not known to fail (or either package is absent)."""
    if triton_version is None or numpy_version is None:
        return None
    triton_v, numpy_v = parse_version(triton_version), parse_version(numpy_version)
    for triton_below, numpy_from, why in INTERPRETER_BREAKS:
        if triton_v < triton_below and numpy_v >= numpy_from:
            return (
                f"Triton {triton_version} with numpy {numpy_version} cannot run the Triton "
                f"interpreter (TRITON_INTERPRET=1): {why}. Fix: install "
                f"'numpy<{numpy_from[0]}.{numpy_from[1]}' or "
                f"'triton>={triton_below[0]}.{triton_below[1]}', or compile the kernels on a GPU "
                "(TRITON_INTERPRET unset)."
            )
    return None


@functools.lru_cache(maxsize=1)
def installed_interpreter_problem() -> str | None:
    """`interpreter_problem` for the installed Triton and numpy (read once per process)."""
    return interpreter_problem(_installed("triton"), _installed("numpy"))


def check_interpreter() -> None:
    """Raise RuntimeError (one line: versions and fix) when the installed Triton / numpy pair is
    known to break the interpreter. Call it only when interpreting."""
    problem = installed_interpreter_problem()
    if problem is not None:
        raise RuntimeError(problem)
