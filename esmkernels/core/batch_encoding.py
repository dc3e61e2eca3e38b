"""Batch assembly for `EsmTokenizer`: options, padding, truncation and the `BatchEncoding` dict.

`EsmTokenizer.__call__` turns texts into flat residue ids `[sum(counts)]` plus per-text counts
`[B]`; this module checks the transformers-style options (`padding`, `truncation`,
`max_length`, `pad_to_multiple_of`, `return_tensors`), applies truncation, and packs the ids into
padded int64 arrays `[B, L]` or one list per sequence, adding `<cls>`/`<eos>` and the attention
mask (1 = real token, 0 = padding). Padding is on the right, as in transformers' ESM tokenizer.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

# Accepted `padding` / `truncation` values (transformers' spellings) and what they mean here.
PADDING = {
    False: None,
    "do_not_pad": None,
    True: "longest",
    "longest": "longest",
    "max_length": "max_length",
}
TRUNCATION = {
    None: None,
    False: False,
    "do_not_truncate": False,
    True: True,
    "longest_first": True,
    "only_first": True,
}


class BatchEncoding(dict):
    """The output of `EsmTokenizer.__call__`: a dict with attribute access (`enc.input_ids`).

    Holds `input_ids` and (unless disabled) `attention_mask` (1 = real token, 0 = padding), as
    lists, numpy arrays `[B, L]` or torch tensors `[B, L]`, both int64.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: Any) -> BatchEncoding:
        """Move torch tensors to `device` in place and return self (like transformers)."""
        for key, value in self.items():
            if hasattr(value, "to") and not isinstance(value, np.ndarray):
                self[key] = value.to(device)
        return self


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building many small lists.

    Building ~1e5 lists makes the cyclic GC rescan every list built so far, over and over (3-5x
    slower); lists of ints hold no cycles.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def check_flag(name: str, value: Any, allowed: dict) -> Any:
    """`allowed[value]`, or a ValueError naming `name`, the value and the accepted spellings."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        if value in allowed:
            return allowed[value]
    options = ", ".join(repr(k) for k in allowed)
    raise ValueError(f"EsmTokenizer: {name}={value!r} is not one of {options}")


def check_int(name: str, value: Any, minimum: int) -> int | None:
    """None, or `value` as an int >= `minimum` (TypeError / ValueError naming `name`)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"EsmTokenizer: {name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"EsmTokenizer: {name}={value} must be >= {minimum}")
    return int(value)


@dataclass(frozen=True)
class Layout:
    """Resolved options of one tokenizer call (see `EsmTokenizer.__call__` for their meaning)."""

    pad_mode: str | None  # None, "longest" or "max_length"
    truncate: bool
    max_length: int | None
    multiple: int | None
    add_special_tokens: bool
    return_tensors: str | None
    return_attention_mask: bool

    @property
    def n_special(self) -> int:
        return 2 if self.add_special_tokens else 0

    @classmethod
    def resolve(
        cls,
        *,
        padding: Any,
        truncation: Any,
        max_length: Any,
        pad_to_multiple_of: Any,
        add_special_tokens: bool,
        return_tensors: Any,
        return_attention_mask: bool,
        model_max_length: int | None,
    ) -> Layout:
        """Check the options and apply transformers' defaults; errors name the option."""
        pad_mode = check_flag("padding", padding, PADDING)
        trunc = check_flag("truncation", truncation, TRUNCATION)
        n_special = 2 if add_special_tokens else 0
        max_length = check_int("max_length", max_length, 0)
        multiple = check_int("pad_to_multiple_of", pad_to_multiple_of, 1)
        if return_tensors not in (None, "np", "pt"):
            raise ValueError(
                f"EsmTokenizer: return_tensors={return_tensors!r} is not one of None, 'np', 'pt'"
            )
        if trunc is None:
            trunc = max_length is not None and padding is False
        if (trunc or pad_mode == "max_length") and max_length is None:
            max_length = model_max_length
        if pad_mode == "max_length" and max_length is None:
            raise ValueError(
                "EsmTokenizer: padding='max_length' needs max_length (or model_max_length)"
            )
        if trunc and pad_mode and multiple and max_length is not None and max_length % multiple:
            raise ValueError(
                f"EsmTokenizer: truncating to max_length={max_length} and padding to a multiple "
                f"of pad_to_multiple_of={multiple} contradict each other"
            )
        if trunc and max_length is not None and max_length < n_special:
            raise ValueError(
                f"EsmTokenizer: max_length={max_length} leaves no room for the {n_special} "
                "special tokens <cls> and <eos>"
            )
        return cls(
            pad_mode,
            bool(trunc),
            max_length,
            multiple,
            bool(add_special_tokens),
            return_tensors,
            bool(return_attention_mask),
        )

    def truncate_ids(self, flat: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cut residues from each sequence's end so it holds at most `max_length` tokens."""
        if not self.truncate or self.max_length is None or not counts.size:
            return flat, counts
        limit = self.max_length - self.n_special
        if counts.max() <= limit:
            return flat, counts
        within = np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)
        return flat[within < limit], np.minimum(counts, limit)

    def target(self, lengths: np.ndarray) -> int | None:
        """The padded length in tokens, or None when not padding."""
        target = None
        if self.pad_mode == "longest":
            target = int(lengths.max()) if lengths.size else 0
        elif self.pad_mode == "max_length":
            target = self.max_length
        if target is not None and self.multiple is not None:
            target = -(-target // self.multiple) * self.multiple
        return target


def pack_arrays(
    flat: np.ndarray, counts: np.ndarray, layout: Layout, ids: tuple[int, int, int]
) -> BatchEncoding:
    """Residue ids `[sum(counts)]` to int64 arrays `[B, L]`; all rows must end equal.

    `ids` is (pad, cls, eos).
    """
    pad_id, cls_id, eos_id = ids
    n_special = layout.n_special
    lengths = counts + n_special
    target = layout.target(lengths)
    padded = lengths if target is None else np.maximum(lengths, target)
    width = int(padded.max()) if padded.size else (target or 0)
    if padded.size and padded.min() != width:
        raise ValueError(
            f"EsmTokenizer: returning tensors needs equal lengths but they range from "
            f"{int(padded.min())} to {width} tokens; pass padding=True "
            "(or truncation=True with max_length)"
        )
    cols = np.arange(width)
    out = np.full((len(counts), width), pad_id, dtype=np.int64)
    first = n_special // 2
    # Row-major boolean assignment fills each row's residue slots in order.
    out[(cols >= first) & (cols < (counts + first)[:, None])] = flat
    if layout.add_special_tokens:
        rows = np.arange(len(counts))
        out[rows, 0] = cls_id
        out[rows, counts + 1] = eos_id
    enc = BatchEncoding(input_ids=out)
    if layout.return_attention_mask:
        enc["attention_mask"] = (cols < lengths[:, None]).astype(np.int64)
    return enc


def pack_lists(
    flat: np.ndarray, counts: np.ndarray, layout: Layout, ids: tuple[int, int, int]
) -> BatchEncoding:
    """Residue ids `[sum(counts)]` to one list of ids per sequence (and masks)."""
    pad_id, cls_id, eos_id = ids
    target = layout.target(counts + layout.n_special)
    values = flat.tolist()
    ends = np.cumsum(counts).tolist()
    lens = counts.tolist()
    with gc_paused():
        if layout.add_special_tokens:
            cls, eos = [cls_id], [eos_id]
            rows = [cls + values[e - c : e] + eos for e, c in zip(ends, lens, strict=True)]
        else:
            rows = [values[e - c : e] for e, c in zip(ends, lens, strict=True)]
        masks = [[1] * len(row) for row in rows] if layout.return_attention_mask else None
        if target is not None:
            for k, row in enumerate(rows):
                if len(row) < target:
                    if masks is not None:
                        masks[k] += [0] * (target - len(row))
                    row += [pad_id] * (target - len(row))
    enc = BatchEncoding(input_ids=rows)
    if masks is not None:
        enc["attention_mask"] = masks
    return enc


__all__ = ["BatchEncoding", "Layout", "check_int", "pack_arrays", "pack_lists"]
