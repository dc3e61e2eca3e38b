"""Tiny stand-ins for the reference ESM classes, with HF's key structure, for checkpoint tests.

They compute nothing useful; they only own parameters and buffers under the names transformers'
`EsmModel` / `EsmForMaskedLM` use, so the loader's key handling can be tested without the
reference models.
"""

from __future__ import annotations

import torch
from torch import nn

from esmkernels.core.configuration import EsmConfig
from esmkernels.core.modeling_utils import PreTrainedMixin


def tiny_config(**overrides) -> EsmConfig:
    values = dict(
        vocab_size=33,
        mask_token_id=32,
        pad_token_id=1,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        position_embedding_type="rotary",
        token_dropout=True,
        emb_layer_norm_before=False,
        layer_norm_eps=1e-5,
    )
    values.update(overrides)
    return EsmConfig(**values)


class _Rotary(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)))


class _SelfAttention(nn.Module):
    def __init__(self, config: EsmConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)
        if config.position_embedding_type == "rotary":
            self.rotary_embeddings = _Rotary(config.head_dim)


class _Attention(nn.Module):
    def __init__(self, config: EsmConfig) -> None:
        super().__init__()
        self.self = _SelfAttention(config)
        self.output = nn.Module()
        self.output.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size)


class _Layer(nn.Module):
    def __init__(self, config: EsmConfig) -> None:
        super().__init__()
        self.attention = _Attention(config)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.output = nn.Module()
        self.output.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size)
        self.gradient_checkpointing = False


class TinyEsmModel(PreTrainedMixin, nn.Module):
    """Base model: `embeddings.*`, `encoder.layer.N.*`, `contact_head.*` (no pooler)."""

    def __init__(self, config: EsmConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(config.vocab_size, h)
        if config.position_embedding_type == "absolute":
            self.embeddings.position_embeddings = nn.Embedding(config.max_position_embeddings, h)
        if config.emb_layer_norm_before:
            self.embeddings.layer_norm = nn.LayerNorm(h)
        self.embeddings.register_buffer(
            "position_ids", torch.arange(config.max_position_embeddings)[None], persistent=False
        )
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(_Layer(config) for _ in range(config.num_hidden_layers))
        self.encoder.emb_layer_norm_after = nn.LayerNorm(h)
        self.contact_head = nn.Module()
        self.contact_head.regression = nn.Linear(
            config.num_hidden_layers * config.num_attention_heads, 1
        )
        self.post_init()


class TinyEsmForMaskedLM(PreTrainedMixin, nn.Module):
    """Head model: `esm.*` plus `lm_head.{dense,layer_norm,decoder,bias}`, decoder tied."""

    _tied_weights = {"lm_head.decoder.weight": "esm.embeddings.word_embeddings.weight"}

    def __init__(self, config: EsmConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.esm = TinyEsmModel(config)
        self.lm_head = nn.Module()
        self.lm_head.dense = nn.Linear(h, h)
        self.lm_head.layer_norm = nn.LayerNorm(h)
        self.lm_head.decoder = nn.Linear(h, config.vocab_size, bias=False)
        self.lm_head.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.post_init()


class TinyEsmSharedRotary(PreTrainedMixin, nn.Module):
    """Base model with ONE model-level `rotary_embeddings.inv_freq` (transformers v5 layout)."""

    def __init__(self, config: EsmConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.rotary_embeddings = _Rotary(config.head_dim)
        self.encoder = nn.Module()
        cfg = EsmConfig(**{**config.to_dict(), "position_embedding_type": "absolute"})
        self.encoder.layer = nn.ModuleList(_Layer(cfg) for _ in range(config.num_hidden_layers))
        self.encoder.emb_layer_norm_after = nn.LayerNorm(config.hidden_size)
        self.contact_head = nn.Module()
        self.contact_head.regression = nn.Linear(
            config.num_hidden_layers * config.num_attention_heads, 1
        )


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every parameter and floating buffer with distinct random values (in place)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        for b in model.buffers():
            if b.is_floating_point():
                # inv_freq rounded through fp16, like the trained ESM-2 checkpoints
                b.copy_((torch.rand(b.shape, generator=g) + 0.01).half().float())
    return model
