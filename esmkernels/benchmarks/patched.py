"""Patched vs unpatched transformers: what `esmkernels.accelerate(model)` buys a transformers user.

Both providers are transformers' `EsmForMaskedLM` with the same seeded random weights:

- `hf`: as transformers builds it (SDPA attention, padded batch);
- `patched`: the same model after `esmkernels.accelerate(model)` (backend "auto": the Triton
  kernels on CUDA, the fast models' PyTorch path on a CPU; unpadded batches).

Modes: `fwd` (inference) and `lora` (one LoRA training step on query / key / value with AdamW:
forward, backward, optimizer step; needs peft). Cases: a length-skewed batch (50..L-2 residues,
padded to L, as the `lm` suite's) and a uniform one (L-2 residues each).

Sizes: `real` is ESM-2 650M in bf16 at L = 1024, 64 sequences; `tiny` ESM-2 8M in fp32 at
L = 256, 8 sequences (the CPU target: the patched/unpatched time ratio on the skewed batch).
`bench/test_bench_patched.py` times these with pytest-benchmark.

Example:
    >>> model = build_model("patched", "fwd", "tiny", "cpu")  # doctest: +SKIP
    >>> step, tokens = build("skewed", "fwd", model=model, size="tiny", device="cpu")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from esmkernels.benchmarks import lm
from esmkernels.benchmarks.kernels import skewed_lengths
from esmkernels.benchmarks.peers import has, transformers_module
from esmkernels.benchmarks.workloads import Unavailable

PROVIDERS = ("hf", "patched")
CASES = ("skewed", "uniform")
MODES = ("fwd", "lora")

__all__ = ["CASES", "MODES", "PROVIDERS", "SIZES", "Sizes", "build", "build_model", "lengths"]


@dataclass(frozen=True)
class Sizes:
    shape: str  # an `lm.SHAPES` name
    length: int  # padded length L, <cls> and <eos> included
    sequences: int
    dtype: torch.dtype


SIZES = {
    "real": Sizes("esm2_650M", 1024, 64, torch.bfloat16),
    "tiny": Sizes("esm2_8M", 256, 8, torch.float32),
}


def lengths(case: str, size: str) -> list[int]:
    """Residues of each sequence of the batch."""
    s = SIZES[size]
    if case == "uniform":
        return [s.length - 2] * s.sequences
    if case == "skewed":
        return skewed_lengths(s.sequences, s.length - 2)
    raise ValueError(f"unknown case {case!r}; choose from {CASES}")


def build_model(provider: str, mode: str, size: str, device) -> torch.nn.Module:
    """transformers' EsmForMaskedLM (seed 0), patched for "patched", with LoRA for "lora"."""
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; choose from {PROVIDERS}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
    transformers = transformers_module()
    s = SIZES[size]
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.EsmForMaskedLM(transformers.EsmConfig(**lm.config_kwargs(s.shape)))
    model.to(s.dtype)
    if provider == "patched":
        import esmkernels

        esmkernels.accelerate(model)
    if mode == "fwd":
        return model.eval()
    if not has("peft"):
        raise Unavailable("the lora mode needs peft (pip install peft)")
    import peft

    config = peft.LoraConfig(r=8, target_modules=["query", "key", "value"])
    return peft.get_peft_model(model, config).train()


def build(
    case: str, mode: str, *, model: torch.nn.Module, size: str, device
) -> tuple[Callable[[], None], int]:
    """(one step of `mode` on the case's batch, its real tokens). The step does not
    synchronize the device: the caller times it and synchronizes."""
    tokens, mask = lm.make_batch(lengths(case, size), SIZES[size].length, torch.device(device))
    if mode == "fwd":

        def step():
            with torch.no_grad():
                model(input_ids=tokens, attention_mask=mask)

    else:
        labels = torch.where(mask.bool(), tokens, -100)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])

        def step():
            loss = model(input_ids=tokens, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step, int(mask.sum())
