"""Reference ESM-1b / ESM-1v / ESM-2 models in plain PyTorch (the spec), HF-compatible.

Classes (transformers' names, parameter names and outputs):

* `EsmModel`: embeddings, pre-LN transformer layers, `emb_layer_norm_after`, optional pooler;
  `predict_contacts` runs the contact head on the attention maps.
* `EsmForMaskedLM`: `lm_head` (dense, gelu, layer_norm, decoder tied to the word embeddings,
  separate bias); loss: cross-entropy over labels that are not -100.
* `EsmForSequenceClassification`: `classifier` on `<cls>` (dropout, dense, tanh, dropout,
  out_proj); MSE / cross-entropy / BCE by `config.problem_type` (inferred as HF does when None).
* `EsmForTokenClassification`: dropout and a linear `classifier`; loss ignores -100 labels.

Every `forward(input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
[labels=None,] output_attentions=None, output_hidden_states=None, return_dict=None)` returns an
output dataclass of `esmkernels.core.outputs`, or its `to_tuple()` with `return_dict=False`. Inputs
are validated before any compute (`check_inputs`).

Masks: `attention_mask` is `[B, L]` with 1 = keep, 0 = padding. When it is None and input_ids are
given it is derived from the padding token (fair-esm's behaviour; transformers would let padding
take part in attention and count it in token dropout).

Where this deliberately differs from transformers 5.x: `inputs_embeds` replaces only the token
embedding lookup (positions, LayerNorm and masking still apply, as in transformers 4.x and
fair-esm); the attention maps returned in training are those before attention dropout; contact
maps are computed in fp32; the inferred `problem_type` is not written back into the config.
As in transformers 5 (not 4.x, which ignored them), explicit `position_ids` of a rotary model are
its rotary positions.

Subclassing (the fast models in `esmkernels.models` reuse every module here): override
`layer_norm_cls` and `self_attention_cls` on a subclass of `EsmModel` (its LayerNorms and
`EsmSelfAttention.attend` are then the kernels; `encoder_cls` replaces the layer loop, e.g. to
unpad), and `base_model_cls` (plus `layer_norm_cls` for the LM head's LayerNorm) on subclasses
of the task models. A LayerNorm class should subclass `EsmLayerNorm` (same parameters, and
`_init_weights` recognises it).

Example:
    >>> import torch
    >>> from esmkernels import EsmConfig
    >>> from esmkernels.reference.esm import EsmForMaskedLM
    >>> cfg = EsmConfig(vocab_size=33, pad_token_id=1, mask_token_id=32, hidden_size=32,
    ...                 num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    ...                 position_embedding_type="rotary", token_dropout=True)
    >>> model = EsmForMaskedLM(cfg).eval()
    >>> tokens = torch.tensor([[0, 5, 32, 7, 2], [0, 8, 9, 2, 1]])
    >>> out = model(tokens, labels=torch.tensor([[-100, -100, 6, -100, -100]] * 2))
    >>> out.logits.shape, out.loss.shape, model.predict_contacts(tokens).shape
    (torch.Size([2, 5, 33]), torch.Size([]), torch.Size([2, 3, 3]))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from esmkernels.core.configuration import EsmConfig
from esmkernels.core.modeling_utils import PreTrainedMixin
from esmkernels.core.outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from esmkernels.reference.esm_layers import (
    EsmContactPredictionHead,
    EsmEmbeddings,
    EsmEncoder,
    EsmLayerNorm,
    EsmPooler,
    EsmRotaryEmbedding,
    EsmSelfAttention,
    gelu,
)


class EsmPreTrainedModel(PreTrainedMixin, nn.Module):
    """Shared base: checkpoint I/O (`PreTrainedMixin`), weight init, input validation, hooks."""

    config_class = EsmConfig
    base_model_prefix = "esm"
    # Published ESM-2 checkpoints hold no pooler: it keeps its initial values, as in HF.
    _ignore_missing = (*PreTrainedMixin._ignore_missing, r"(^|\.)pooler\.dense\.")

    # Module classes the constructors build; the fast models override them (see module doc).
    layer_norm_cls: type[nn.Module] = EsmLayerNorm
    self_attention_cls: type[nn.Module] = EsmSelfAttention
    encoder_cls: type[EsmEncoder] = EsmEncoder

    def __init__(self, config: EsmConfig):
        if not isinstance(config, EsmConfig):
            raise TypeError(
                f"{type(self).__name__} expects an EsmConfig, got {type(config).__name__}"
            )
        if config.vocab_size is None:
            raise ValueError(f"{type(self).__name__}: config.vocab_size is None")
        super().__init__()
        self.config = config

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """HF initialisation: normal(0, initializer_range) weights, zero biases (the LM head's
        own bias included), unit LayerNorm, zero padding embeddings, default rotary frequencies."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, EsmRotaryEmbedding):
            module.inv_freq.copy_(module.default_inv_freq())
        elif isinstance(module, EsmLMHead):  # its own output bias (the decoder has none)
            module.bias.zero_()

    def post_init(self, modules: list[nn.Module] | None = None) -> None:
        """Initialise the weights of `modules` (default: the whole model), then tie weights.

        Task models pass only their head: their backbone initialised itself when built."""
        for module in [self] if modules is None else modules:
            module.apply(self._init_weights)
        self.tie_weights()


def check_inputs(
    config: EsmConfig,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
) -> torch.Tensor | None:
    """Validate model inputs before any compute; return the attention mask to use.

    Raises ValueError (TypeError for non-tensors) naming the problem. The returned mask is
    `attention_mask`, or, when it is None and input_ids are given, `input_ids != pad_token_id`.
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError(
            "pass exactly one of input_ids or inputs_embeds, got "
            + ("both" if input_ids is not None else "neither")
        )
    for name, t in (
        ("input_ids", input_ids),
        ("attention_mask", attention_mask),
        ("position_ids", position_ids),
        ("inputs_embeds", inputs_embeds),
    ):
        if t is not None and not torch.is_tensor(t):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if input_ids is not None:
        if input_ids.dim() != 2:
            raise ValueError(
                f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}"
            )
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must be an integer tensor, got dtype {input_ids.dtype}")
        shape = tuple(input_ids.shape)
    else:
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.hidden_size:
            raise ValueError(
                f"inputs_embeds must be [batch, length, hidden_size={config.hidden_size}], got "
                f"shape {tuple(inputs_embeds.shape)}"
            )
        if not inputs_embeds.is_floating_point():
            raise ValueError(f"inputs_embeds must be floating point, got {inputs_embeds.dtype}")
        shape = tuple(inputs_embeds.shape[:2])
    B, L = shape
    if B == 0 or L == 0:
        raise ValueError(
            f"empty input: batch={B}, length={L}; need at least one token per sequence"
        )
    if input_ids is not None:
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= config.vocab_size:
            bad = hi if hi >= config.vocab_size else lo
            raise ValueError(f"input_ids contains token id {bad}, outside [0, {config.vocab_size})")
    if attention_mask is not None:
        if tuple(attention_mask.shape) != shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected {shape} "
                "(one entry per token, 1 = keep)"
            )
    elif input_ids is not None and config.pad_token_id is not None:
        attention_mask = input_ids.ne(config.pad_token_id)
    if attention_mask is not None:
        n_tokens = attention_mask.ne(0).sum(-1)
        empty = torch.nonzero(n_tokens == 0).flatten().tolist()
        if empty:
            raise ValueError(f"sequence(s) {empty} have no tokens (attention_mask all zero)")
    absolute = config.position_embedding_type == "absolute"
    if position_ids is not None:
        if position_ids.is_floating_point() or position_ids.dtype == torch.bool:
            raise ValueError(f"position_ids must be an integer tensor, got {position_ids.dtype}")
        if (
            position_ids.dim() != 2
            or position_ids.shape[1] != L
            or position_ids.shape[0] not in (1, B)
        ):
            raise ValueError(
                f"position_ids has shape {tuple(position_ids.shape)}, expected ({B}, {L}) or (1, {L})"
            )
        if absolute:
            lo, hi = int(position_ids.min()), int(position_ids.max())
            if lo < 0 or hi >= config.max_position_embeddings:
                raise ValueError(
                    f"position_ids contains {hi if hi >= 0 else lo}, outside [0, "
                    f"max_position_embeddings={config.max_position_embeddings})"
                )
    elif absolute:
        # Position ids run from pad + 1 to pad + n_tokens: n_tokens <= max_positions - pad - 1.
        max_tokens = config.max_position_embeddings - config.pad_token_id - 1
        if input_ids is not None:
            lengths = input_ids.ne(config.pad_token_id).sum(-1)
        else:
            lengths = torch.full((B,), L)
        longest, which = (int(x) for x in lengths.max(0))
        if longest > max_tokens:
            raise ValueError(
                f"sequence {which} has {longest} tokens, but this model (absolute positions, "
                f"max_position_embeddings={config.max_position_embeddings}) takes at most "
                f"{max_tokens} tokens including <cls> and <eos>, i.e. at most {max_tokens - 2} "
                "residues; crop or split longer sequences"
            )
    return attention_mask


class EsmModel(EsmPreTrainedModel):
    """The ESM encoder (ESM-1b, ESM-1v, ESM-2): embeddings, layers, pooler, contact head.

    `forward` returns a `BaseModelOutputWithPooling`; `predict_contacts` gives contact maps.
    Keys have no prefix here; task models hold this module as `esm`.

    Example:
        >>> model = EsmModel(cfg)  # doctest: +SKIP
        >>> model(input_ids, attention_mask=mask).last_hidden_state  # [B, L, C]  # doctest: +SKIP
    """

    def __init__(self, config: EsmConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = EsmEmbeddings(config, self.layer_norm_cls)
        self.encoder = self.encoder_cls(config, self.layer_norm_cls, self.self_attention_cls)
        self.pooler = EsmPooler(config) if add_pooling_layer else None
        self.contact_head = EsmContactPredictionHead(
            config.num_hidden_layers * config.num_attention_heads,
            bias=True,
            eos_idx=config.eos_token_id if config.eos_token_id is not None else 2,
        )
        self.register_load_state_dict_pre_hook(_shared_inv_freq_to_layers)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        """Encode a batch.

        Args:
            input_ids: [B, L] token ids (with `<cls>` first and `<eos>` last, as the tokenizer
                makes them). Or inputs_embeds: [B, L, C] replacing the token embedding lookup.
            attention_mask: [B, L], 1 = keep, 0 = padding. Default: input_ids != pad_token_id.
            position_ids: [B, L]; absolute models: embedding ids (default: padding-aware, from
                pad_token_id + 1); rotary models: rotary positions (default 0..L-1).
            output_attentions / output_hidden_states / return_dict: default from the config.

        Returns:
            BaseModelOutputWithPooling (or its `to_tuple()` when return_dict is False).
        """
        cfg = self.config
        output_attentions = (
            cfg.output_attentions if output_attentions is None else output_attentions
        )
        output_hidden_states = (
            cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = cfg.return_dict if return_dict is None else return_dict
        attention_mask = check_inputs(cfg, input_ids, attention_mask, position_ids, inputs_embeds)

        h = self.embeddings(input_ids, attention_mask, position_ids, inputs_embeds)
        rotary_positions = position_ids if cfg.position_embedding_type == "rotary" else None
        h, hidden_states, attentions = self.encoder(
            h, attention_mask, rotary_positions, output_attentions, output_hidden_states
        )
        out = BaseModelOutputWithPooling(
            last_hidden_state=h,
            pooler_output=self.pooler(h) if self.pooler is not None else None,
            hidden_states=hidden_states,
            attentions=attentions,
        )
        return out if return_dict else out.to_tuple()

    def predict_contacts(
        self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Residue-residue contact probabilities.

        tokens: [B, L] with `<cls>` first and `<eos>` after each sequence; attention_mask [B, L]
        (1 = keep; default tokens != pad). Returns [B, L - 2, L - 2] fp32; entries involving
        padding are meaningless and should be cropped by the caller.
        """
        attention_mask = check_inputs(self.config, tokens, attention_mask, None, None)
        out = self(tokens, attention_mask=attention_mask, output_attentions=True, return_dict=True)
        attentions = torch.stack(out.attentions, dim=1)  # [B, layers, H, L, L]
        # fair-esm zeroes every attention to or from padding before the head; so do we.
        keep = attention_mask.to(attentions.dtype)
        attentions = attentions * keep[:, None, None, :, None] * keep[:, None, None, None, :]
        return self.contact_head(tokens, attentions)


def _shared_inv_freq_to_layers(module, state_dict, prefix, *args) -> None:
    """Load hook: a transformers >= 5 state dict keeps one `rotary_embeddings.inv_freq` for all
    layers; copy it to each layer's buffer unless the file has per-layer values."""
    shared = state_dict.pop(f"{prefix}rotary_embeddings.inv_freq", None)
    if shared is None:
        return
    for i in range(len(module.encoder.layer)):
        key = f"{prefix}encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq"
        state_dict.setdefault(key, shared)


class EsmLMHead(nn.Module):
    """Masked-LM head: decoder(layer_norm(gelu(dense(x)))) + bias. [B, L, C] -> [B, L, V].

    `decoder.weight` is tied to the word embeddings by `EsmForMaskedLM`."""

    def __init__(self, config: EsmConfig, layer_norm_cls: type[nn.Module] = EsmLayerNorm):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = layer_norm_cls(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.layer_norm(gelu(self.dense(features)))) + self.bias


class EsmClassificationHead(nn.Module):
    """Sequence head on the first (`<cls>`) token: out_proj(dropout(tanh(dense(dropout(x))))).

    [B, L, C] -> [B, num_labels]."""

    def __init__(self, config: EsmConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.dropout(features[:, 0])
        x = self.dropout(torch.tanh(self.dense(x)))
        return self.out_proj(x)


def _check_class_labels(labels: torch.Tensor, shape: tuple[int, ...], num_classes: int) -> None:
    """Integer class labels of `shape`, each in [0, num_classes) or -100 (ignored)."""
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
    if tuple(labels.shape) != shape:
        raise ValueError(f"labels has shape {tuple(labels.shape)}, expected {shape}")
    bad = labels[(labels != -100) & ((labels < 0) | (labels >= num_classes))]
    if bad.numel():
        raise ValueError(
            f"labels contains {int(bad[0])}, outside [0, {num_classes}) (use -100 to ignore)"
        )


class _EsmTaskModel(EsmPreTrainedModel):
    """A backbone `esm` (built from `base_model_cls`, no pooler) plus a head.

    Subclasses define `head` (last hidden state [B, L, C] -> logits), `loss(logits, labels)`,
    `check_labels` (validation before any compute) and `output_cls`; `forward` is shared.
    """

    base_model_cls: type[EsmModel] = EsmModel
    output_cls: type = MaskedLMOutput

    def __init__(self, config: EsmConfig):
        super().__init__(config)
        self.esm = self.base_model_cls(config, add_pooling_layer=False)

    def head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def check_labels(self, labels: torch.Tensor, batch_shape: tuple[int, int]) -> None:
        """Raise ValueError / TypeError for labels the loss cannot use (default: no check)."""

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ):
        """Inputs as `EsmModel.forward`; `labels` as described by the class (optional).

        Returns the class's output dataclass (loss only with labels), or its `to_tuple()` when
        return_dict is False.
        """
        if labels is not None:
            if not torch.is_tensor(labels):
                raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
            ref = input_ids if input_ids is not None else inputs_embeds
            if torch.is_tensor(ref) and ref.dim() >= 2:
                self.check_labels(labels, tuple(ref.shape[:2]))
        out = self.esm(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.head(out.last_hidden_state)
        loss = None if labels is None else self.loss(logits, labels)
        result = self.output_cls(loss, logits, out.hidden_states, out.attentions)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        return result if return_dict else result.to_tuple()

    def predict_contacts(
        self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Contact probabilities [B, L - 2, L - 2]; see `EsmModel.predict_contacts`."""
        return self.esm.predict_contacts(tokens, attention_mask)


def _token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over tokens whose label is not -100. logits [B, L, K], labels [B, L]."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100
    )


class EsmForMaskedLM(_EsmTaskModel):
    """ESM with its masked-language-model head (the published ESM checkpoints).

    forward(..., labels [B, L] token ids or -100) -> MaskedLMOutput(loss, logits [B, L, V],
    hidden_states, attentions).
    """

    _tied_weights = {"lm_head.decoder.weight": "esm.embeddings.word_embeddings.weight"}
    output_cls = MaskedLMOutput

    def __init__(self, config: EsmConfig):
        super().__init__(config)
        self.lm_head = EsmLMHead(config, self.layer_norm_cls)
        self.post_init([self.lm_head])

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head.decoder

    def head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden_states)

    def check_labels(self, labels: torch.Tensor, batch_shape: tuple[int, int]) -> None:
        _check_class_labels(labels, batch_shape, self.config.vocab_size)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return _token_cross_entropy(logits, labels)


class EsmForSequenceClassification(_EsmTaskModel):
    """ESM with a classification / regression head on the `<cls>` token.

    forward(..., labels) -> SequenceClassifierOutput(loss, logits [B, num_labels],
    hidden_states, attentions). The loss follows `config.problem_type`: "regression" (MSE; labels
    [B] or [B, num_labels] values), "single_label_classification" (cross-entropy; labels [B] class
    ids, -100 ignored) or "multi_label_classification" (BCE with logits; labels [B, num_labels]
    in [0, 1]). When it is None: regression for num_labels == 1, single-label for integer labels,
    else multi-label (the config is not modified).
    """

    output_cls = SequenceClassifierOutput

    def __init__(self, config: EsmConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.classifier = EsmClassificationHead(config)
        self.post_init([self.classifier])

    def head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.classifier(hidden_states)

    def problem_type(self, labels: torch.Tensor) -> str:
        if self.config.problem_type is not None:
            return self.config.problem_type
        if self.num_labels == 1:
            return "regression"
        if not labels.is_floating_point():
            return "single_label_classification"
        return "multi_label_classification"

    def check_labels(self, labels: torch.Tensor, batch_shape: tuple[int, int]) -> None:
        B, n = batch_shape[0], self.num_labels
        kind = self.problem_type(labels)
        if kind == "single_label_classification":
            _check_class_labels(labels.reshape(-1) if labels.dim() == 2 else labels, (B,), n)
        elif labels.numel() != B * n:
            raise ValueError(
                f"labels has shape {tuple(labels.shape)}, expected ({B}, {n}) for {kind}"
            )

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        B, n = logits.shape
        kind = self.problem_type(labels)
        if kind == "single_label_classification":
            return F.cross_entropy(logits.float(), labels.reshape(-1))
        target = labels.reshape(B, n).float()
        if kind == "regression":
            return F.mse_loss(logits.float(), target)
        return F.binary_cross_entropy_with_logits(logits.float(), target)


class EsmForTokenClassification(_EsmTaskModel):
    """ESM with a per-token linear classifier.

    forward(..., labels [B, L] class ids or -100) -> TokenClassifierOutput(loss,
    logits [B, L, num_labels], hidden_states, attentions).
    """

    output_cls = TokenClassifierOutput

    def __init__(self, config: EsmConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init([self.classifier])

    def head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(hidden_states))

    def check_labels(self, labels: torch.Tensor, batch_shape: tuple[int, int]) -> None:
        _check_class_labels(labels, batch_shape, self.num_labels)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return _token_cross_entropy(logits, labels)


__all__ = [
    "EsmClassificationHead",
    "EsmForMaskedLM",
    "EsmForSequenceClassification",
    "EsmForTokenClassification",
    "EsmLMHead",
    "EsmModel",
    "EsmPreTrainedModel",
    "check_inputs",
]
