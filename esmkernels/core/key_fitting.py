"""Which checkpoint key goes where: steps 1-4 of `PreTrainedMixin.from_pretrained`.

`KeyFitting` is a base class of `esmkernels.core.modeling_utils.PreTrainedMixin`; it reads the
class attributes documented there (`base_model_prefix`, `_tied_weights`, `_ignore_missing`,
`_ignore_unexpected`, `_init_missing_heads`) and leaves tensors untouched: it renames keys,
checks shapes and reports missing / unexpected keys, and the mixin then puts the tensors in
place. A model class may override a step (ESMFold overrides `_fit_prefix`).

This module is a foundation leaf: it imports nothing from `models/`, `ops/` or `reference/`.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from esmkernels.core.fair_esm import format_keys
from esmkernels.core.hf_checkpoint import is_inv_freq_key

logger = logging.getLogger("esmkernels.core.modeling_utils")  # one logger for all of loading


def _warn(message: str, stacklevel: int) -> None:
    """`warnings.warn` pointing `stacklevel` frames up from the caller, and the same log line."""
    warnings.warn(message, stacklevel=stacklevel + 1)
    logger.warning(message)


def matches_any(key: str, patterns: Iterable[str]) -> bool:
    """True when one of the regexes `patterns` is found in `key`."""
    return any(re.search(p, key) for p in patterns)


class KeyFitting:
    """Steps 1-4 of loading (see `PreTrainedMixin`); `_fit_state_dict` runs them all."""

    base_model_prefix: ClassVar[str]
    _tied_weights: ClassVar[dict[str, str]]
    _ignore_missing: ClassVar[tuple[str, ...]]
    _ignore_unexpected: ClassVar[tuple[str, ...]]
    _init_missing_heads: ClassVar[bool]
    config: Any

    def _tying(self) -> bool:
        return bool(getattr(getattr(self, "config", None), "tie_word_embeddings", True))

    def _fit_state_dict(
        self, state_dict: Mapping[str, Tensor], *, strict: bool, source: str
    ) -> tuple[dict[str, Tensor], list[str], list[str]]:
        """Steps 1-4 (module docstring of `esmkernels.core.modeling_utils`): returns
        `(loadable, missing, unexpected)`, `loadable` holding the model's keys the state dict
        has values for (tied targets filled in), still in the stored dtype and place."""
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
        missing = [
            k for k in expected if k not in mapped and not matches_any(k, self._ignore_missing)
        ]
        unexpected = [
            k for k in mapped if k not in expected and not matches_any(k, self._ignore_unexpected)
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
        return loadable, missing, unexpected

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


def _layer_order(key: str) -> tuple[int, str]:
    found = re.search(r"\.layer\.(\d+)\.", key)
    return (int(found.group(1)) if found else -1, key)


__all__ = ["KeyFitting", "matches_any"]
