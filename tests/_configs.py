"""One builder for the tiny language-model configs the tests use (ESM-2 or ESM-1b style)."""

from __future__ import annotations

from esmkernels.core.configuration import EsmConfig

BASE = dict(
    vocab_size=33,
    pad_token_id=1,
    mask_token_id=32,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    layer_norm_eps=1e-5,
)
STYLES = {
    # ESM-2: rotary positions, token dropout, no embedding LayerNorm.
    "esm2": dict(position_embedding_type="rotary", token_dropout=True, emb_layer_norm_before=False),
    # ESM-1b / ESM-1v: learned absolute positions, embedding LayerNorm.
    "esm1b": dict(
        position_embedding_type="absolute", token_dropout=False, emb_layer_norm_before=True
    ),
}


def tiny_lm_values(style: str = "esm2", **overrides) -> dict:
    """Config keyword values: BASE, then the style's, then `overrides`."""
    return {**BASE, **STYLES[style], **overrides}


def tiny_lm_config(style: str = "esm2", **overrides) -> EsmConfig:
    return EsmConfig(**tiny_lm_values(style, **overrides))
