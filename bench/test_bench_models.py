"""Whole-model forward benchmarks: fast ESM-2 (`esmkernels.models.esm`) vs transformers' ESM.

GPU (bf16, inference): ESM-2 650M and 3B shapes with random weights, on
* "uniform": B=8 sequences of 1022 residues (L=1024 tokens, no padding);
* "skewed": 64 sequences with lengths drawn uniformly from 50..1022 (seed 0), padded to 1024,
  as in a real proteome.
Providers: `esmkernels` (Triton kernels, unpadded), `hf-sdpa` and `hf-eager` (transformers'
`EsmForMaskedLM` with that attention implementation, the same weights, in the same process).

CPU (fp32): ESM-2 8M shape, B=4 sequences of 100..200 residues; `esmkernels` with the torch
backend against the same transformers providers, so the CPU ratio can be read off.

extra_info: `real_tokens`, `tokens_per_s` (real tokens / median time), `peak_memory_mb` (CUDA,
allocated, from just before the timed calls), `padded_tokens`.
"""

from __future__ import annotations

import gc

import pytest
import torch

from bench.conftest import peak_memory_mb, run_or_record_oom
from esmkernels.configuration import EsmConfig
from esmkernels.models import esm as fast

PAD, CLS, EOS = 1, 0, 2

# Published ESM-2 configurations (facebook/esm2_t*): hidden, layers, heads, intermediate.
SHAPES = {
    "esm2_8M": (320, 6, 20, 1280),
    "esm2_650M": (1280, 33, 20, 5120),
    "esm2_3B": (2560, 36, 40, 10240),
}
PROVIDERS = ("esmkernels", "hf-sdpa", "hf-eager")


def on_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def config_kwargs(shape: str) -> dict:
    hidden, layers, heads, inter = SHAPES[shape]
    return dict(
        vocab_size=33,
        pad_token_id=PAD,
        mask_token_id=32,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        position_embedding_type="rotary",
        token_dropout=True,
        emb_layer_norm_before=False,
        layer_norm_eps=1e-5,
        max_position_embeddings=1026,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def make_batch(kind: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [B, L], attention_mask [B, L]) with `<cls>`/`<eos>` and right padding."""
    g = torch.Generator().manual_seed(0)
    if kind == "uniform":
        lengths = [1022] * 8
    elif kind == "skewed":
        lengths = torch.randint(50, 1023, (64,), generator=g).tolist()
    else:  # "cpu-mixed"
        lengths = torch.randint(100, 201, (4,), generator=g).tolist()
    L = max(lengths) + 2 if kind == "cpu-mixed" else 1024
    tokens = torch.full((len(lengths), L), PAD)
    for b, n in enumerate(lengths):
        tokens[b, 0], tokens[b, n + 1] = CLS, EOS
        tokens[b, 1 : n + 1] = torch.randint(4, 24, (n,), generator=g)
    return tokens.to(device), tokens.ne(PAD).long().to(device)


_CACHE: dict[tuple, torch.nn.Module] = {}


def get_model(provider: str, shape: str, device: torch.device, dtype: torch.dtype):
    """One model at a time (the 3B ones do not fit together with others); same weights for all
    providers of a shape (seeded init)."""
    key = (provider, shape, str(device), dtype)
    if key not in _CACHE:
        _CACHE.clear()
        gc.collect()
        if on_cuda(device):
            torch.cuda.empty_cache()
        torch.manual_seed(0)
        with torch.device(device):
            ours = fast.EsmForMaskedLM(
                EsmConfig(**config_kwargs(shape)), backend=None if on_cuda(device) else "torch"
            )
        if provider == "esmkernels":
            model = ours
        else:
            transformers = pytest.importorskip("transformers")
            hf_config = transformers.EsmConfig(**config_kwargs(shape))
            hf_config._attn_implementation = provider.removeprefix("hf-")
            with torch.device(device):
                model = transformers.EsmForMaskedLM(hf_config)
            model.load_state_dict(ours.state_dict(), strict=False)
            del ours
        if provider == "esmkernels":
            model.to_device_dtype(dtype=dtype)  # keeps rotary inv_freq in fp32, as from_pretrained
        else:
            model.to(dtype)
        _CACHE[key] = model.eval()
    return _CACHE[key]


def run(benchmark, provider, shape, kind, device, dtype, sync):
    model = get_model(provider, shape, device, dtype)
    tokens, mask = make_batch(kind, device)

    def forward():
        with torch.inference_mode():
            if provider == "esmkernels":
                out = model(tokens, attention_mask=mask).logits
            else:
                out = model(input_ids=tokens, attention_mask=mask).logits
        sync()
        return out

    forward()  # compile / warm up outside the measurement
    if on_cuda(device):
        torch.cuda.reset_peak_memory_stats()
    run_or_record_oom(benchmark, forward)
    real = int(mask.sum())
    benchmark.extra_info.update(
        provider=provider,
        shape=shape,
        batch=kind,
        dtype=str(dtype).removeprefix("torch."),
        real_tokens=real,
        padded_tokens=tokens.numel(),
        tokens_per_s=real / benchmark.stats.stats.median,
        peak_memory_mb=peak_memory_mb(device),
    )


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("kind", ["uniform", "skewed"])
@pytest.mark.parametrize("shape", ["esm2_650M", "esm2_3B"])
def test_forward_gpu_bf16(benchmark, bench_device, sync, shape, kind, provider):
    if not on_cuda(bench_device):
        pytest.skip("real ESM-2 shapes run on CUDA only")
    run(benchmark, provider, shape, kind, bench_device, torch.bfloat16, sync)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_forward_cpu_fp32_esm2_8m(benchmark, bench_device, sync, provider):
    """CPU ratio: esmkernels (backend torch) vs transformers, fp32, ESM-2 8M, mixed lengths."""
    if on_cuda(bench_device):
        pytest.skip("the CPU comparison runs on CPU-only machines")
    run(benchmark, provider, "esm2_8M", "cpu-mixed", bench_device, torch.float32, sync)
