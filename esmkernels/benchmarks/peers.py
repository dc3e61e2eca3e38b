"""Optional peers, found at run time: transformers (the `hf` provider) and matplotlib (plots).

The runtime never imports transformers (`tests/test_packaging.py`); the benchmarks compare
against it when it is installed, so it is looked up by name here, and its absence is a
reported gap, not an error.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from esmkernels.benchmarks.workloads import Unavailable


def has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def transformers_module(name: str = "transformers") -> ModuleType:
    """A transformers (sub)module, or Unavailable when transformers is not installed."""
    if not has("transformers"):
        raise Unavailable("transformers is not installed (pip install 'esmkernels[peer]')")
    return importlib.import_module(name)


def randomize_(module, seed: int = 0):
    """Every parameter drawn N(0, 1/fan_in) (LayerNorm weights around 1): zero-initialised
    output layers would make some branches skip nothing but compute zeros."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            fan_in = p.shape[-1] if p.dim() > 1 else 1
            noise = torch.randn(p.shape, generator=g) / fan_in**0.5
            if p.dim() == 1 and "norm" in name and name.endswith("weight"):
                noise = 1.0 + 0.1 * noise
            p.copy_(noise.to(p.dtype))
    return module
