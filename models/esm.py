"""Fast ESM-1b / ESM-1v / ESM-2 language models: the reference modules with kernel cores.

Classes (same names, constructor, `forward` signature, outputs, state-dict keys and loaders as
`esmkernels.reference.esm`, which they subclass): `EsmModel`, `EsmForMaskedLM`,
`EsmForSequenceClassification`, `EsmForTokenClassification`. Every non-kernel part (embeddings,
heads, pooler, contact head, checkpoint I/O, input validation) is the reference's own code; this
module overrides only:

* `EsmLayerNorm.forward` -> `esmkernels.ops.layer_norm` (fused, fp32 statistics);
* `EsmSelfAttention.attend` -> `esmkernels.ops.rotary_attention` (fused rotary
  flash attention; no rotary for absolute-position ESM-1b / ESM-1v);
* `EsmEncoder.forward` -> unpadding around the reference layer loop.

Unpadding. After the (padded) embeddings, the real tokens (attention_mask != 0) of a `[B, L, C]`
batch are gathered into `[1, T, C]`, T = number of real tokens, and every layer (LayerNorms,
projections, feed-forward, varlen attention over `cu_seqlens`) runs on those T tokens only; the
last hidden state (and every `hidden_states` entry) is scattered back to `[B, L, C]` at the end.
Rotary positions are each token's column in the padded input (or the caller's `position_ids`), so
results equal the reference for any mask, left padding and holes included. Positions that are
padding hold **zeros** in the fast models' hidden states (the reference holds values computed
from padding there, which mean nothing); heads run on the re-padded states, so logits at padding
are the head applied to zeros. Losses are unaffected when padding labels are -100, as data
collators make them.

CPU inference. Without gradients (`torch.no_grad` / `torch.inference_mode`) on the torch path,
the packed layers run in `esmkernels.models.packed_cpu` (per-sequence attention, no FLOP on
padding in the layers; fused QKV GEMM; oneDNN matmuls, AMX or AVX-512 BF16 where the CPU has
them), in fp32 or bf16.
`from_pretrained(..., quantize="int8")` (or `quantize_for_inference("int8")`) makes the layers'
linears int8 for CPU inference (`esmkernels.models.quantize`); such a model refuses training.

Exact path. A call with `output_attentions=True` (also `predict_contacts`) runs padded through the
reference attention (`reference.functional.rotary_attention`), for that call only, so the
returned probability maps are the reference's. So does training with attention dropout > 0
(`attention_probs_dropout_prob`): the kernels have no dropout, and that call is as slow as the
reference. LayerNorm kernels are used in both cases.

Backends. `backend=None | "auto" | "triton" | "torch"` (constructor keyword, or the `backend`
attribute at any time; None reads the environment variable `ESMKERNELS_BACKEND`) is passed to
every op call. "torch" is the plain-PyTorch path of each op (works on CPU).

Precision: `from_pretrained(..., dtype=torch.bfloat16)`, `.to(dtype)` and autocast work; LayerNorm
statistics, softmax statistics and rotary angles are fp32 inside the ops. Prefer
`from_pretrained(dtype=...)` or `model.to_device_dtype(dtype=...)` to a bare `.to(dtype)`: they
keep the rotary `inv_freq` buffers in fp32, which `.to` would round to the half dtype.

Training: gradients flow through every kernel; `gradient_checkpointing_enable()` recomputes each
packed layer in the backward pass (torch.utils.checkpoint, non-reentrant; it takes transformers'
`gradient_checkpointing_kwargs`, so `transformers.Trainer(..., gradient_checkpointing=True)` works).
PEFT LoRA on `query` / `key` / `value` wraps the projections the kernels are fed from.

torch.compile: every layer traces without a graph break (the ops are `torch.library` custom
ops); `torch.compile(model)` breaks only before the first layer, where input checks and the
unpadding (`PackedBatch.from_mask`: `nonzero` and the longest length) read the batch on the host.

Example:
    >>> import torch
    >>> from esmkernels import EsmConfig
    >>> from esmkernels.models.esm import EsmForMaskedLM
    >>> cfg = EsmConfig(vocab_size=33, pad_token_id=1, mask_token_id=32, hidden_size=32,
    ...                 num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    ...                 position_embedding_type="rotary", token_dropout=True)
    >>> model = EsmForMaskedLM(cfg, backend="torch").eval()
    >>> tokens = torch.tensor([[0, 5, 32, 7, 2], [0, 8, 9, 2, 1]])
    >>> model(tokens).logits.shape
    torch.Size([2, 5, 33])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from esmkernels.core.tokenization import EsmTokenizer
from esmkernels.core.variants import score_variants as _score_variants
from esmkernels.models import packed_cpu, quantize
from esmkernels.ops import layer_norm, rotary_attention
from esmkernels.ops._dispatch import check_backend, resolve
from esmkernels.reference import esm as ref
from esmkernels.reference import esm_layers as ref_layers


@dataclass
class PackedBatch:
    """Where the real tokens of a padded `[B, L]` batch sit once packed to `[T]`.

    Passed down the reference layers in place of the attention mask, so `EsmSelfAttention.attend`
    knows to run varlen attention.

    Fields:
        indices: [T] int64 flat indices (b * L + l) of the real tokens, row-major.
        cu_seqlens: [B + 1] int32 offsets of each sequence in the packed tokens.
        max_seqlen: the longest sequence (python int).
        position_ids: [T] rotary positions (column index, or the caller's ids), None without
            rotary.
        shape: (B, L) of the padded batch.
    """

    indices: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    position_ids: torch.Tensor | None
    shape: tuple[int, int]

    @classmethod
    def from_mask(
        cls, attention_mask: torch.Tensor, position_ids: torch.Tensor | None, rotary: bool
    ) -> PackedBatch:
        """attention_mask [B, L] (1 = keep); position_ids [B, L] / [1, L] rotary ids or None."""
        keep = attention_mask.ne(0)
        B, L = keep.shape
        lengths = keep.sum(1, dtype=torch.int32)
        cu_seqlens = torch.zeros(B + 1, dtype=torch.int32, device=keep.device)
        cu_seqlens[1:] = lengths.cumsum(0)
        indices = keep.reshape(-1).nonzero().squeeze(1)
        positions = None
        if rotary:
            if position_ids is None:
                positions = indices % L
            else:
                positions = position_ids.expand(B, L).reshape(-1).index_select(0, indices)
        return cls(indices, cu_seqlens, int(lengths.max()), positions, (B, L))

    @property
    def all_kept(self) -> bool:
        return self.indices.numel() == self.shape[0] * self.shape[1]

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, C] -> [1, T, C] (real tokens only)."""
        return x.reshape(-1, x.shape[-1]).index_select(0, self.indices)[None]

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """[1, T, C] -> [B, L, C], zeros at padding."""
        B, L = self.shape
        flat = x.new_zeros(B * L, x.shape[-1]).index_copy(0, self.indices, x[0])
        return flat.view(B, L, x.shape[-1])


class KernelModule:
    """Mixin of the modules whose forward calls an `esmkernels.ops` op with their `backend`.

    A model's `backend` setter reaches every such module (no list of classes kept by hand): a
    module accelerated by a new op inherits this and passes `self.backend` to the op."""

    backend: str | None = None


class EsmLayerNorm(KernelModule, ref_layers.EsmLayerNorm):
    """The reference LayerNorm (same parameters) computed by the fused kernel.

    x: [..., C] -> [..., C] in x.dtype, fp32 statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps, backend=self.backend)


class EsmSelfAttention(KernelModule, ref_layers.EsmSelfAttention):
    """The reference self-attention (same projections) whose core is the fused kernel."""

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_padding_mask: torch.Tensor | PackedBatch | None,
        position_ids: torch.Tensor | None,
        output_attentions: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As `reference.esm_layers.EsmSelfAttention.attend`, plus the packed mode.

        Packed: key_padding_mask is a `PackedBatch` and q, k, v are [1, T, H, D]; attention runs
        per sequence over `cu_seqlens`. Padded with probabilities requested or attention dropout
        active: the reference core. Otherwise the padded kernel.
        """
        exact = output_attentions or (self.training and self.dropout_prob > 0)
        inv_freq = None if self.rotary_embeddings is None else self.rotary_embeddings.inv_freq
        if isinstance(key_padding_mask, PackedBatch) and exact:
            raise RuntimeError(
                "internal: packed attention cannot return probabilities or apply dropout"
            )
        if exact:
            return super().attend(q, k, v, key_padding_mask, position_ids, output_attentions)
        out = fused_attention(q, k, v, key_padding_mask, position_ids, inv_freq, self.backend)
        return out, None


def fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | PackedBatch | None,
    position_ids: torch.Tensor | None,
    inv_freq: torch.Tensor | None,
    backend: str | None,
) -> torch.Tensor:
    """The fused attention core of an ESM layer, padded or packed.

    Padded: q, k, v [B, L, H, D] unscaled projections; key_padding_mask [B, L] (1 = keep) or None;
    position_ids [B, L] / [1, L] rotary positions or None (0..L-1). Packed: q, k, v [1, T, H, D]
    and key_padding_mask a `PackedBatch` (which carries the positions); attention runs per
    sequence over its `cu_seqlens`. inv_freq: [D/2] rotary frequencies, None without rotary.
    Returns the context in q's shape.
    """
    inv_freq = None if inv_freq is None else inv_freq.float()
    if isinstance(key_padding_mask, PackedBatch):
        pack = key_padding_mask
        out = rotary_attention(
            q[0],
            k[0],
            v[0],
            inv_freq=inv_freq,
            position_ids=pack.position_ids,
            cu_seqlens=pack.cu_seqlens,
            max_seqlen=pack.max_seqlen,
            backend=backend,
        )
        return out[None]
    if position_ids is not None and position_ids.shape[0] == 1 < q.shape[0]:
        position_ids = position_ids[0]  # [1, L] shared by the batch: the op takes [L]
    return rotary_attention(
        q,
        k,
        v,
        inv_freq=inv_freq,
        position_ids=position_ids,
        key_padding_mask=key_padding_mask,
        backend=backend,
    )


def _packed_inference(core: EsmSelfAttention | None, hidden_states: torch.Tensor) -> bool:
    """Whether the packed inference stack (`models/packed_cpu.py`) runs: no gradients wanted and
    the torch path chosen for these tensors (the CPU, or backend="torch")."""
    if core is None or torch.is_grad_enabled():
        return False
    return resolve(core.backend, hidden_states) == "torch"


class EsmEncoder(ref_layers.EsmEncoder):
    """The reference layer stack, run on packed real tokens (see the module docstring).

    Set `unpad = False` on an instance to run padded (the kernels with a key mask) instead.
    """

    unpad: bool = True

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple | None, tuple | None]:
        """hidden_states [B, L, C] padded -> (last [B, L, C], hidden states, attentions), as the
        reference; positions that are padding hold zeros when the batch was unpadded."""
        core = self.layer[0].attention.self if len(self.layer) else None
        dropout = self.training and core is not None and core.dropout_prob > 0
        if output_attentions or dropout or not self.unpad or attention_mask is None:
            return super().forward(
                hidden_states, attention_mask, position_ids, output_attentions, output_hidden_states
            )
        rotary = core is not None and core.rotary_embeddings is not None
        pack = PackedBatch.from_mask(attention_mask, position_ids, rotary)
        if _packed_inference(core, hidden_states):
            h, hidden = packed_cpu.encoder_forward(
                self,
                pack.unpad(hidden_states)[0],
                pack.cu_seqlens,
                pack.position_ids,
                output_hidden_states,
            )
            hidden = None if hidden is None else tuple(pack.pad(t[None]) for t in hidden)
            return pack.pad(h[None]), hidden, None
        if pack.all_kept:  # nothing to remove: the padded kernel needs no mask and no gather
            return super().forward(hidden_states, None, position_ids, False, output_hidden_states)
        h, hidden, _ = super().forward(
            pack.unpad(hidden_states), pack, None, False, output_hidden_states
        )
        hidden = None if hidden is None else tuple(pack.pad(t) for t in hidden)
        return pack.pad(h), hidden, None


class _FastMixin:
    """Kernel module classes for the reference constructors, and the `backend` switch."""

    layer_norm_cls = EsmLayerNorm
    encoder_cls = EsmEncoder
    self_attention_cls = EsmSelfAttention

    def _init_backend(self, backend: str | None) -> None:
        self.backend = backend

    @classmethod
    def from_pretrained(cls, path_or_id, *args, backend: str | None = None, **kwargs):
        """`PreTrainedMixin.from_pretrained`, plus `backend` for the loaded model."""
        check_backend(backend)
        quantize.check_method(kwargs.get("quantize"))
        model = super().from_pretrained(path_or_id, *args, **kwargs)
        model.backend = backend
        return model

    def quantize_for_inference(self, method: str = "int8"):
        """Quantize this model in place for CPU inference (`models/quantize.py`); returns it.
        Afterwards `.train()` and `requires_grad_(True)` raise RuntimeError."""
        return quantize.quantize_for_inference(self, method)

    def train(self, mode: bool = True):
        if mode:
            quantize.refuse_training(self, "train()")
        return super().train(mode)

    def requires_grad_(self, requires_grad: bool = True):
        if requires_grad:
            quantize.refuse_training(self, "requires_grad_(True)")
        return super().requires_grad_(requires_grad)

    def activation_checkpointing_enable(
        self,
        activation_checkpointing_kwargs: dict | None = None,
        every_n_layers: int = 1,
        offload: bool = False,
    ) -> None:
        """Recompute each layer in the backward pass, with transformers' signature, so
        `transformers.Trainer(..., gradient_checkpointing=True)` works on these classes.

        The recomputation is always non-reentrant (`torch.utils.checkpoint(...,
        use_reentrant=False)`, which also works with frozen inputs, as under PEFT); the kwargs may
        hold "use_reentrant" (ignored). Only every_n_layers=1 and offload=False are supported.
        """
        unknown = set(activation_checkpointing_kwargs or {}) - {"use_reentrant"}
        if unknown:
            raise TypeError(
                f"activation_checkpointing_kwargs: unsupported keys {sorted(unknown)} (only "
                "use_reentrant is accepted; recomputation is non-reentrant)"
            )
        if every_n_layers != 1 or offload:
            raise ValueError(
                f"every_n_layers={every_n_layers!r}, offload={offload!r}: only every layer, "
                "without offloading, is supported"
            )
        super().gradient_checkpointing_enable()

    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict | None = None, **kwargs
    ) -> None:
        """transformers' older name for `activation_checkpointing_enable`."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def activation_checkpointing_disable(self) -> None:
        self.gradient_checkpointing_disable()

    @property
    def backend(self) -> str | None:
        """The backend every op of this model is called with (None: env ESMKERNELS_BACKEND)."""
        return self.__dict__.get("_backend")

    @backend.setter
    def backend(self, value: str | None) -> None:
        value = check_backend(value)
        for module in self.modules():  # type: ignore[attr-defined]
            if isinstance(module, _FastMixin):
                module.__dict__["_backend"] = value
            elif isinstance(module, KernelModule):
                module.backend = value


class EsmModel(_FastMixin, ref.EsmModel):
    """Fast `EsmModel` (kernels, unpadded batches); API as `esmkernels.reference.esm.EsmModel`.

    Args:
        config: EsmConfig.
        add_pooling_layer: build the pooler (as the reference).
        backend: None | "auto" | "triton" | "torch" for every op call.

    Example:
        >>> model = EsmModel.from_pretrained("facebook/esm2_t6_8M_UR50D")  # doctest: +SKIP
        >>> model(input_ids, attention_mask=mask).last_hidden_state  # [B, L, C]  # doctest: +SKIP
    """

    def __init__(self, config, add_pooling_layer: bool = True, *, backend: str | None = None):
        check_backend(backend)
        super().__init__(config, add_pooling_layer)
        self._init_backend(backend)


class _FastTaskMixin(_FastMixin):
    base_model_cls = EsmModel

    def __init__(self, config, *, backend: str | None = None):
        check_backend(backend)
        super().__init__(config)
        self._init_backend(backend)


class EsmForMaskedLM(_FastTaskMixin, ref.EsmForMaskedLM):
    """Fast `EsmForMaskedLM`; API as `esmkernels.reference.esm.EsmForMaskedLM`, plus
    `score_variants` (ESM-1v scoring)."""

    def head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The LM head [B, L, C] -> [B, L, V]; in packed CPU inference on the real rows only
        (`packed_cpu.rows_head`: padding rows, all zero, get the head of zeros as before)."""
        layers = self.esm.encoder.layer
        if _packed_inference(layers[0].attention.self if len(layers) else None, hidden_states):
            return packed_cpu.rows_head(self.lm_head, hidden_states)
        return super().head(hidden_states)

    def score_variants(
        self,
        sequence: str,
        mutations: str | Sequence[str],
        method: str = "masked-marginals",
        tokenizer: EsmTokenizer | None = None,
        batch_size: int = 32,
    ) -> torch.Tensor:
        """Log-likelihood-ratio scores of `mutations` (e.g. "A42G", "A42G:S50T") of `sequence`.

        See `esmkernels.core.variants.score_variants`; `tokenizer` defaults to the ESM vocabulary.
        Returns [len(mutations)] float32 on the CPU.

        Example:
            >>> model.score_variants("MKTAYIAK", ["K2A", "T3G:A4C"])  # doctest: +SKIP
            tensor([-1.2031, -3.0245])
        """
        if tokenizer is None:
            tokenizer = EsmTokenizer()
            if len(tokenizer) != self.config.vocab_size:
                raise ValueError(
                    f"this model has vocab_size={self.config.vocab_size}, the default ESM "
                    f"tokenizer has {len(tokenizer)} tokens: pass tokenizer="
                )
        return _score_variants(self, tokenizer, sequence, mutations, method, batch_size=batch_size)


class EsmForSequenceClassification(_FastTaskMixin, ref.EsmForSequenceClassification):
    """Fast `EsmForSequenceClassification`; API as the reference class."""


class EsmForTokenClassification(_FastTaskMixin, ref.EsmForTokenClassification):
    """Fast `EsmForTokenClassification`; API as the reference class."""


__all__ = [
    "EsmEncoder",
    "EsmForMaskedLM",
    "EsmForSequenceClassification",
    "EsmForTokenClassification",
    "EsmLayerNorm",
    "EsmModel",
    "EsmSelfAttention",
    "KernelModule",
    "PackedBatch",
    "fused_attention",
]
