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

Loading (`from_pretrained`) reads any format `esmkernels.core.checkpoint.load_checkpoint` knows, then:

1. fits the base-model prefix: a base checkpoint (`embeddings.*`) loads into a head class
   (`esm.embeddings.*`) and a head checkpoint loads into the base class (its head keys, e.g.
   `lm_head.*`, are dropped with a log line), as in transformers;
2. fits rotary `inv_freq` to the model's layout (per layer or one model-level buffer) from the
   stored values, which are used as they are;
3. fills tied weights (`_tied_weights`, target <- source) that the file leaves out;
4. raises ValueError for every shape mismatch ("config disagrees with the weights"), and for
   missing / unexpected keys unless `strict=False` (then `warnings.warn` + log and carry on);
5. moves to `device`, casts to `dtype` and calls `.eval()`.

Casting keeps buffers that match `_keep_in_fp32` (rotary `inv_freq`) in float32, so positions
are not rounded to half precision; a later `model.half()` by the user does cast them, and model
code should read `inv_freq.float()`.

This module is a foundation leaf: it imports nothing from `models/`, `ops/` or `reference/`.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from esmkernels.core.checkpoint import (
    format_keys,
    is_inv_freq_key,
    load_checkpoint,
    save_checkpoint,
)
from esmkernels.core.configuration import EsmConfig

logger = logging.getLogger(__name__)

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def _warn(message: str, stacklevel: int) -> None:
    """`warnings.warn` pointing `stacklevel` frames up from the caller, and the same log line."""
    warnings.warn(message, stacklevel=stacklevel + 1)
    logger.warning(message)


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(re.search(p, key) for p in patterns)


def resolve_dtype(dtype: torch.dtype | str | None, state_dict: Mapping[str, Tensor] | None = None):
    """`torch.dtype` for a dtype argument: a dtype, a name ("bf16", "float16", ...), "auto" or None.

    "auto" means the dtype most of the checkpoint's floating tensors are stored in.
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if not isinstance(dtype, str):
        raise TypeError(f"dtype must be a torch.dtype or a string, got {type(dtype).__name__}")
    name = dtype.removeprefix("torch.").lower()
    if name == "auto":
        counts: dict[torch.dtype, int] = {}
        for key, t in (state_dict or {}).items():
            if t.is_floating_point() and not is_inv_freq_key(key):
                counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
        return max(counts, key=counts.get) if counts else None
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)} or 'auto'")
    return _DTYPES[name]


class PreTrainedMixin:
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

    def _tying(self) -> bool:
        return bool(getattr(getattr(self, "config", None), "tie_word_embeddings", True))

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
        device: torch.device | str | None = None,
        strict: bool = True,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        stem: Any = None,
        **config_overrides: Any,
    ):
        """Build `cls(config)` and load a checkpoint of any supported format into it.

        Args:
            path_or_id: directory, weights file, fair-esm `.pt`, or Hub id (see
                `esmkernels.core.checkpoint.load_checkpoint`).
            config: configuration to use instead of the stored one.
            dtype: cast parameters (and floating buffers other than `_keep_in_fp32`) to this
                dtype: a `torch.dtype`, "float32" / "float16" / "bfloat16" (or "fp16", "bf16"),
                "auto" for the stored dtype, or None to keep float32.
            device: where the model ends up (loading itself happens on CPU).
            strict: raise on missing / unexpected keys (after the class's ignore lists and the
                task-head rule of `load_hf_state_dict`: a head the checkpoint lacks entirely is
                freshly initialised with a warning, as in transformers). With False they are
                reported by `warnings.warn` and logging; missing ones keep their initial values.
                Shape mismatches always raise.
            revision, cache_dir: for Hub ids.
            stem: for a fair-esm ESMFold `.pt` (trunk weights only): the ESM-2 stem's
                checkpoint, e.g. `"esm2_t36_3B_UR50D.pt"` or `"facebook/esm2_t36_3B_UR50D"`
                (see `load_checkpoint`).
            **config_overrides: configuration keys to change, e.g. `num_labels=3`,
                `token_dropout=False`.

        Returns:
            The model, in eval mode.

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
        config = cls._make_config(stored_config, config_overrides)
        target_dtype = resolve_dtype(dtype, state_dict)

        model = cls(config)  # type: ignore[call-arg]
        if not isinstance(model, nn.Module):
            raise TypeError(f"{cls.__name__} must be a torch.nn.Module to use PreTrainedMixin")
        model.tie_weights()
        model.load_hf_state_dict(state_dict, strict=strict, source=f"{path_or_id} ({fmt})")
        model.to_device_dtype(device=device, dtype=target_dtype)
        return model.eval()

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

        Returns the `(missing, unexpected)` keys that were tolerated (empty when strict).
        """
        module: nn.Module = self  # type: ignore[assignment]
        expected = module.state_dict()
        mapped = self._fit_prefix(dict(state_dict), expected)
        mapped = self._fit_inv_freq(mapped, expected)
        stored = set(mapped)  # before tying fills targets the file leaves out
        mapped = self._fit_tied(mapped, expected, source)

        mismatched = [
            f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
            for k, v in mapped.items()
            if k in expected and tuple(v.shape) != tuple(expected[k].shape)
        ]
        if mismatched:
            raise ValueError(
                f"{type(self).__name__}: config disagrees with the weights in {source}: "
                f"{len(mismatched)} shape mismatch(es): {format_keys(mismatched)}"
            )
        missing = [k for k in expected if k not in mapped and not _matches(k, self._ignore_missing)]
        unexpected = [
            k for k in mapped if k not in expected and not _matches(k, self._ignore_unexpected)
        ]
        missing, unexpected = self._fit_task_heads(missing, unexpected, stored, expected, source)
        recomputed = [k for k in expected if k not in mapped and is_inv_freq_key(k)]
        if recomputed:
            logger.warning(
                "%s: %s has no rotary inv_freq; using freshly computed values for %d buffer(s)",
                type(self).__name__,
                source,
                len(recomputed),
            )
        if any(k not in mapped and "contact_head.regression." in k for k in expected):
            # ESM-1v ships without a contact head; predictions from it would be noise
            logger.warning(
                "%s: %s has no contact head weights; contact predictions are meaningless",
                type(self).__name__,
                source,
            )
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing key(s): {format_keys(missing)}")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected key(s): {format_keys(unexpected)}")
            message = f"{type(self).__name__} from {source}: " + "; ".join(parts)
            if strict:
                raise ValueError(message + " (pass strict=False to load anyway)")
            _warn(message, stacklevel=3)

        loadable = {k: v for k, v in mapped.items() if k in expected}
        with torch.no_grad():
            module.load_state_dict(loadable, strict=False)
        self.tie_weights()
        return missing, unexpected

    def _fit_task_heads(
        self,
        missing: list[str],
        unexpected: list[str],
        stored: Iterable[str],
        expected: Mapping[str, Tensor],
        source: str,
    ) -> tuple[list[str], list[str]]:
        """Split off whole task heads the checkpoint (`stored` keys) or the class lacks.

        See `_init_missing_heads` in the class docstring. Returns the remaining
        `(missing, unexpected)`.
        """
        prefix = self.base_model_prefix + "."
        stored = list(stored)
        if not (
            self._init_missing_heads
            and self._is_head()
            and any(k.startswith(prefix) for k in stored)
        ):
            return missing, unexpected

        def top(key: str) -> str:
            return key.split(".", 1)[0]

        in_file = {top(k) for k in stored}
        in_model = {top(k) for k in expected}
        fresh = [k for k in missing if not k.startswith(prefix) and top(k) not in in_file]
        dropped = [k for k in unexpected if not k.startswith(prefix) and top(k) not in in_model]
        if fresh:
            message = (
                f"{type(self).__name__}: {source} has no weights for its task head; "
                f"{len(fresh)} weight(s) are newly initialised: {format_keys(fresh)}. Train the "
                "model on a downstream task before using its predictions"
            )
            _warn(message, stacklevel=4)
        if dropped:
            logger.info(
                "%s: ignoring %d checkpoint key(s) of modules the class does not have: %s",
                type(self).__name__,
                len(dropped),
                format_keys(dropped),
            )
        fresh_set, dropped_set = set(fresh), set(dropped)
        return (
            [k for k in missing if k not in fresh_set],
            [k for k in unexpected if k not in dropped_set],
        )

    def _is_head(self) -> bool:
        return isinstance(getattr(self, self.base_model_prefix, None), nn.Module)

    def _fit_prefix(
        self, state_dict: dict[str, Tensor], expected: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        prefix = self.base_model_prefix + "."
        has_prefix = any(k.startswith(prefix) for k in state_dict)
        if self._is_head() and not has_prefix:
            # base checkpoint into a head class
            return {prefix + k: v for k, v in state_dict.items()}
        if not self._is_head() and has_prefix and not any(k.startswith(prefix) for k in expected):
            # head checkpoint into the base class: its head keys have nowhere to go
            dropped = [k for k in state_dict if not k.startswith(prefix)]
            if dropped:
                logger.info(
                    "%s: dropping %d head key(s) of the checkpoint: %s",
                    type(self).__name__,
                    len(dropped),
                    format_keys(dropped),
                )
            return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        return state_dict

    def _fit_inv_freq(
        self, state_dict: dict[str, Tensor], expected: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        want = [k for k in expected if is_inv_freq_key(k)]
        have = sorted((k for k in state_dict if is_inv_freq_key(k)), key=_layer_order)
        if not have or set(want) == set(have):
            return state_dict
        values = [state_dict[k] for k in have]
        needed = [k for k in want if k not in state_dict]
        if needed and any(not torch.equal(values[0], v) for v in values[1:]):
            raise ValueError(
                f"{type(self).__name__}: the checkpoint's per-layer rotary inv_freq differ, but "
                f"the model keeps {needed[0]!r}; cannot map them without losing values"
            )
        out = {
            k: v for k, v in state_dict.items() if not (is_inv_freq_key(k) and k not in expected)
        }
        for key in needed:
            out[key] = values[0]
        return out

    def _fit_tied(
        self, state_dict: dict[str, Tensor], expected: Mapping[str, Tensor], source: str
    ) -> dict[str, Tensor]:
        if not self._tying():
            return state_dict
        for target, src in self._tied_weights.items():
            if target not in expected or src not in state_dict:
                continue
            if target not in state_dict:
                state_dict[target] = state_dict[src]
            elif not torch.equal(state_dict[target], state_dict[src]):
                # One parameter cannot hold two values; the source wins, as in transformers.
                message = (
                    f"{type(self).__name__}: {source} stores {target} different from {src}, but "
                    f"config.tie_word_embeddings=True ties them; using {src}. Set "
                    "tie_word_embeddings=False to keep both"
                )
                _warn(message, stacklevel=4)
                state_dict[target] = state_dict[src]
        return state_dict

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
                if buf.is_floating_point() and _matches(name, self._keep_in_fp32):
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


def _layer_order(key: str) -> tuple[int, str]:
    found = re.search(r"\.layer\.(\d+)\.", key)
    return (int(found.group(1)) if found else -1, key)


__all__ = ["PreTrainedMixin", "resolve_dtype"]
