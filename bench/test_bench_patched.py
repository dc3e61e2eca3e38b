"""Patched transformers vs unpatched transformers (pytest-benchmark): `esmkernels.accelerate`.

The question a transformers user asks: how much faster does my own `EsmForMaskedLM` get with
one line? Both providers are transformers' `EsmForMaskedLM` with the same random weights:

- `hf`: as transformers builds it (SDPA attention, padded batch);
- `patched`: the same model after `esmkernels.accelerate(model)` (backend "auto": the Triton
  kernels on CUDA, the fast models' PyTorch path on a CPU; unpadded batches).

Modes: `fwd` (inference) and `lora` (one LoRA training step on query / key / value with AdamW:
forward, backward, optimizer step; needs peft). Cases: a length-skewed batch (50..L-2 residues,
padded to L, as `esmkernels.benchmarks.lm`) and a uniform one.

Shapes: ESM-2 650M in bf16 at L = 1024 on a GPU; ESM-2 8M in fp32 at L = 256 on a CPU (the issue's
CPU target is the patched/unpatched time ratio on the skewed batch, <= 1.0). extra_info: real
tokens, tokens/s, peak memory (CUDA). Targets live in the issue, not in assertions.
"""

from __future__ import annotations

import pytest
import torch

from bench.conftest import on_gpu, peak_memory_mb, run_or_record_oom
from esmkernels.benchmarks import lm
from esmkernels.benchmarks.kernels import skewed_lengths

transformers = pytest.importorskip("transformers")

GPU = on_gpu()
SHAPE, L, SEQS, DTYPE = (
    ("esm2_650M", 1024, 64, torch.bfloat16) if GPU else ("esm2_8M", 256, 8, torch.float32)
)
PROVIDERS = ("hf", "patched")
CASES = ("skewed", "uniform")
MODES = ("fwd", "lora")
_BUILT: dict = {}


def _lengths(case: str) -> list[int]:
    if case == "uniform":
        return [L - 2] * SEQS
    return skewed_lengths(SEQS, L - 2)


def _model(provider: str, device: torch.device, mode: str) -> torch.nn.Module:
    """transformers' EsmForMaskedLM with seeded random weights (the same for every provider)."""
    key = (provider, mode)
    if key not in _BUILT:
        _BUILT.clear()  # one model at a time: the GPU shape is large
        torch.manual_seed(0)
        with torch.device(device):
            model = transformers.EsmForMaskedLM(transformers.EsmConfig(**lm.config_kwargs(SHAPE)))
        model.to(DTYPE)
        if provider == "patched":
            import esmkernels

            esmkernels.accelerate(model)
        if mode == "lora":
            peft = pytest.importorskip("peft")
            config = peft.LoraConfig(r=8, target_modules=["query", "key", "value"])
            model = peft.get_peft_model(model, config).train()
        else:
            model.eval()
        _BUILT[key] = model
    return _BUILT[key]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES)
def test_bench_patched_transformers(benchmark, bench_device, sync, case, mode, provider):
    benchmark.group = f"patched-{mode}-{case}-L{L}"
    lengths = _lengths(case)
    tokens, mask = lm.make_batch(lengths, L, bench_device)
    model = _model(provider, bench_device, mode)
    benchmark.extra_info.update(
        suite="patched", case=case, mode=mode, provider=provider, L=L, shape=SHAPE,
        dtype=str(DTYPE), tokens=int(mask.sum()),
    )  # fmt: skip
    if mode == "fwd":

        def step():
            with torch.no_grad():
                model(input_ids=tokens, attention_mask=mask)
            sync()

    else:
        labels = torch.where(mask.bool(), tokens, -100)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])

        def step():
            loss = model(input_ids=tokens, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync()

    step()  # warm-up: autotuning and allocations outside the measurement
    if bench_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run_or_record_oom(benchmark, step)
    benchmark.extra_info.update(
        tokens_per_s=int(mask.sum()) / benchmark.stats.stats.median,
        peak_memory_mb=peak_memory_mb(bench_device),
    )
