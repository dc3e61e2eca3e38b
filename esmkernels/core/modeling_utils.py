"""`PreTrainedMixin`: `from_pretrained` / `save_pretrained` for every esmkernels model class.

A model class is a `torch.nn.Module` that mixes this in, takes its configuration as the only
constructor argument (`cls(config)`), stores it as `self.config`, and uses HF parameter names:

    class EsmForMaskedLM(PreTrainedMixin, nn.Module):
        _tied_weights = {"lm_head.decoder.weight": "esm.embeddings.word_embeddings.weight"}
        _ignore_unexpected = (r"^esm\\.pooler\\.",)

        def __init__(self, config):
            super().__init__()
            self.config = config
            self.esm = EsmModel(config)
            self.lm_head = EsmLMHead(config)
            self.post_init()                    # ties the decoder to the embedding

Loading (`from_pretrained`) reads any format `esmkernels.core.checkpoint.load_checkpoint` knows
(memory-mapped where the format allows), builds the model without allocating or initialising
its parameters (`esmkernels.core.materialize.empty_parameters`), then:

1. fits the base-model prefix: a base checkpoint (`embeddings.*`) loads into a head class
   (`esm.embeddings.*`) and a head checkpoint loads into the base class (its head keys, e.g.
   `lm_head.*`, are dropped with a log line), as in transformers;
2. fits rotary `inv_freq` to the model's layout (per layer or one model-level buffer) from the
   stored values, which are used as they are;
3. fills tied weights (`_tied_weights`, target <- source) that the file leaves out;
4. raises ValueError for every shape mismatch ("config disagrees with the weights"), and for
   missing / unexpected keys unless `strict=False` (then `warnings.warn` + log and carry on);
5. makes each checkpoint tensor the parameter itself, in `dtype` on `device`, one tensor at a
   time (`materialize.assign`; on the CPU in the stored dtype, a view of the mapped file, so
   nothing is copied); gives parameters the file lacks and the class may leave fresh (a new
   task head) their `_init_weights` initialisation, or, for a class without one, builds the
   model with its constructors instead and loads into it; then moves the buffers and calls
   `.eval()`.

Casting keeps buffers that match `_keep_in_fp32` (rotary `inv_freq`) in float32, so positions
are not rounded to half precision; a later `model.half()` by the user does cast them, and model
code should read `inv_freq.float()`.

This module is a foundation leaf: it imports nothing from `models/`, `ops/` or `reference/`.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from esmkernels.core.checkpoint import load_checkpoint
from esmkernels.core.configuration import EsmConfig
from esmkernels.core.hf_checkpoint import is_inv_freq_key, save_checkpoint
from esmkernels.core.key_fitting import KeyFitting, matches_any
from esmkernels.core.materialize import (
    assign,
    empty_parameters,
    init_fresh,
    meta_parameters,
    resolve_device,
    resolve_dtype,
)

logger = logging.getLogger(__name__)


class PreTrainedMixin(KeyFitting):
    """Checkpoint loading and saving for `nn.Module` model classes; see the module docstring.

    Class attributes a model class may set:
        config_class: the configuration class (`EsmConfig`).
        base_model_prefix: attribute name of the base model inside head classes (`"esm"`).
        _tied_weights: target key -> source key of parameters that share storage when
            `config.tie_word_embeddings` is true, e.g.
            `{"lm_head.decoder.weight": "esm.embeddings.word_embeddings.weight"}`.
        _ignore_missing: regexes of model keys a checkpoint may lack (they keep their initial
            values). Rotary `inv_freq` is in the default: it is recomputed only as a last
            resort, when the file has no stored value at all (logged).
        _ignore_unexpected: regexes of checkpoint keys the class drops silently (default:
            `position_ids` buffers and, for rotary classes, legacy absolute position
            embeddings; add e.g. `r"^esm\\.pooler\\."` to a class without a pooler).
        _keep_in_fp32: regexes of floating buffers that stay float32 when `from_pretrained`
            casts to half precision.
        _init_missing_heads: when true (default), a head class loading a checkpoint that holds
            its base model (`esm.*`) but none of a head module's keys (e.g. `classifier.*` from
            a masked-LM checkpoint) keeps that head's fresh initial values with a warning, and
            drops the checkpoint's keys of modules the class lacks (its `lm_head.*`), as
            transformers does. A head present in part is still an error. ESMFold sets it
            false: its heads are part of the pretrained model.
    """

    config_class: ClassVar[type] = EsmConfig
    base_model_prefix: ClassVar[str] = "esm"
    _tied_weights: ClassVar[dict[str, str]] = {}
    _ignore_missing: ClassVar[tuple[str, ...]] = (
        r"rotary_embeddings\.inv_freq$",
        r"(^|\.)contact_head\.regression\.",
    )
    _ignore_unexpected: ClassVar[tuple[str, ...]] = (
        r"(^|\.)position_ids$",
        r"(^|\.)embeddings\.position_embeddings\.weight$",
        r"(^|\.)pooler\.",
    )
    _keep_in_fp32: ClassVar[tuple[str, ...]] = (r"inv_freq$",)
    _init_missing_heads: ClassVar[bool] = True

    config: Any

    # -----------------------------------------------------------------------------------------
    # Construction helpers
    # -----------------------------------------------------------------------------------------

    def post_init(self) -> None:
        """Call at the end of `__init__`: ties weights so a fresh model is already tied."""
        self.tie_weights()

    def tie_weights(self) -> None:
        """Make every `_tied_weights` target the same `nn.Parameter` as its source.

        Does nothing when `config.tie_word_embeddings` is false or the class has no such keys.
        """
        if not self._tying():
            return
        module: nn.Module = self  # type: ignore[assignment]
        for target, source in self._tied_weights.items():
            try:
                src = module.get_parameter(source)
                owner_name, _, attr = target.rpartition(".")
                owner = module.get_submodule(owner_name) if owner_name else module
            except AttributeError:
                continue  # this class lacks one side (e.g. no head); nothing to tie
            current = getattr(owner, attr, None)
            if current is not None and tuple(current.shape) != tuple(src.shape):
                raise ValueError(
                    f"cannot tie {target} {tuple(current.shape)} to {source} {tuple(src.shape)}"
                )
            setattr(owner, attr, src)

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Number of parameters, each shared (tied) parameter counted once."""
        module: nn.Module = self  # type: ignore[assignment]
        skip: set[int] = set()
        if exclude_embeddings:
            for sub in module.modules():
                if isinstance(sub, nn.Embedding):
                    skip.add(id(sub.weight))
        return sum(
            p.numel()
            for p in module.parameters()  # parameters() yields a shared parameter once
            if id(p) not in skip and (p.requires_grad or not only_trainable)
        )

    def gradient_checkpointing_enable(self) -> None:
        """Set `gradient_checkpointing = True` on every submodule that has that attribute."""
        self._set_gradient_checkpointing(True)

    def gradient_checkpointing_disable(self) -> None:
        self._set_gradient_checkpointing(False)

    def _set_gradient_checkpointing(self, value: bool) -> None:
        found = False
        for sub in self.modules():  # type: ignore[attr-defined]
            if hasattr(sub, "gradient_checkpointing"):
                sub.gradient_checkpointing = value
                found = True
        if value and not found:
            raise ValueError(
                f"{type(self).__name__} has no module supporting gradient checkpointing"
            )

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())  # type: ignore[attr-defined]

    # -----------------------------------------------------------------------------------------
    # Loading
    # -----------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        *,
        config: Any = None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | int | None = None,
        strict: bool = True,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        stem: Any = None,
        torch_dtype: torch.dtype | str | None = None,
        device_map: Any = None,
        quantize: str | None = None,
        **config_overrides: Any,
    ):
        """Build `cls(config)` without initialising it and load a checkpoint of any format into it.

        Args:
            path_or_id: directory, weights file, fair-esm `.pt`, or Hub id (see
                `esmkernels.core.checkpoint.load_checkpoint`).
            config: configuration to use instead of the stored one.
            dtype: cast parameters (and floating buffers other than `_keep_in_fp32`) to this
                dtype: a `torch.dtype`, "float32" / "float16" / "bfloat16" (or "fp16", "bf16"),
                "auto" for the stored dtype, or None to keep float32. `torch_dtype` is the same
                argument under transformers' older name.
            device: where the model is loaded: None or "cpu", "cuda", "cuda:1", a GPU index.
                Each tensor is copied there in its stored dtype and cast there, one at a time.
                `device_map` is transformers' argument for the same, for one device only
                ("cuda", "auto", `{"": "cuda:0"}`).
            strict: raise on missing / unexpected keys (after the class's ignore lists and the
                task-head rule of `load_hf_state_dict`: a head the checkpoint lacks entirely is
                freshly initialised with a warning, as in transformers). With False they are
                reported by `warnings.warn` and logging; missing ones get the initial values
                the constructors give them. Shape mismatches always raise.
            revision, cache_dir: for Hub ids.
            stem: for a fair-esm ESMFold `.pt` (trunk weights only): the ESM-2 stem's
                checkpoint, e.g. `"esm2_t36_3B_UR50D.pt"` or `"facebook/esm2_t36_3B_UR50D"`
                (see `load_checkpoint`).
            quantize: None, or "int8" for inference with int8 linear layers, where the class
                provides it (`quantize_for_inference`: the fast language models, on the CPU);
                the model then refuses training.
            **config_overrides: configuration keys to change, e.g. `num_labels=3`,
                `token_dropout=False`.

        Returns:
            The model, in eval mode. Loaded on the CPU in the dtype the file stores, from a
            safetensors or zip `.bin` / `.pt` file, its parameters are copy-on-write views of
            the file: nothing is read until used, and training them never changes the file. Do
            not overwrite that file in place while the model lives (`save_pretrained` and
            `save_checkpoint` write a new file and rename it, which is safe).

        Example:
            >>> model = EsmForMaskedLM.from_pretrained(  # doctest: +SKIP
            ...     "facebook/esm2_t6_8M_UR50D", dtype="bf16", device="cuda")
            >>> clf = EsmForSequenceClassification.from_pretrained(  # doctest: +SKIP
            ...     "facebook/esm2_t6_8M_UR50D", num_labels=3)  # fresh classifier, warned
            >>> fold = EsmForProteinFolding.from_pretrained(  # doctest: +SKIP
            ...     "esmfold_3B_v1.pt", stem="esm2_t36_3B_UR50D.pt")
        """
        if config is not None:
            cls._make_config(config, {})  # type check before any file is read
        if quantize is not None and not hasattr(cls, "quantize_for_inference"):
            raise ValueError(f"quantize={quantize!r}: {cls.__name__} has no quantized inference")
        if torch_dtype is not None:
            if dtype is not None and resolve_dtype(dtype) != resolve_dtype(torch_dtype):
                raise ValueError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree")
            dtype = torch_dtype
        target_device = resolve_device(device, device_map)
        stored_config, state_dict, fmt = load_checkpoint(
            path_or_id, config=config, revision=revision, cache_dir=cache_dir, stem=stem
        )
        prefix = cls.base_model_prefix + "."
        if (
            fmt == "fair-esm-esmfold"
            and strict
            and not any(k.startswith(prefix) for k in state_dict)
        ):
            raise ValueError(
                f"{cls.__name__}: {path_or_id} is a fair-esm ESMFold file, which holds the folding "
                "trunk and heads only; its ESM-2 language model comes from its own checkpoint. "
                f"Pass it as stem=, e.g. {cls.__name__}.from_pretrained({os.fspath(path_or_id)!r}, "
                "stem='esm2_t36_3B_UR50D.pt') (a path, an HF directory or Hub id such as "
                "'facebook/esm2_t36_3B_UR50D'), or strict=False to leave the stem random"
            )
        # A checkpoint of the other model kind is named as such, not as shape mismatches. A
        # folding model is the class that holds a language-model stem (`stem_cls`).
        if bool(getattr(stored_config, "is_folding_model", False)) != hasattr(cls, "stem_cls"):
            raise ValueError(
                f"{cls.__name__}.from_pretrained: {os.fspath(path_or_id)} is "
                + (
                    "a language-model checkpoint (its config is not an ESMFold configuration; "
                    "use EsmForMaskedLM or EsmModel)"
                    if hasattr(cls, "stem_cls")
                    else "an ESMFold checkpoint (use EsmForProteinFolding)"
                )
            )
        config = cls._make_config(stored_config, config_overrides)
        target_dtype = resolve_dtype(dtype, state_dict, skip=is_inv_freq_key)

        with empty_parameters():
            model = cls(config)  # type: ignore[call-arg]
        if not isinstance(model, nn.Module):
            raise TypeError(f"{cls.__name__} must be a torch.nn.Module to use PreTrainedMixin")
        model.tie_weights()
        source = f"{path_or_id} ({fmt})"
        loadable, _, _ = model._fit_state_dict(state_dict, strict=strict, source=source)
        del state_dict  # what is not loaded is unmapped as soon as possible
        # A caller's own stem tensors are copied, never shared with the new model.
        theirs = [] if not isinstance(stem, tuple) else list(stem[1].values())
        if not model._fill(loadable, target_dtype, target_device, theirs):
            logger.info(
                "%s: parameters the checkpoint lacks have no _init_weights; building the model "
                "with its constructors to initialise them",
                cls.__name__,
            )
            model = cls(config)  # type: ignore[call-arg]
            model.tie_weights()
            with torch.no_grad():
                model.load_state_dict(loadable, strict=False)
            model.tie_weights()
        model.to_device_dtype(device=target_device, dtype=target_dtype)
        model.eval()
        if quantize is not None:  # the model class's hook: core knows no quantizer
            model.quantize_for_inference(quantize)
        return model

    @classmethod
    def _make_config(cls, config: Any, overrides: dict[str, Any]):
        config_class = cls.config_class
        if not isinstance(config, config_class):
            raise TypeError(
                f"{cls.__name__}.from_pretrained: config must be a {config_class.__name__}, "
                f"got {type(config).__name__}"
            )
        if not overrides:
            return config
        known = set(getattr(config_class, "defaults", {})) | {"num_labels"}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(
                f"{cls.__name__}.from_pretrained got unexpected keyword argument(s) {unknown}: "
                f"not {config_class.__name__} keys"
            )
        return config_class.from_dict(config.to_dict(), **overrides)

    def load_hf_state_dict(
        self, state_dict: Mapping[str, Tensor], *, strict: bool = True, source: str = "state dict"
    ) -> tuple[list[str], list[str]]:
        """Load an HF-named state dict (steps 1-4 of the module docstring) into this model.

        Values are copied into the model's tensors; a model built inside
        `materialize.empty_parameters` gets the tensors themselves instead (step 5, on the CPU,
        in its parameters' dtype), and ValueError when a parameter the state dict lacks cannot
        be initialised without its constructor.

        Returns the `(missing, unexpected)` keys that were tolerated (empty when strict).
        """
        module: nn.Module = self  # type: ignore[assignment]
        loadable, missing, unexpected = self._fit_state_dict(
            state_dict, strict=strict, source=source
        )
        if meta_parameters(module):
            if not self._fill(loadable, None, torch.device("cpu")):
                raise ValueError(
                    f"{type(self).__name__}: parameters {source} lacks have no _init_weights; "
                    "build the model normally (not inside empty_parameters) to load it"
                )
            return missing, unexpected
        with torch.no_grad():
            module.load_state_dict(loadable, strict=False)
        self.tie_weights()
        return missing, unexpected

    def _fill(
        self,
        loadable: Mapping[str, Tensor],
        dtype: torch.dtype | None,
        device: torch.device,
        theirs: Iterable[Tensor] = (),
    ) -> bool:
        """Step 5 for a model built inside `empty_parameters`: install `loadable` and initialise
        the meta parameters it lacks. False (and the model untouched) when one of those has no
        `_init_weights`; the caller then builds the model with its constructors."""
        module: nn.Module = self  # type: ignore[assignment]
        fresh_names = [
            names[0] for names in meta_parameters(module) if not any(n in loadable for n in names)
        ]
        fresh = init_fresh(module, fresh_names) if fresh_names else {}
        if fresh is None:
            return False
        buffers = {name for name, _ in module.named_buffers()}

        def dtype_of(name: str, current: Tensor) -> torch.dtype:
            if (
                dtype is not None
                and current.is_floating_point()
                and not (name in buffers and matches_any(name, self._keep_in_fp32))
            ):
                return dtype
            return current.dtype

        owned = {t.data_ptr() for t in theirs if t.numel()}
        assign(module, {**loadable, **fresh}, dtype_of, device, owned_elsewhere=owned)
        self.tie_weights()
        return True

    def to_device_dtype(
        self, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ):
        """`.to(device, dtype)` that keeps `_keep_in_fp32` buffers in float32. Returns self."""
        module: nn.Module = self  # type: ignore[assignment]
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        kept = {}
        if dtype is not None:
            for name, buf in module.named_buffers():
                if buf.is_floating_point() and matches_any(name, self._keep_in_fp32):
                    kept[name] = buf.detach().float().clone()
        module.to(device=device, dtype=dtype)
        for name, value in kept.items():
            owner_name, _, attr = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            target = owner._buffers[attr]
            owner._buffers[attr] = value.to(target.device)
        return self

    # -----------------------------------------------------------------------------------------
    # Saving
    # -----------------------------------------------------------------------------------------

    def save_pretrained(
        self, save_directory: str | os.PathLike, *, safe_serialization: bool = True
    ) -> Path:
        """Write `config.json` and `model.safetensors` (or `pytorch_model.bin`) into a directory.

        Tied duplicates are dropped (the target is re-tied on load, by us and by transformers),
        tensors are written contiguous and on CPU, and each file goes through a temporary file
        and `os.replace`, so a crash never leaves a half-written checkpoint. transformers can
        load the result.

        Returns the directory.

        Example:
            >>> model.save_pretrained("out/esm2_finetuned")  # doctest: +SKIP
        """
        module: nn.Module = self  # type: ignore[assignment]
        state = module.state_dict()
        if self._tying():
            for target, src in self._tied_weights.items():
                if (
                    target in state
                    and src in state
                    and state[target].data_ptr() == state[src].data_ptr()
                ):
                    del state[target]
        config = copy.deepcopy(self.config)
        config.architectures = [type(self).__name__]
        params = [p for p in module.parameters() if p.is_floating_point()]
        if params and "torch_dtype" in getattr(config, "defaults", {}):
            config.torch_dtype = str(params[0].dtype).removeprefix("torch.")
        return save_checkpoint(save_directory, config, state, safe_serialization=safe_serialization)


__all__ = ["PreTrainedMixin"]
