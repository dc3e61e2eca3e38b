"""Backend selection: the one rule every op follows, in one place.

`backend` is "auto" | "triton" | "torch"; None means the environment variable
`ESMKERNELS_BACKEND` (read at each call; default "auto"). It is validated here and only here:
by the ops (`choose`), and by the models that store a setting (`check_backend`).

The rule (`choose`), for one op call, its tensors, and what the op's registry predicate
(`Op.unsupported`, see `esmkernels.ops.registry`) says about its inputs:

- "torch": the op's PyTorch path, always.
- "triton": the Triton kernels, or a ValueError naming why they cannot run these inputs here:
  Triton is not installed; a tensor is not on CUDA and the interpreter is off
  (`TRITON_INTERPRET=1`, set before Triton is imported, runs the kernels on CPU); or the
  predicate names an input the kernels do not take (a head dim, a width).
- "auto": the kernels when the inputs are on CUDA, Triton is installed and the predicate finds
  nothing to object to; otherwise the PyTorch path, silently. The interpreter does not count
  for "auto": it is a correctness tool, thousands of times slower than the PyTorch path, so
  CPU tensors take the PyTorch path under "auto" even with TRITON_INTERPRET=1 (ask for
  "triton" to run the kernels interpreted).

`resolve(backend, *tensors)` is the device part of the rule alone, for a model that must know
before its ops run which path they take (ESMFold's memory model), resolved once per forward.
Nothing here touches CUDA at import time.

Example:
    >>> x = torch.zeros(3)
    >>> choose("my_op", "auto", (x,), None), choose("my_op", "torch", (x,), None)
    ('torch', 'torch')
    >>> choose("my_op", "triton", (x,), "D=24 is not tiled")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: my_op: backend='triton' cannot run these inputs: D=24 is not tiled; ...
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch

from esmkernels.ops import _compat

BACKENDS = ("auto", "triton", "torch")
RESOLVED = ("triton", "torch")  # what `choose` and `resolve` return
ENV_VAR = "ESMKERNELS_BACKEND"


def check_backend(backend: str | None) -> str | None:
    """`backend` lower-cased when it is None or one of BACKENDS (a stored model setting; None
    defers to the environment at each call); ValueError naming it otherwise."""
    if backend is not None and (not isinstance(backend, str) or backend.lower() not in BACKENDS):
        raise ValueError(f"backend={backend!r} is not None or one of {BACKENDS}")
    return None if backend is None else backend.lower()


def default_backend() -> str:
    """The backend ESMKERNELS_BACKEND asks for (default "auto"); ValueError naming a bad value."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={value!r} is not one of {BACKENDS}")
    return value


def requested_backend(backend: str | None, op: str = "op") -> str:
    """The backend a call asks for: `backend`, or the environment's when None; validated."""
    if backend is None:
        return default_backend()
    if not isinstance(backend, str) or backend.lower() not in BACKENDS:
        raise ValueError(f"{op}: backend={backend!r} is not one of {BACKENDS}")
    return backend.lower()


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - triton missing on this platform
        return False
    return True


def on_fast_device(t: torch.Tensor) -> bool:
    """Whether "auto" may run the kernels on `t`'s device: CUDA (the tests stand in for it)."""
    return t.is_cuda


def device_problem(tensors: Iterable[torch.Tensor | None], requested: str) -> str | None:
    """Why the kernels cannot ("triton") or should not ("auto") run on these tensors' devices,
    or None."""
    if not triton_available():
        return "Triton is not installed on this platform"
    present = [t for t in tensors if t is not None]
    off = [t for t in present if not on_fast_device(t)]
    # len(), not bool(): torch 2.11's Dynamo cannot trace bool() of a list (fullgraph fails).
    if len(present) > 0 and len(off) == 0:
        return None
    where = off[0].device if len(off) > 0 else "no tensor"
    if requested == "auto":
        return f"inputs on {where}: 'auto' runs the kernels on CUDA tensors only"
    if not interpreting():
        return (
            f"inputs on {where}: the kernels need CUDA tensors, or the Triton interpreter "
            "(TRITON_INTERPRET=1 in the environment before Triton is imported)"
        )
    # Interpreted: a Triton / numpy pair the interpreter fails on is named here, in one line,
    # before any kernel starts (None otherwise).
    return _compat.INSTALLED_PROBLEM


def choose(
    op: str,
    backend: str | None,
    tensors: Iterable[torch.Tensor | None],
    problem: str | None,
) -> str:
    """The rule of the module docstring: "triton" or "torch" for one call of `op`.

    Args:
        op: the op's name, for messages.
        backend: "auto" | "triton" | "torch" | None (the environment's).
        tensors: the call's tensors (None entries are skipped).
        problem: what the op's registry predicate says about the inputs (None: nothing).

    Raises ValueError for an unknown backend, and for "triton" where the kernels cannot run.
    """
    requested = requested_backend(backend, op)
    if requested == "torch":
        return "torch"
    why = device_problem(tensors, requested) or problem
    if why is None:
        return "triton"
    if requested == "auto":
        return "torch"
    raise ValueError(
        f"{op}: backend='triton' cannot run these inputs: {why}; use backend='torch' or 'auto'"
    )


def resolve(backend: str | None, *tensors: torch.Tensor | None, op: str = "model") -> str:
    """The path `choose` takes for these tensors' devices, whatever the op ("triton" or
    "torch"): for a model that plans its memory before its ops run."""
    return choose(op, backend, tensors, None)


def poison_empty(*shape, dtype, device) -> torch.Tensor:
    """torch.empty, filled with NaN when ESMKERNELS_DEBUG_POISON=1 so unwritten tiles fail tests."""
    out = torch.empty(*shape, dtype=dtype, device=device)
    if os.environ.get("ESMKERNELS_DEBUG_POISON", "0") == "1" and out.is_floating_point():
        out.fill_(float("nan"))
    return out
