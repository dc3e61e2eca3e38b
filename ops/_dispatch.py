"""Backend selection, in one place for every op.

`backend` is one of "auto" | "triton" | "torch"; `None` means the environment variable
`ESMKERNELS_BACKEND` (default "auto").

- "auto": Triton when every tensor is on CUDA, else the reference PyTorch op. Under
  `TRITON_INTERPRET=1`, "auto" on CPU tensors also stays on the torch path: the interpreter is a
  testing tool, not a fast path; ask for "triton" explicitly to run kernels interpreted.
- "triton": forced. On CPU tensors it requires `TRITON_INTERPRET=1` (set before Triton is
  imported) and raises a clear error otherwise.
- "torch": the reference PyTorch implementation.

Nothing here touches CUDA at import time.
"""

from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "triton", "torch")
ENV_VAR = "ESMKERNELS_BACKEND"


def default_backend() -> str:
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={value!r} is not one of {BACKENDS}")
    return value


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - triton missing on this platform
        return False
    return True


def resolve_backend(backend: str | None, *tensors: torch.Tensor | None, op: str = "op") -> str:
    """Return "triton" or "torch" for this call.

    Raises ValueError for an unknown backend, RuntimeError when "triton" is forced where it
    cannot run.
    """
    chosen = default_backend() if backend is None else str(backend).lower()
    if chosen not in BACKENDS:
        raise ValueError(f"{op}: backend={backend!r} is not one of {BACKENDS}")
    present = [t for t in tensors if t is not None]
    on_cuda = bool(present) and all(t.is_cuda for t in present)
    if chosen == "torch":
        return "torch"
    if chosen == "auto":
        return "triton" if on_cuda and triton_available() else "torch"
    # forced triton
    if not triton_available():
        raise RuntimeError(f"{op}: backend='triton' but Triton is not installed on this platform")
    if not on_cuda and not interpreting():
        raise RuntimeError(
            f"{op}: backend='triton' on CPU tensors needs the Triton interpreter: set "
            "TRITON_INTERPRET=1 in the environment before Triton is imported "
            "(or use backend='torch' / 'auto')"
        )
    return "triton"


def poison_empty(*shape, dtype, device) -> torch.Tensor:
    """torch.empty, filled with NaN when ESMKERNELS_DEBUG_POISON=1 so unwritten tiles fail tests."""
    out = torch.empty(*shape, dtype=dtype, device=device)
    if os.environ.get("ESMKERNELS_DEBUG_POISON", "0") == "1" and out.is_floating_point():
        out.fill_(float("nan"))
    return out
