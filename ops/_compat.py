"""Supported version sets, and version pairs known to break Triton's interpreter.

Two sets of (torch, Triton) are supported and checked (docs/COMPATIBILITY.md):
`SUPPORTED_ENVIRONMENTS` names them; `environment_line()` says which one the installed packages
match (`bench/gpu_session.sh` prints it first).

The interpreter (`TRITON_INTERPRET=1`) runs kernels on numpy arrays, so it depends on numpy's
behaviour as well as on Triton's. One pair is known to fail on every interpreted kernel:

- Triton < 3.7 with numpy >= 2.4. numpy 2.4 made `int()` of an array with one element but
  `ndim > 0` a TypeError (deprecated since numpy 1.25), and the interpreter of Triton 3.6 and
  older converts its scalars that way (`tensor.__index__` is `int(self.handle.data)`, used by
  every `range()` over a kernel value). Triton 3.7.0 squeezes first. Checked here with a small
  kernel: Triton 3.6.0 passes with numpy 2.3.5 and fails with 2.4.0; Triton 3.7.0 passes with
  numpy 2.4.0. The GPU image's numpy 2.5 fails the same way (issue 21: every interpreted test
  fails with a TypeError deep inside the interpreter).

`interpreter_problem()` names the broken pair in one line (with the fix); the test session stops
with it at start (`tests/conftest.py`), and the dispatch gives it as the reason a forced
`backend="triton"` cannot run interpreted (`INSTALLED_PROBLEM`, a ValueError before any kernel). Compiled kernels (a GPU, `TRITON_INTERPRET` unset) are not
affected. Versions are read from package metadata: nothing here imports Triton or numpy.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version

# name -> {package: (major, minor)}; the Makefile pins the full versions (a test keeps them equal).
SUPPORTED_ENVIRONMENTS: dict[str, dict[str, tuple[int, int]]] = {
    "the pinned CPU set (make test)": {"torch": (2, 13), "triton": (3, 9)},
    "the GPU image's set (make compat)": {"torch": (2, 11), "triton": (3, 6)},
}
REPORTED = ("torch", "triton", "numpy", "transformers", "safetensors")

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


def installed_interpreter_problem() -> str | None:
    """`interpreter_problem` for the installed Triton and numpy (read now)."""
    return interpreter_problem(_installed("triton"), _installed("numpy"))


# Read once, at import (package metadata only): a plain global, a constant to torch.compile
# (Dynamo cannot trace importlib.metadata or a functools cache) for the dispatch to read.
INSTALLED_PROBLEM = installed_interpreter_problem()


def supported_environment(versions: dict[str, str | None]) -> str | None:
    """The name of the supported set whose torch and Triton major.minor `versions` match, or
    None. `versions`: {package: version string or None (absent)}."""
    for name, wanted in SUPPORTED_ENVIRONMENTS.items():
        have = {pkg: versions.get(pkg) for pkg in wanted}
        if all(v is not None and parse_version(v) == wanted[pkg] for pkg, v in have.items()):
            return name
    return None


def environment_line(versions: dict[str, str | None] | None = None) -> str:
    """One line: the versions (default: installed ones, and this Python), the supported set they
    match, and, when interpreting, a known interpreter break."""
    import os
    import platform

    if versions is None:
        versions = {"python": platform.python_version(), **{n: _installed(n) for n in REPORTED}}
    shown = ", ".join(f"{name} {v or 'absent'}" for name, v in versions.items())
    match = supported_environment(versions)
    line = f"{shown}: " + (
        f"matches {match}"
        if match
        else "matches no supported set ("
        + "; ".join(
            f"{name}: " + ", ".join(f"{pkg} {a}.{b}" for pkg, (a, b) in want.items())
            for name, want in SUPPORTED_ENVIRONMENTS.items()
        )
        + "); see docs/COMPATIBILITY.md"
    )
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        problem = interpreter_problem(versions.get("triton"), versions.get("numpy"))
        line += f". {problem}" if problem else ". The interpreter works with this Triton and numpy"
    return line
