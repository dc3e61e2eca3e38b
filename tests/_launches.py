"""Prove which path a test ran: count Triton kernel launches by name, spot torch fallbacks, and
pick the tiles the autotuned kernels run with.

A "triton" test that only compares outputs with the reference passes just as well when the op
quietly takes its PyTorch path (the path the reference is made of). So:

- `launches()` counts every launch of every `@triton.jit` kernel by the kernel's name, at the
  one place all launches go through (the interpreter's `InterpretedFunction.run`, or the
  compiled `JITFunction.run` on a GPU), so it holds however the launchers are wrapped (autotune,
  torch custom ops). It also counts calls of each op's torch path (`FALLBACKS`); `no_fallback`
  and `expect` assert on both.
- `tiles(BLOCK_M=16, BLOCK_N=32)` runs every autotuned kernel whose tile parameters are all
  given with exactly that tile (restored afterwards). Under the interpreter every kernel has one
  small default tile; GPU configs are rectangular, so a tile mix-up (stepping a loop by
  BLOCK_M instead of BLOCK_N) only shows with BLOCK_M != BLOCK_N, in both orders.

Run the reference outside `launches()`: the trunk reference ops are the same functions as the
trunk kernels' torch path.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
import triton
from triton.runtime.autotuner import Autotuner
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

from esmkernels.ops._dispatch import interpreting

# The torch path of each op: (module, attribute) called when an op does not launch its kernels.
FALLBACKS = {
    "layer_norm": ("esmkernels.reference.functional", "layer_norm"),
    "rotary_attention_padded": ("esmkernels.ops.rotary.torch_path", "padded"),
    "rotary_attention_varlen": ("esmkernels.ops.rotary.torch_path", "varlen"),
    "axial_attention": ("esmkernels.reference.esmfold.trunk_functional", "axial_attention"),
    "triangle_multiplicative_update": (
        "esmkernels.reference.esmfold.trunk_functional",
        "triangle_multiplicative_update",
    ),
    "triangle_multiplicative_update_lean": ("esmkernels.ops.trimul.torch_path", "lean_update"),
}

# Kernel names (the @triton.jit function names) of each op.
LAYER_NORM = ("_layer_norm_fwd_kernel", "_layer_norm_bwd_kernel")
ROTARY_FWD = ("_rotary_attention_fwd_kernel",)
ROTARY_BWD = (
    "_rotary_attention_bwd_preprocess_kernel",
    "_rotary_attention_bwd_dkdv_kernel",
    "_rotary_attention_bwd_dq_kernel",
)
AXIAL_FWD = ("_axial_attn_fwd_kernel",)
AXIAL_BWD = (
    "_axial_attn_bwd_pre_kernel",
    "_axial_attn_bwd_dkdv_kernel",
    "_axial_attn_bwd_dq_kernel",
)
AXIAL_DBIAS = ("_axial_attn_bwd_dbias_kernel",)
TRIMUL_FWD = ("_trimul_proj_kernel", "_trimul_contract_kernel", "_trimul_out_kernel")


class Launches:
    """Kernel launches (`kernels`) and torch-path calls (`fallbacks`), by name, since entry."""

    def __init__(self) -> None:
        self.kernels: Counter[str] = Counter()
        self.fallbacks: Counter[str] = Counter()

    def no_fallback(self) -> None:
        assert not self.fallbacks, f"the torch path ran: {dict(self.fallbacks)}"

    def expect(self, *names: str, exactly: int | None = None, at_least: int = 1) -> None:
        """Each kernel in `names` launched `exactly` times (or `at_least` times); no fallback."""
        self.no_fallback()
        for name in names:
            got = self.kernels[name]
            if exactly is not None:
                assert got == exactly, f"{name}: {got} launches, expected {exactly}: {self}"
            else:
                assert got >= at_least, f"{name}: {got} launches, expected >= {at_least}: {self}"

    def __repr__(self) -> str:
        return f"Launches(kernels={dict(self.kernels)}, fallbacks={dict(self.fallbacks)})"


def _kernel_name(fn) -> str:
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) else fn.fn.__name__


@contextmanager
def launches() -> Iterator[Launches]:
    """Count kernel launches and torch-path calls inside the block (see the module docstring)."""
    seen = Launches()
    with ExitStack() as stack:
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        for cls in (InterpretedFunction, JITFunction):
            run = cls.run

            def counted(self, *args, _run=run, **kwargs):
                seen.kernels[_kernel_name(self)] += 1
                return _run(self, *args, **kwargs)

            mp.setattr(cls, "run", counted)
        for label, (module_name, attr) in FALLBACKS.items():
            module = importlib.import_module(module_name)
            real = getattr(module, attr)  # AttributeError: FALLBACKS is out of date

            def spy(*args, _real=real, _label=label, **kwargs):
                seen.fallbacks[_label] += 1
                return _real(*args, **kwargs)

            mp.setattr(module, attr, spy)
        yield seen


def autotuned_kernels() -> dict[str, Autotuner]:
    """Every autotuned kernel of esmkernels.ops, by kernel name."""
    import esmkernels.ops as ops

    found: dict[str, Autotuner] = {}
    for info in pkgutil.walk_packages(ops.__path__, ops.__name__ + "."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if isinstance(value, Autotuner):
                found[_kernel_name(value.fn)] = value
    return found


@contextmanager
def tiles(**blocks: int) -> Iterator[list[str]]:
    """Run each autotuned kernel whose tile parameters are all in `blocks` with that one tile.

    Yields the names of the kernels it applies to (at least one, or it raises). On a GPU the
    tile must be one `tl.dot` accepts (every dimension >= 16)."""
    saved = []
    try:
        for name, tuner in sorted(autotuned_kernels().items()):
            params = set(tuner.configs[0].kwargs)
            if not params or not params <= set(blocks):
                continue
            warps = 1 if interpreting() else 4
            config = triton.Config({p: blocks[p] for p in params}, num_warps=warps, num_stages=1)
            saved.append((name, tuner, tuner.configs, dict(tuner.cache)))
            tuner.configs = [config]
            tuner.cache.clear()
        if not saved:
            raise ValueError(
                f"tiles{blocks}: no autotuned kernel has exactly these tile parameters"
            )
        yield [name for name, *_ in saved]
    finally:
        for _, tuner, configs, cache in saved:
            tuner.configs = configs
            tuner.cache.clear()
            tuner.cache.update(cache)
