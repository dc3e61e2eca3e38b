"""Whole language-model forward (ESM-2), esmkernels vs the reference and transformers.

Cases per length L (tokens incl. <cls>/<eos>):

- `uniform`: B = tokens // L sequences of L - 2 residues (real: 8 x 1024 at L = 1024);
- `skewed`: `skewed_seqs` sequences of 50..L-2 residues (seeded), padded to L, as a proteome
  batch: the fast model unpads them, the peers compute on the padding.

Providers: `reference` (esmkernels.reference, eager), `torch` (the fast model with its torch
backend: SDPA), `triton` (the fast model with the kernels), `hf` (transformers' EsmForMaskedLM,
SDPA attention). All providers of a size load the same random weights. Inference (fwd) only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from esmkernels.benchmarks.kernels import check_triton, skewed_lengths
from esmkernels.benchmarks.peers import transformers_module
from esmkernels.benchmarks.workloads import Unavailable, Workload

PROVIDERS = ("reference", "torch", "triton", "hf")
CASES = ("uniform", "skewed")
PAD, CLS, EOS, MASK = 1, 0, 2, 32

# Published ESM-2 configurations (facebook/esm2_t*): hidden, layers, heads, intermediate.
SHAPES = {
    "esm2_8M": (320, 6, 20, 1280),
    "esm2_35M": (480, 12, 20, 1920),
    "esm2_150M": (640, 30, 20, 2560),
    "esm2_650M": (1280, 33, 20, 5120),
    "esm2_3B": (2560, 36, 40, 10240),
    "tiny": (32, 2, 2, 64),
}


@dataclass(frozen=True)
class Sizes:
    shape: str
    tokens: int
    skewed_seqs: int
    lengths: tuple[int, ...]


SIZES = {
    "real": Sizes("esm2_650M", 8192, 64, (256, 512, 1024)),
    # A CPU run that shows a trend in seconds: ESM-2 8M, 512 tokens per batch, L up to 512.
    "cpu": Sizes("esm2_8M", 512, 4, (32, 64, 128, 256, 512)),
    "tiny": Sizes("tiny", 64, 3, (16, 32)),
}


def config_kwargs(shape: str) -> dict:
    """EsmConfig / transformers.EsmConfig keywords of an ESM-2 shape (no dropout)."""
    hidden, layers, heads, inter = SHAPES[shape]
    return dict(
        vocab_size=33,
        pad_token_id=PAD,
        mask_token_id=MASK,
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


def make_batch(lengths: list[int], width: int, device, seed: int = 0):
    """(input_ids [B, width], attention_mask [B, width]): <cls> residues <eos>, right padded."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.full((len(lengths), width), PAD)
    for b, n in enumerate(lengths):
        tokens[b, 0], tokens[b, n + 1] = CLS, EOS
        tokens[b, 1 : n + 1] = torch.randint(4, 24, (n,), generator=g)
    return tokens.to(device), tokens.ne(PAD).long().to(device)


def batch_lengths(case: str, L: int, s: Sizes) -> list[int]:
    """Residues per sequence for a case at token length L."""
    if case == "uniform":
        return [L - 2] * max(1, s.tokens // L)
    return skewed_lengths(s.skewed_seqs, L - 2)


class Models:
    """One model at a time (the large ones do not fit together), all with the same weights."""

    def __init__(self, shape: str, device: torch.device, dtype: torch.dtype):
        self.shape, self.device, self.dtype = shape, device, dtype
        self._state = None
        self._current: tuple[str, torch.nn.Module] | None = None

    def state(self) -> dict:
        if self._state is None:
            from esmkernels.core.configuration import EsmConfig
            from esmkernels.reference.esm import EsmForMaskedLM

            torch.manual_seed(0)
            with torch.device(self.device):  # initialised where it runs: fast on a GPU
                model = EsmForMaskedLM(EsmConfig(**config_kwargs(self.shape)))
            self._state = model.state_dict()
        return self._state

    def get(self, provider: str) -> torch.nn.Module:
        if self._current is not None and self._current[0] == provider:
            return self._current[1]
        self._current = None
        from esmkernels.core.memory import free_memory

        free_memory(self.device)
        model = self.build(provider)
        self._current = (provider, model)
        return model

    def build(self, provider: str, dtype: torch.dtype | None = None) -> torch.nn.Module:
        """A new model of `provider` with the shared weights, in `dtype` (default: the
        instance's), in eval mode; not cached. Raises Unavailable (transformers absent, ...)."""
        with torch.device(self.device):
            return self._build(provider, self.dtype if dtype is None else dtype)

    def _build(self, provider: str, dtype: torch.dtype) -> torch.nn.Module:
        from esmkernels.core.configuration import EsmConfig

        config = EsmConfig(**config_kwargs(self.shape))
        if provider == "hf":
            transformers = transformers_module()
            hf_config = transformers.EsmConfig(**config_kwargs(self.shape))
            hf_config._attn_implementation = "sdpa"
            model = transformers.EsmForMaskedLM(hf_config)
            model.load_state_dict(self.state(), strict=False)
            return model.to(self.device, dtype).eval()
        if provider == "reference":
            from esmkernels.reference.esm import EsmForMaskedLM

            model = EsmForMaskedLM(config)
        else:
            from esmkernels.models.esm import EsmForMaskedLM

            if provider == "triton":
                check_triton(self.device)
            model = EsmForMaskedLM(config, backend=provider)
        model.load_state_dict(self.state())
        return model.to_device_dtype(device=self.device, dtype=dtype).eval()


def build(case: str, provider: str, length: int, *, models: Models, size: str) -> Workload:
    """The forward of one LM case; raises Unavailable."""
    if case not in CASES:
        raise ValueError(f"unknown lm case {case!r}; choose from {CASES}")
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; choose from {PROVIDERS}")
    if length < 3:
        raise Unavailable(f"L={length}: needs room for <cls>, a residue and <eos>")
    lengths = batch_lengths(case, length, SIZES[size])
    tokens, mask = make_batch(lengths, length, models.device)
    model = models.get(provider)
    hidden, layers, _, inter = SHAPES[models.shape]
    real = int(mask.sum())
    # 2 flops per weight per real token (attention scores not counted): a lower bound.
    flops = 2.0 * real * layers * (4 * hidden * hidden + 2 * hidden * inter)

    def forward():
        if provider == "hf":
            return model(input_ids=tokens, attention_mask=mask).logits
        return model(tokens, attention_mask=mask).logits

    meta = {"shape": models.shape, "batch": len(lengths), "padded_tokens": tokens.numel()}
    return Workload(forward, flops=flops, tokens=real, meta=meta)
