"""Model outputs: dataclasses that read like HF `ModelOutput`s.

Every output is a dataclass whose fields carry transformers' attribute names, and it can be used
three ways, exactly as HF outputs can:

* by attribute: `out.logits`;
* by key: `out["logits"]` (a field that is None is absent, as in HF: `KeyError`);
* by position, like a tuple of its non-None fields in declaration order: `out[0]`,
  `out[:2]`, `out.to_tuple()`. With `labels` given, `out[0]` is the loss; without, the logits.

Iterating an output yields its keys (the present field names), as iterating an HF output does,
so `dict(out)` and `{**out}` work.

`ModelOutput` is the generic base: any dataclass deriving from it (ESMFold's output included) gets
the same behaviour.

Example:
    >>> import torch
    >>> out = MaskedLMOutput(logits=torch.zeros(1, 3, 33))
    >>> out[0] is out["logits"] is out.logits
    True
    >>> list(out.keys()), len(out.to_tuple())
    (['logits'], 1)

This module is a foundation leaf: it imports nothing from `models/`, `ops/` or `reference/`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch


class ModelOutput:
    """Base for output dataclasses: attribute, key and tuple-position access.

    Subclasses must be decorated with `@dataclass`; all their fields should default to None.
    """

    def _present(self) -> list[tuple[str, Any]]:
        if not dataclasses.is_dataclass(self):
            raise TypeError(f"{type(self).__name__} must be decorated with @dataclass")
        return [
            (f.name, getattr(self, f.name))
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        ]

    def keys(self) -> list[str]:
        """Names of the fields that are not None, in declaration order."""
        return [k for k, _ in self._present()]

    def values(self) -> list[Any]:
        return [v for _, v in self._present()]

    def items(self) -> list[tuple[str, Any]]:
        return self._present()

    def to_tuple(self) -> tuple[Any, ...]:
        """The non-None fields, in declaration order (what `return_dict=False` returns)."""
        return tuple(self.values())

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            present = dict(self._present())
            if key not in present:
                raise KeyError(
                    f"{type(self).__name__} has no value for {key!r}; present: {list(present)}"
                )
            return present[key]
        if isinstance(key, (int, slice)):
            return self.to_tuple()[key]
        raise TypeError(
            f"{type(self).__name__} indices must be str, int or slice, not {type(key).__name__}"
        )

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str) or key not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(f"{type(self).__name__} has no field {key!r}")
        setattr(self, key, value)

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._present())


@dataclass(eq=False)
class BaseModelOutputWithPooling(ModelOutput):
    """Output of `EsmModel`.

    Attributes:
        last_hidden_state: [B, L, hidden_size], after the final `emb_layer_norm_after`.
        pooler_output: [B, hidden_size], tanh(dense(first token)); None without a pooler.
        hidden_states: num_hidden_layers + 1 tensors [B, L, hidden_size]: the embedding output,
            then each layer's output (the last one after `emb_layer_norm_after`, as in HF).
        attentions: num_hidden_layers tensors [B, H, L, L] of attention probabilities.
    """

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(eq=False)
class _LossLogitsOutput(ModelOutput):
    """Fields shared by the task-model outputs (kept separate classes, as in HF)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(eq=False)
class MaskedLMOutput(_LossLogitsOutput):
    """Output of `EsmForMaskedLM`.

    Attributes:
        loss: scalar cross-entropy over positions whose label is not -100 (with `labels`).
        logits: [B, L, vocab_size].
        hidden_states, attentions: as in `BaseModelOutputWithPooling`.
    """


@dataclass(eq=False)
class SequenceClassifierOutput(_LossLogitsOutput):
    """Output of `EsmForSequenceClassification`.

    Attributes:
        loss: scalar (with `labels`): MSE, cross-entropy or BCE-with-logits by `problem_type`.
        logits: [B, num_labels].
        hidden_states, attentions: as in `BaseModelOutputWithPooling`.
    """


@dataclass(eq=False)
class TokenClassifierOutput(_LossLogitsOutput):
    """Output of `EsmForTokenClassification`.

    Attributes:
        loss: scalar cross-entropy over positions whose label is not -100 (with `labels`).
        logits: [B, L, num_labels].
        hidden_states, attentions: as in `BaseModelOutputWithPooling`.
    """


__all__ = [
    "BaseModelOutputWithPooling",
    "MaskedLMOutput",
    "ModelOutput",
    "SequenceClassifierOutput",
    "TokenClassifierOutput",
]
