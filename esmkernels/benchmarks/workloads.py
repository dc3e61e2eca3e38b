"""What a suite hands the runner: one callable per (case, provider, length), plus its size.

A suite's `build(case, provider, length, spec)` returns a `Workload` or raises `Unavailable`
(a provider that cannot run here, e.g. torch.compile on CPU or transformers absent); the
runner records the reason and goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

MODES = ("fwd", "bwd", "fwd+bwd")


class Unavailable(Exception):
    """This provider cannot run this case here; the message says why."""


@dataclass
class Workload:
    """forward() -> output tensor; `leaves` get gradients in the bwd modes.

    flops / nbytes: per forward (the minimum HBM traffic for nbytes); the backward counts
    2.5x the forward's flops and `bwd_bytes` (default 2x) its bytes. tokens: real tokens (or
    residues) per call, for tokens/s.
    """

    forward: Callable[[], torch.Tensor]
    leaves: Sequence[torch.Tensor] = ()
    flops: float | None = None
    nbytes: float | None = None
    bwd_bytes: float | None = None
    tokens: int | None = None
    meta: dict = field(default_factory=dict)

    def callable_for(self, mode: str) -> Callable[[], object]:
        """The function to time for `mode` (fwd under no_grad; bwd reuses one graph)."""
        if mode == "fwd":

            def fwd():
                with torch.no_grad():
                    return self.forward()

            return fwd
        if not self.leaves:
            raise Unavailable(f"{mode}: nothing here takes gradients")
        if mode == "fwd+bwd":

            def fwd_bwd():
                out = self.forward()
                return torch.autograd.grad(out, self.leaves, torch.ones_like(out))

            return fwd_bwd
        out = self.forward()
        grad = torch.randn_like(out)

        def bwd():
            return torch.autograd.grad(out, self.leaves, grad, retain_graph=True)

        return bwd

    def work(self, mode: str) -> tuple[float | None, float | None]:
        """(flops, bytes) of one call in `mode`."""
        fwd_bytes, bwd_bytes = self.nbytes, self.bwd_bytes
        if bwd_bytes is None and fwd_bytes is not None:
            bwd_bytes = 2 * fwd_bytes
        flops = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}[mode]
        flops = None if self.flops is None else flops * self.flops
        nbytes = {
            "fwd": fwd_bytes,
            "bwd": bwd_bytes,
            "fwd+bwd": None if fwd_bytes is None else fwd_bytes + bwd_bytes,
        }[mode]
        return flops, nbytes
