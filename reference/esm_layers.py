"""Building blocks of the reference ESM-1b / ESM-1v / ESM-2 language model (plain PyTorch).

The model classes that assemble them are in `esmkernels.reference.esm`. Module and parameter
names are transformers' (`EsmModel`), so an HF state dict, a published v4 checkpoint or a
converted fair-esm checkpoint loads unchanged:

    embeddings.word_embeddings              [V, C]
    embeddings.position_embeddings          [P, C]      absolute positions only (ESM-1b/1v)
    embeddings.layer_norm                   [C]         `emb_layer_norm_before` (ESM-1b/1v)
    encoder.layer.{i}.attention.LayerNorm   [C]         pre-LN of the attention block
    encoder.layer.{i}.attention.self.{query,key,value}
    encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq  [D/2] fp32 (ESM-2)
    encoder.layer.{i}.attention.output.dense
    encoder.layer.{i}.LayerNorm             [C]         pre-LN of the feed-forward block
    encoder.layer.{i}.intermediate.dense    [F, C]
    encoder.layer.{i}.output.dense          [C, F]
    encoder.emb_layer_norm_after            [C]
    pooler.dense, contact_head.regression   [1, layers * heads]

One layer (Vaswani et al. 2017 with pre-LayerNorm, as in ESM; Rives et al. 2021, Lin et al. 2023):

    h = x + W_o · Attention(LN_1(x))                  softmax((q / sqrt(D)) k^T) v, per head
    y = h + W_2 · gelu(W_1 · LN_2(h))                 gelu with the exact erf

ESM-2 applies rotary embeddings to q (after the 1/sqrt(D) scaling) and k; ESM-1b/1v add learned
absolute position embeddings instead, with position ids counting non-pad tokens from
`padding_idx + 1` (fairseq convention). ESM-2 rescales embeddings for `<mask>` tokens ("token
dropout", see `EsmEmbeddings`). The rotary `inv_freq` is a per-layer persistent buffer:
checkpoints store the values used in training (rounded through fp16) and they are loaded, never
recomputed.

Masks are `[B, L]` with 1 = keep (a real token), 0 = padding.

Hooks for the fast models: `EsmSelfAttention.attend` is the whole attention core, and every
LayerNorm is an instance of the `layer_norm_cls` passed down from the model (an `EsmLayerNorm`
here).

Example:
    >>> import torch
    >>> from esmkernels import EsmConfig
    >>> cfg = EsmConfig(vocab_size=33, pad_token_id=1, hidden_size=32, num_hidden_layers=1,
    ...                 num_attention_heads=4, intermediate_size=64,
    ...                 position_embedding_type="rotary")
    >>> layer = EsmLayer(cfg).eval()
    >>> out, probs = layer(torch.randn(2, 7, 32), torch.ones(2, 7), output_attentions=True)
    >>> out.shape, probs.shape
    (torch.Size([2, 7, 32]), torch.Size([2, 4, 7, 7]))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from esmkernels.core.configuration import EsmConfig
from esmkernels.reference.functional import layer_norm, rotary_attention

# Fraction of tokens replaced by <mask> during ESM training (15% selected, 80% of those masked).
MASK_RATIO_TRAIN = 0.15 * 0.8


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU with the exact error function, as ESM was trained (not the tanh approximation)."""
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def symmetrize(x: torch.Tensor) -> torch.Tensor:
    """x + x^T over the last two dimensions. x: [..., L, L]."""
    return x + x.transpose(-1, -2)


def average_product_correct(x: torch.Tensor) -> torch.Tensor:
    """Average product correction (Dunn et al. 2008): x_ij - (sum_i x_ij)(sum_j x_ij) / sum x.

    x: [..., L, L] -> [..., L, L]. Removes the background coupling shared by all pairs.
    """
    row = x.sum(-1, keepdim=True)
    col = x.sum(-2, keepdim=True)
    total = x.sum((-1, -2), keepdim=True)
    return x - row * col / total


def absolute_position_ids(input_ids: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """fairseq positions: non-pad tokens count up from padding_idx + 1, pads get padding_idx.

    input_ids: [B, L] -> [B, L] int64. Batch-invariant: a sequence's ids do not depend on padding.
    """
    keep = input_ids.ne(padding_idx).long()
    return torch.cumsum(keep, dim=1) * keep + padding_idx


class EsmLayerNorm(nn.LayerNorm):
    """LayerNorm over the last dimension with fp32 statistics (`reference.functional.layer_norm`).

    x: [..., C] -> [..., C] in x.dtype. Same parameters (`weight`, `bias`) as `nn.LayerNorm`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps)


class EsmEmbeddings(nn.Module):
    """Token embedding, token-dropout rescaling, absolute positions and optional LayerNorm.

    Steps, for input_ids [B, L] (or inputs_embeds [B, L, C]):
    1. e = word_embeddings(input_ids).
    2. Token dropout (ESM-2, when `config.token_dropout` and input_ids are given): rows of `<mask>`
       tokens are zeroed and every sequence is scaled by (1 - 0.15 * 0.8) / (1 - r), r the
       sequence's observed fraction of `<mask>` among its real tokens (attention_mask == 1).
       An all-`<mask>` sequence (r = 1, possible only without special tokens) stays finite
       (zeros), where transformers and fair-esm give NaN.
    3. Absolute models add position_embeddings(position_ids).
    4. `emb_layer_norm_before` models apply `layer_norm`.
    5. Padding rows are zeroed (multiplied by attention_mask).
    """

    def __init__(self, config: EsmConfig, layer_norm_cls: type[nn.Module] = EsmLayerNorm):
        super().__init__()
        self.padding_idx = config.pad_token_id
        self.mask_token_id = config.mask_token_id
        self.token_dropout = bool(config.token_dropout)
        self.position_embedding_type = config.position_embedding_type
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=self.padding_idx
        )
        if self.position_embedding_type == "absolute":
            if self.padding_idx is None:
                raise ValueError(
                    "EsmEmbeddings: absolute position embeddings need config.pad_token_id "
                    "(position ids start at pad_token_id + 1); got None"
                )
            self.position_embeddings = nn.Embedding(
                config.max_position_embeddings, config.hidden_size, padding_idx=self.padding_idx
            )
        self.layer_norm = (
            layer_norm_cls(config.hidden_size, eps=config.layer_norm_eps)
            if config.emb_layer_norm_before
            else None
        )

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids [B, L] int or inputs_embeds [B, L, C]; attention_mask [B, L] (1 = keep);
        position_ids [B, L] absolute ids (default: from the padding) -> [B, L, C]."""
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if self.token_dropout and input_ids is not None:
            is_mask = input_ids.eq(self.mask_token_id)
            x = x.masked_fill(is_mask[..., None], 0.0)
            if attention_mask is not None:
                n_tokens = attention_mask.sum(-1)
            else:
                n_tokens = torch.full_like(input_ids[:, 0], input_ids.shape[1])
            ratio_observed = is_mask.sum(-1).float() / n_tokens
            # A sequence of nothing but <mask> (no <cls>/<eos>) has r = 1: HF and fair-esm give
            # 0 * inf = NaN there; its embeddings are all zero anyway, so keep them finite.
            kept = (1 - ratio_observed).clamp_min(torch.finfo(torch.float32).tiny)
            x = (x * (1 - MASK_RATIO_TRAIN) / kept[:, None, None]).to(x.dtype)
        if self.position_embedding_type == "absolute":
            if position_ids is None:
                position_ids = self.default_position_ids(input_ids, inputs_embeds)
            x = x + self.position_embeddings(position_ids)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        if attention_mask is not None:
            x = (x * attention_mask[..., None]).to(x.dtype)
        return x

    def default_position_ids(
        self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None
    ) -> torch.Tensor:
        """[B, L] absolute position ids: from the padding of input_ids, else padding_idx + 1 + i."""
        if input_ids is not None:
            return absolute_position_ids(input_ids, self.padding_idx)
        B, L = inputs_embeds.shape[:2]
        pos = torch.arange(L, device=inputs_embeds.device) + self.padding_idx + 1
        return pos.expand(B, L)


class EsmRotaryEmbedding(nn.Module):
    """Holds the rotary inverse frequencies `inv_freq` [D/2] (fp32, persistent buffer).

    Initialised to 1 / theta^(2j / D); a checkpoint's stored values replace them on load.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        self.head_dim = head_dim
        self.theta = float(theta)
        self.register_buffer("inv_freq", self.default_inv_freq(), persistent=True)

    def default_inv_freq(self) -> torch.Tensor:
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim
        return 1.0 / (self.theta**exponent)


class EsmSelfAttention(nn.Module):
    """Multi-head self-attention; q, k, v projections and the attention core `attend`."""

    def __init__(self, config: EsmConfig):
        super().__init__()
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.head_dim
        self.all_head_size = config.hidden_size
        self.query = nn.Linear(config.hidden_size, self.all_head_size)
        self.key = nn.Linear(config.hidden_size, self.all_head_size)
        self.value = nn.Linear(config.hidden_size, self.all_head_size)
        self.dropout_prob = float(config.attention_probs_dropout_prob)
        self.rotary_embeddings = (
            EsmRotaryEmbedding(config.head_dim, config.rope_theta)
            if config.position_embedding_type == "rotary"
            else None
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states [B, L, C] -> (context [B, L, C], probabilities [B, H, L, L] or None)."""
        B, L, _ = hidden_states.shape
        shape = (B, L, self.num_attention_heads, self.attention_head_size)
        q = self.query(hidden_states).view(shape)
        k = self.key(hidden_states).view(shape)
        v = self.value(hidden_states).view(shape)
        out, probs = self.attend(q, k, v, attention_mask, position_ids, output_attentions)
        return out.reshape(B, L, self.all_head_size), probs

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_padding_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        output_attentions: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The attention core; the one method a fast model overrides.

        q, k, v: [B, L, H, D] unscaled projections. key_padding_mask: [B, L], 1 = keep (None: all
        kept). position_ids: [B, L] or [1, L] rotary positions (None: 0..L-1; unused without
        rotary). Computes softmax(rot(q / sqrt(D)) rot(k)^T + mask) v with attention-probability
        dropout in training. Returns (out [B, L, H, D], probs [B, H, L, L] fp32 before dropout,
        or None unless output_attentions).
        """
        inv_freq = None if self.rotary_embeddings is None else self.rotary_embeddings.inv_freq
        result = rotary_attention(
            q,
            k,
            v,
            inv_freq=inv_freq,
            position_ids=position_ids,
            key_padding_mask=key_padding_mask,
            return_probs=output_attentions,
            dropout_p=self.dropout_prob if self.training else 0.0,
            training=self.training,
        )
        return result if output_attentions else (result, None)


class _DenseDropoutResidual(nn.Module):
    """dropout(dense(x)) + residual: [B, L, in_features] -> [B, L, hidden_size]."""

    def __init__(self, in_features: int, config: EsmConfig):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(hidden_states)) + residual


class EsmSelfOutput(_DenseDropoutResidual):
    """Attention output projection, dropout and residual."""

    def __init__(self, config: EsmConfig):
        super().__init__(config.hidden_size, config)


class EsmAttention(nn.Module):
    """Pre-LN attention block: x + dropout(W_o attention(LayerNorm(x)))."""

    def __init__(
        self,
        config: EsmConfig,
        layer_norm_cls: type[nn.Module] = EsmLayerNorm,
        self_attention_cls: type[nn.Module] = EsmSelfAttention,
    ):
        super().__init__()
        self.self = self_attention_cls(config)
        self.output = EsmSelfOutput(config)
        self.LayerNorm = layer_norm_cls(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        context, probs = self.self(
            self.LayerNorm(hidden_states), attention_mask, position_ids, output_attentions
        )
        return self.output(context, hidden_states), probs


class EsmIntermediate(nn.Module):
    """Feed-forward up-projection and exact GELU: [B, L, C] -> [B, L, intermediate_size]."""

    def __init__(self, config: EsmConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return gelu(self.dense(hidden_states))


class EsmOutput(_DenseDropoutResidual):
    """Feed-forward down-projection, dropout and residual."""

    def __init__(self, config: EsmConfig):
        super().__init__(config.intermediate_size, config)


class EsmLayer(nn.Module):
    """One pre-LN transformer layer: attention block, then feed-forward block. [B, L, C]."""

    def __init__(
        self,
        config: EsmConfig,
        layer_norm_cls: type[nn.Module] = EsmLayerNorm,
        self_attention_cls: type[nn.Module] = EsmSelfAttention,
    ):
        super().__init__()
        self.attention = EsmAttention(config, layer_norm_cls, self_attention_cls)
        self.intermediate = EsmIntermediate(config)
        self.output = EsmOutput(config)
        self.LayerNorm = layer_norm_cls(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        h, probs = self.attention(hidden_states, attention_mask, position_ids, output_attentions)
        return self.output(self.intermediate(self.LayerNorm(h)), h), probs


class EsmEncoder(nn.Module):
    """The layer stack and the final `emb_layer_norm_after`.

    With `gradient_checkpointing = True` and in training, each layer's activations are recomputed
    in the backward pass (torch.utils.checkpoint, non-reentrant).
    """

    def __init__(
        self,
        config: EsmConfig,
        layer_norm_cls: type[nn.Module] = EsmLayerNorm,
        self_attention_cls: type[nn.Module] = EsmSelfAttention,
    ):
        super().__init__()
        self.layer = nn.ModuleList(
            EsmLayer(config, layer_norm_cls, self_attention_cls)
            for _ in range(config.num_hidden_layers)
        )
        self.emb_layer_norm_after = layer_norm_cls(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple | None, tuple | None]:
        """hidden_states [B, L, C] -> (last [B, L, C], all hidden states or None, all
        attention probabilities or None). The last hidden state is after emb_layer_norm_after."""
        all_hidden: list[torch.Tensor] = []
        all_probs: list[torch.Tensor] = []
        use_checkpoint = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layer:
            if output_hidden_states:
                all_hidden.append(hidden_states)
            args = (hidden_states, attention_mask, position_ids, output_attentions)
            if use_checkpoint:
                hidden_states, probs = checkpoint(layer, *args, use_reentrant=False)
            else:
                hidden_states, probs = layer(*args)
            if output_attentions:
                all_probs.append(probs)
        hidden_states = self.emb_layer_norm_after(hidden_states)
        if output_hidden_states:
            all_hidden.append(hidden_states)
        return (
            hidden_states,
            tuple(all_hidden) if output_hidden_states else None,
            tuple(all_probs) if output_attentions else None,
        )


class EsmPooler(nn.Module):
    """tanh(dense(first token)): [B, L, C] -> [B, C]."""

    def __init__(self, config: EsmConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden_states[:, 0]))


class EsmContactPredictionHead(nn.Module):
    """Contact probabilities from stacked attention maps (Rao et al. 2021).

    Attentions to and from `<eos>` are zeroed and the first (`<cls>`) and last rows/columns are
    dropped; each of the layers * heads maps is symmetrized and average-product corrected, and a
    logistic regression over those features gives the probability of each residue pair.
    """

    def __init__(self, in_features: int, bias: bool = True, eos_idx: int = 2):
        super().__init__()
        self.in_features = in_features
        self.eos_idx = eos_idx
        self.regression = nn.Linear(in_features, 1, bias)

    def forward(self, tokens: torch.Tensor, attentions: torch.Tensor) -> torch.Tensor:
        """tokens [B, L]; attentions [B, layers, H, L, L] (padding rows/cols zeroed) ->
        contacts [B, L - 2, L - 2] in fp32 (or the attentions' dtype if wider)."""
        dtype = torch.promote_types(attentions.dtype, torch.float32)
        keep = tokens.ne(self.eos_idx).to(dtype)
        pair = keep[:, :, None] * keep[:, None, :]
        a = attentions.to(dtype) * pair[:, None, None]
        a = a[..., 1:-1, 1:-1]
        B, n_layers, n_heads, n, _ = a.shape
        features = average_product_correct(symmetrize(a.reshape(B, n_layers * n_heads, n, n)))
        logits = F.linear(
            features.permute(0, 2, 3, 1),
            self.regression.weight.to(dtype),
            None if self.regression.bias is None else self.regression.bias.to(dtype),
        )
        return torch.sigmoid(logits.squeeze(-1))
