"""Speed up transformers' own ESM models: `patch_transformers()` and `accelerate(model)`.

`accelerate(model)` converts one existing transformers ESM model in place (and returns it);
`patch_transformers()` makes every ESM model that transformers builds afterwards come out
accelerated (`from_pretrained` included), until `unpatch_transformers()`. Parameters, state-dict
keys, module names, configs and outputs stay transformers', so `Trainer`, PEFT (LoRA on
`query` / `key` / `value`), `save_pretrained`, `gradient_checkpointing_enable()` and adapters
saved against transformers class names keep working.

What is swapped, per flag:

- `attention`: each `EsmLayer` runs its self-attention through the fused rotary flash attention
  (`esmkernels.ops.rotary_attention`; rotary applied inside the kernel, fp32 angles), calling
  the layer's own `query` / `key` / `value` / `output` modules (so LoRA wrappers on them run).
- `unpad` (needs `attention`): the layers run on the real tokens only: the padded `[B, L, C]`
  batch is packed to `[T, C]` once before the first layer and scattered back after the last
  (`EsmEncoder`), attention runs varlen over `cu_seqlens`. When hidden states are requested the
  packing happens around each layer instead, so every recorded hidden state is `[B, L, C]`.
- `layer_norm`: every `nn.LayerNorm` (and ESMFold's `EsmFoldLayerNorm`) of the model runs the
  fused LayerNorm kernel (fp32 statistics), with the same parameters.
- `trunk`: ESMFold's triangle multiplications, triangle attentions (starting / ending node, with
  transformers' `chunk_size`) and the trunk's sequence attention run the fused trunk kernels, via
  the reference trunk's own forward functions (`esmkernels.reference.esmfold.trunk`).

Each swap changes the module's class to a subclass of transformers' class (same name, same
attributes; `isinstance` still holds) whose `forward` is ours and falls back to transformers'
`forward` for anything it does not handle. A call with `output_attentions=True` (also
`predict_contacts`), in training with `attention_probs_dropout_prob > 0`, with a `head_mask`,
cross-attention, or an attention mask that is not `[B, L]`, runs transformers' own attention for
that call (LayerNorms stay fused).

Padded positions: with `unpad`, positions that are padding are not computed; the hidden states
there are zeros (or the final LayerNorm of zeros), not transformers' values computed from the
padding, and logits there are the head applied to them. Real positions, pooled outputs of
right-padded batches, losses with padding labels -100 (as data collators make them), contacts
and ESMFold's outputs at real residues equal transformers' within the kernels' tolerances.
With `unpad=False` the padded kernel attends over real keys only, as transformers does, so
padded positions match too. ESMFold's sequence attention returns no attention maps (transformers'
trunk discards them).

Versions: detected by capability, never by version string. The rotary frequencies are read from
each layer (`attention.self.rotary_embeddings`, transformers 4.x) or from the model
(`EsmModel.rotary_embeddings`, transformers 5.x, which also honours `position_ids`); layers must
return a tensor (the hook-recorded outputs of transformers >= 4.54). A layout without these
raises a RuntimeError naming the transformers version and the missing piece.

`import esmkernels` never imports transformers; these functions import it when called.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import types
from typing import Any

import torch
from torch import nn

from esmkernels.models.esm import PackedBatch, fused_attention
from esmkernels.models.esmfold import KernelTrunkOps
from esmkernels.ops import layer_norm
from esmkernels.ops._dispatch import check_backend
from esmkernels.reference.esmfold import trunk as ref_trunk

# Keyword under which the per-call plan travels from `EsmModel.forward` to the encoder and layers
# through transformers' own `**kwargs` plumbing.
CONTEXT_KEY = "esmkernels_context"


@dataclasses.dataclass(frozen=True)
class Options:
    """What `accelerate` swaps (see the module docstring) and the backend of every op call."""

    attention: bool = True
    layer_norm: bool = True
    unpad: bool = True
    trunk: bool = True
    backend: str | None = None

    def __post_init__(self):
        for name in ("attention", "layer_norm", "unpad", "trunk"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}={getattr(self, name)!r} must be a bool")
        check_backend(self.backend)
        if self.unpad and not self.attention:
            raise ValueError(
                "unpad=True needs attention=True: packed (varlen) attention is the fused kernel"
            )


@dataclasses.dataclass(frozen=True)
class CallContext:
    """The plan of one `EsmModel` call, decided before the first layer.

    pack: where the real tokens sit (None: run padded). key_mask: [B, L] bool for the padded
    kernel (None: every key kept). position_ids: rotary positions (model-level rotary only; None:
    column index). inv_freq: the model-level rotary frequencies (None: per-layer or no rotary).
    pack_once: the encoder packs once for all layers (no hidden states recorded). packed: the
    hidden states a layer receives are already packed.
    """

    backend: str | None
    pack: PackedBatch | None = None
    key_mask: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    inv_freq: torch.Tensor | None = None
    pack_once: bool = False
    packed: bool = False


# ------------------------------------------------------------------------------------------------
# transformers' modules and layout checks
# ------------------------------------------------------------------------------------------------


def _import(name: str):
    # By name, not by an import statement: transformers is a peer the runtime never imports
    # (tests/test_packaging.py scans import statements); only these functions load it, on call.
    return importlib.import_module(name)


def _modeling():
    """(transformers version, modeling_esm, modeling_esmfold or None); imported on first use."""
    try:
        version = _import("transformers").__version__
        modeling_esm = _import("transformers.models.esm.modeling_esm")
    except ImportError as err:  # pragma: no cover - transformers is an optional peer
        raise ImportError(
            "esmkernels.patch_transformers / accelerate need transformers installed "
            "(pip install 'esmkernels[peer]')"
        ) from err
    try:
        modeling_esmfold = _import("transformers.models.esm.modeling_esmfold")
    except ImportError:  # pragma: no cover - ESMFold needs extra dependencies in some releases
        modeling_esmfold = None
    return version, modeling_esm, modeling_esmfold


def _unrecognised(version: str, what: str) -> RuntimeError:
    return RuntimeError(
        f"esmkernels: transformers {version}: unrecognised ESM module layout ({what}). Supported: "
        "the layouts of transformers 4.54-4.57 (per-layer rotary_embeddings) and 5.x (model-level "
        "rotary_embeddings); pass attention=False / trunk=False to accelerate the rest"
    )


def _require(version: str, module: nn.Module, names: tuple[str, ...]) -> None:
    missing = [n for n in names if not hasattr(module, n)]
    if missing:
        raise _unrecognised(version, f"{type(module).__name__} has no {', '.join(missing)}")


def _check_lm_layout(version: str, model: nn.Module, modeling_esm) -> None:
    """Raise naming the version unless `model` (an EsmModel) has a layout the fast path knows."""
    _require(version, model, ("encoder", "config"))
    _require(version, model.encoder, ("layer", "emb_layer_norm_after"))
    params = inspect.signature(type(model).forward).parameters
    if "attention_mask" not in params or not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise _unrecognised(version, "EsmModel.forward takes no attention_mask / **kwargs")
    layer_params = inspect.signature(modeling_esm.EsmLayer.forward).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in layer_params.values()):
        raise _unrecognised(version, "EsmLayer.forward takes no **kwargs")
    checkpointing_layer = getattr(_modeling_layers(), "GradientCheckpointingLayer", ())
    if not issubclass(modeling_esm.EsmLayer, checkpointing_layer):
        raise _unrecognised(version, "EsmLayer does not return a tensor (pre-4.54 layer outputs)")
    for layer in model.encoder.layer:
        _require(version, layer, ("attention", "intermediate", "output", "LayerNorm"))
        _require(version, layer.attention, ("self", "output", "LayerNorm"))
        sa = layer.attention.self
        _require(
            version, sa, ("query", "key", "value", "num_attention_heads", "attention_head_size")
        )
        kind = getattr(sa, "position_embedding_type", None)
        if kind not in ("rotary", "absolute"):
            raise _unrecognised(version, f"position_embedding_type={kind!r}")
        if kind == "rotary" and _rotary_source(model, sa) is None:
            raise _unrecognised(version, "no rotary_embeddings.inv_freq on the layer or the model")


def _modeling_layers():
    try:
        return _import("transformers.modeling_layers")
    except ImportError:  # pragma: no cover - older transformers
        return types.SimpleNamespace()


def _rotary_source(model: nn.Module, sa: nn.Module) -> str | None:
    """ "layer" (4.x: per-layer inv_freq), "model" (5.x: EsmModel.rotary_embeddings) or None."""
    if getattr(getattr(sa, "rotary_embeddings", None), "inv_freq", None) is not None:
        return "layer"
    rotary = getattr(model, "rotary_embeddings", None)
    if getattr(rotary, "inv_freq", None) is not None:
        if getattr(rotary, "attention_scaling", 1.0) != 1.0:
            return None  # scaled rope variants: not ESM's rotary
        return "model"
    return None


# ------------------------------------------------------------------------------------------------
# Fast subclasses
# ------------------------------------------------------------------------------------------------

_FAST_CLASSES: dict[tuple[type, type], type] = {}


def _swap(module: nn.Module, mixin: type, options: Options) -> None:
    """Give `module` the class `mixin + type(module)` (cached per pair) and record `options`."""
    cls = type(module)
    # transformers 4.x's output recording leaves `module.forward` set on the instance to the
    # bound class method after a call; it would shadow the new class's forward.
    stale = module.__dict__.get("forward")
    if getattr(stale, "__self__", None) is module and stale.__func__ is cls.forward:
        del module.__dict__["forward"]
    if not isinstance(module, mixin):
        fast = _FAST_CLASSES.get((cls, mixin))
        if fast is None:
            fast = type(cls.__name__, (mixin, cls), {"__module__": __name__})
            _FAST_CLASSES[(cls, mixin)] = fast
        module.__class__ = fast
    module.__dict__["esmkernels_options"] = options


class FusedLayerNorm:
    """`nn.LayerNorm` / ESMFold's `EsmFoldLayerNorm` computed by the fused LayerNorm op."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = getattr(self, "normalized_shape", None) or getattr(self, "c_in", ())
        if len(shape) != 1:
            return super().forward(x)
        weight, bias = getattr(self, "weight", None), getattr(self, "bias", None)
        return layer_norm(x, weight, bias, self.eps, backend=self.esmkernels_options.backend)


def _layer_core(layer: nn.Module, x: torch.Tensor, ctx: CallContext) -> torch.Tensor:
    """One ESM layer on x: [B, L, C] padded or [1, T, C] packed (ctx.packed), pre-LN as in ESM."""
    attn = layer.attention
    sa = attn.self
    h = attn.LayerNorm(x)
    shape = (*h.shape[:2], sa.num_attention_heads, sa.attention_head_size)
    q, k, v = (lin(h).view(shape) for lin in (sa.query, sa.key, sa.value))
    rotary = getattr(sa, "position_embedding_type", None) == "rotary"
    inv_freq = None
    if rotary:
        per_layer = getattr(sa, "rotary_embeddings", None)
        inv_freq = per_layer.inv_freq if per_layer is not None else ctx.inv_freq
    mask = ctx.pack if ctx.packed else ctx.key_mask
    o = fused_attention(q, k, v, mask, ctx.position_ids, inv_freq, ctx.backend)
    a = attn.output(o.reshape(*h.shape[:2], -1), x)
    return layer.output(layer.intermediate(layer.LayerNorm(a)), a)


class FastEsmLayer:
    """transformers' `EsmLayer` with the fused attention core, padded or packed."""

    def forward(self, hidden_states, *args, **kwargs):
        ctx = kwargs.pop(CONTEXT_KEY, None)
        if ctx is None:
            return super().forward(hidden_states, *args, **kwargs)
        if ctx.packed or ctx.pack is None:
            return _layer_core(self, hidden_states, ctx)
        # Hidden states are recorded: pack and unpack around this layer only.
        packed = dataclasses.replace(ctx, packed=True)
        return ctx.pack.pad(_layer_core(self, ctx.pack.unpad(hidden_states), packed))


class FastEsmEncoder:
    """transformers' `EsmEncoder` that packs the real tokens once for all layers."""

    def forward(self, hidden_states, *args, **kwargs):
        ctx = kwargs.get(CONTEXT_KEY)
        if ctx is None or ctx.pack is None or not ctx.pack_once:
            return super().forward(hidden_states, *args, **kwargs)
        outputs = _import("transformers.modeling_outputs")
        packed = {CONTEXT_KEY: dataclasses.replace(ctx, packed=True)}
        x = ctx.pack.unpad(hidden_states)
        for layer in self.layer:
            x = layer(x, **packed)  # positional: reentrant checkpointing needs it
        if self.emb_layer_norm_after is not None:
            x = self.emb_layer_norm_after(x)
        return outputs.BaseModelOutputWithCrossAttentions(last_hidden_state=ctx.pack.pad(x))


@functools.cache
def _forward_signature(cls: type) -> inspect.Signature:
    return inspect.signature(cls.forward)


def _requested(name: str, kwargs: dict, config) -> bool:
    value = kwargs.get(name)
    if value is None:
        value = getattr(config, name, False)
    return bool(value)


def plan_call(model: nn.Module, args: tuple, kwargs: dict) -> CallContext | None:
    """The fast plan for `model(*args, **kwargs)` (an accelerated EsmModel), or None to run
    transformers' own attention for this call."""
    options: Options = model.esmkernels_options
    config = model.config
    try:
        bound = _forward_signature(type(model)).bind(model, *args, **kwargs).arguments
    except TypeError:
        return None  # let transformers raise its own error
    extra = bound.get("kwargs", {})
    mask = bound.get("attention_mask")
    if (
        _requested("output_attentions", extra, config)
        or (model.training and config.attention_probs_dropout_prob > 0)
        or bound.get("head_mask") is not None
        or bound.get("encoder_hidden_states") is not None
        or getattr(config, "is_decoder", False)
        or (mask is not None and (not isinstance(mask, torch.Tensor) or mask.dim() != 2))
    ):
        return None
    sa = model.encoder.layer[0].attention.self if len(model.encoder.layer) else None
    rotary = sa is not None and sa.position_embedding_type == "rotary"
    model_level = rotary and _rotary_source(model, sa) == "model"
    # transformers 4.x rotates by column index whatever position_ids say; 5.x uses position_ids.
    position_ids = bound.get("position_ids") if model_level else None
    ctx = CallContext(
        backend=options.backend,
        position_ids=position_ids,
        inv_freq=model.rotary_embeddings.inv_freq if model_level else None,
    )
    if mask is None:
        return ctx
    if options.unpad:
        pack = PackedBatch.from_mask(mask, position_ids, rotary)
        if pack.all_kept:
            return ctx
        hidden = _requested("output_hidden_states", extra, config)
        return dataclasses.replace(ctx, pack=pack, pack_once=not hidden)
    keep = mask.ne(0)
    return dataclasses.replace(ctx, key_mask=keep)


def _fast_model_forward(self, *args, **kwargs):
    """Instance `forward` of an accelerated transformers `EsmModel`: plan, then its own forward.

    Set on the instance, not by a subclass: transformers keys its output-recording registry on
    the model's class name, which must stay its own."""
    ctx = plan_call(self, args, kwargs)
    if ctx is not None:
        kwargs[CONTEXT_KEY] = ctx
    return type(self).forward(self, *args, **kwargs)


# ------------------------------------------------------------------------------------------------
# ESMFold trunk: the reference trunk's forward functions on transformers' modules
# ------------------------------------------------------------------------------------------------


class FastTriangleMultiplication:
    """transformers' `EsmFoldTriangleMultiplicativeUpdate` running the fused kernel."""

    def forward(self, z, mask=None, inplace_safe=False, _add_with_inplace=False, **kwargs):
        if _add_with_inplace:
            return super().forward(z, mask, inplace_safe, _add_with_inplace, **kwargs)
        return ref_trunk.EsmFoldTriangleMultiplicativeUpdate.forward(self, z, mask)


class ProjectingAttention:
    """transformers' `EsmFoldAttention` with the reference's `project` (q, k, v, gate heads)."""


class FastTriangleAttention:
    """transformers' `EsmFoldTriangleAttention` running the fused axial attention kernel, in
    blocks of transformers' `chunk_size`."""

    def forward(self, x, mask=None, chunk_size=None, *args, **kwargs):
        if args or any(kwargs.values()) or self.mha.linear_g is None:
            return super().forward(x, mask, chunk_size, *args, **kwargs)
        return ref_trunk.EsmFoldTriangleAttention.forward(self, x, mask, chunk_size)


class FastSequenceAttention:
    """transformers' `EsmFoldSelfAttention` (trunk sequence attention with pair bias), fused.

    Returns (output, None): no attention maps (transformers' trunk discards them)."""

    def forward(self, x, mask=None, bias=None, indices=None):
        if indices is not None:
            return super().forward(x, mask, bias, indices)
        return ref_trunk.EsmFoldSelfAttention.forward(self, x, mask, bias), None


# The reference trunk modules have transformers' attribute names, so their forward functions run
# on transformers' modules as they are; each mixin also gets the reference's helper methods
# (`project`, row-block helpers), whatever they are, so the two cannot drift apart.
for _mixin, _reference in (
    (FastTriangleMultiplication, ref_trunk.EsmFoldTriangleMultiplicativeUpdate),
    (ProjectingAttention, ref_trunk.EsmFoldAttention),
    (FastTriangleAttention, ref_trunk.EsmFoldTriangleAttention),
    (FastSequenceAttention, ref_trunk.EsmFoldSelfAttention),
):
    for _name, _fn in vars(_reference).items():
        if inspect.isfunction(_fn) and _name not in ("__init__", "forward"):
            setattr(_mixin, _name, _fn)
del _mixin, _reference, _name, _fn


_TRUNK_NAMES = {
    "EsmFoldTriangleMultiplicativeUpdate": (
        FastTriangleMultiplication,
        ("_outgoing", "linear_a_p", "linear_a_g", "linear_b_p", "linear_b_g", "linear_g",
         "linear_z", "layer_norm_in", "layer_norm_out"),
    ),
    "EsmFoldTriangleAttention": (
        FastTriangleAttention, ("starting", "layer_norm", "linear", "mha", "c_hidden")
    ),
    "EsmFoldSelfAttention": (
        FastSequenceAttention,
        ("proj", "o_proj", "gated", "num_heads", "head_width", "embed_dim", "rescale_factor"),
    ),
}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Public functions
# ------------------------------------------------------------------------------------------------


def _esm_roots(model: nn.Module, modeling_esm) -> list[nn.Module]:
    """The outermost transformers ESM models inside `model` (itself, or wrapped, e.g. by PEFT)."""
    roots, inside = [], set()
    for module in model.modules():  # pre-order: an outer model comes before its parts
        if isinstance(module, modeling_esm.EsmPreTrainedModel) and id(module) not in inside:
            roots.append(module)
            inside.update(id(m) for m in module.modules())
    return roots


def _accelerate(model: nn.Module, options: Options) -> nn.Module:
    version, modeling_esm, modeling_esmfold = _modeling()
    roots = _esm_roots(model, modeling_esm)
    if not roots:
        raise TypeError(
            f"accelerate: {type(model).__name__} is not and does not contain a transformers ESM "
            "model (transformers.models.esm)"
        )
    fold_layer_norm = getattr(modeling_esmfold, "EsmFoldLayerNorm", None)
    trunk_classes = {
        getattr(modeling_esmfold, name, None): spec for name, spec in _TRUNK_NAMES.items()
    }
    trunk_classes.pop(None, None)
    for root in roots:
        modules = list(root.modules())
        lms = [m for m in modules if isinstance(m, modeling_esm.EsmModel)]
        if options.attention:
            for lm in lms:
                _check_lm_layout(version, lm, modeling_esm)
        if options.trunk:
            for m in modules:
                for cls, (_, names) in trunk_classes.items():
                    if isinstance(m, cls):
                        _require(version, m, names)
        for m in modules:
            if options.layer_norm and (
                isinstance(m, nn.LayerNorm) or (fold_layer_norm and isinstance(m, fold_layer_norm))
            ):
                _swap(m, FusedLayerNorm, options)
            if options.trunk:
                for cls, (mixin, _) in trunk_classes.items():
                    if isinstance(m, cls):
                        _swap(m, mixin, options)
                        m.__dict__["ops"] = KernelTrunkOps(options.backend)
                        if mixin is FastTriangleAttention:
                            _swap(m.mha, ProjectingAttention, options)
        if options.attention:
            for lm in lms:
                for layer in lm.encoder.layer:
                    _swap(layer, FastEsmLayer, options)
                if options.unpad:
                    _swap(lm.encoder, FastEsmEncoder, options)
                lm.__dict__["esmkernels_options"] = options
                lm.__dict__["forward"] = types.MethodType(_fast_model_forward, lm)
    return model


def accelerate(
    model: nn.Module,
    *,
    attention: bool = True,
    layer_norm: bool = True,
    unpad: bool = True,
    trunk: bool = True,
    backend: str | None = None,
) -> nn.Module:
    """Run an existing transformers ESM model (`EsmModel`, `EsmForMaskedLM`,
    `EsmForSequenceClassification`, `EsmForTokenClassification`, `EsmForProteinFolding`, or a
    wrapper holding one, e.g. a PEFT model) on esmkernels' kernels, in place.

    Args:
        model: the model; converted in place (parameters, buffers, names and hooks untouched).
        attention, layer_norm, unpad, trunk: what to swap (see the module docstring).
        backend: None | "auto" | "triton" | "torch" for every op call (None: the environment
            variable ESMKERNELS_BACKEND, default "auto": Triton on CUDA, PyTorch elsewhere).

    Returns:
        `model` itself.

    Raises:
        TypeError: `model` holds no transformers ESM model.
        RuntimeError: the installed transformers has an ESM module layout esmkernels does not
            know (the message names the version).

    Example:
        >>> from transformers import EsmForMaskedLM  # doctest: +SKIP
        >>> model = esmkernels.accelerate(EsmForMaskedLM.from_pretrained(ckpt))  # doctest: +SKIP
    """
    return _accelerate(model, Options(attention, layer_norm, unpad, trunk, backend))


_MISSING = object()
_patched: dict[str, Any] = {}


def patch_transformers(
    attention: bool = True,
    layer_norm: bool = True,
    unpad: bool = True,
    trunk: bool = True,
    *,
    backend: str | None = None,
) -> None:
    """Make every transformers ESM model built from now on run esmkernels' kernels.

    Class-level: wraps `EsmPreTrainedModel.post_init` (run at the end of every ESM model's
    `__init__`, `from_pretrained` included) so that each new model is passed to `accelerate`
    with these options. Models built before the call are unchanged (use `accelerate(model)`).
    Calling it again replaces the options; `unpatch_transformers()` restores the original.

    Example:
        >>> import esmkernels  # doctest: +SKIP
        >>> esmkernels.patch_transformers()  # doctest: +SKIP
        >>> model = transformers.EsmForMaskedLM.from_pretrained(ckpt)  # accelerated  # doctest: +SKIP
    """
    options = Options(attention, layer_norm, unpad, trunk, backend)
    _, modeling_esm, _ = _modeling()
    unpatch_transformers()
    base = modeling_esm.EsmPreTrainedModel
    original = base.__dict__.get("post_init", _MISSING)

    def post_init(self, *args, **kwargs):
        parent = original if original is not _MISSING else super(base, self).post_init.__func__
        result = parent(self, *args, **kwargs)
        _accelerate(self, options)
        return result

    base.post_init = post_init
    _patched.update(base=base, original=original, options=options)


def unpatch_transformers() -> None:
    """Undo `patch_transformers`: models built afterwards are transformers' own again.

    Models accelerated meanwhile stay accelerated. A no-op when nothing is patched."""
    if not _patched:
        return
    base, original = _patched["base"], _patched["original"]
    if original is _MISSING:
        del base.post_init
    else:
        base.post_init = original
    _patched.clear()


def patched_options() -> Options | None:
    """The options of the active `patch_transformers`, or None when unpatched."""
    return _patched.get("options")


__all__ = [
    "CONTEXT_KEY",
    "CallContext",
    "Options",
    "accelerate",
    "patch_transformers",
    "patched_options",
    "plan_call",
    "unpatch_transformers",
]
