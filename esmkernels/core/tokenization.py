"""The ESM tokenizer: one token per residue, vectorised, id-compatible with transformers.

ESM-1b, ESM-1v, ESM-2 and ESMFold share a 33-token vocabulary (`ESM_VOCAB`, HF order, stored one
token per line in `vocab.txt`). A protein sequence is encoded as `<cls> residues... <eos>`; inline
special tokens such as `<mask>` are single tokens and whitespace is ignored.

Compatibility with transformers' `EsmTokenizer`:

* For every text made of vocabulary letters, whitespace and inline vocabulary tokens (`<mask>`,
  `<unk>`, `<pad>`, `<cls>`, `<eos>`, `<null_1>`), `input_ids`, `attention_mask`, padding and
  truncation equal transformers' outputs, and so do `decode`, `tokenize`,
  `get_special_tokens_mask`, `build_inputs_with_special_tokens` and
  `create_token_type_ids_from_sequences` (transformers 5 semantics: special tokens counted).
* Characters outside the vocabulary (digits, `*`, lower-case letters: the vocabulary is upper case
  and, like transformers, we do not change case) become exactly one `<unk>` per character, so
  position i of the sequence is always token i + 1. transformers instead turns a run of adjacent
  unknown characters ("mkt", "9*") into a single `<unk>`, which shifts every later residue; the
  two agree whenever no two unknown characters are adjacent. `strict=True` raises instead.
* `decode` joins tokens with single spaces, as transformers does ("<cls> M K <eos>"); with
  `skip_special_tokens=True` and the spaces removed it gives the sequence back:
  `tok.decode(tok.encode(s), skip_special_tokens=True).replace(" ", "") == s` for any `s` made of
  vocabulary letters.
* Deliberate differences, all on inputs transformers accepts silently: ids outside the vocabulary
  given to `decode`/`convert_ids_to_tokens` raise ValueError (transformers prints `<unk>`);
  `padding="max_length"` without a length, and `max_length` smaller than the special tokens with
  truncation, raise ValueError; an empty batch returns empty lists.

The empty sequence encodes to `<cls> <eos>`, as in transformers; models reject it later.

Speed: texts that are plain ASCII are encoded together through a 256-entry numpy lookup table over
their bytes; inline special tokens are first replaced by one stand-in control character each (a
regex substitution), so they take the same path. Anything else (non-ASCII text, or text that
already contains a stand-in character) goes through a per-character scan, which is also the
reference the fast path is tested against.

This module is a foundation leaf: it imports nothing from `models/`, `ops/` or `reference/`.

Example:
    >>> from esmkernels.core.tokenization import EsmTokenizer
    >>> tok = EsmTokenizer()
    >>> tok("MKT<mask>A")["input_ids"]
    [0, 20, 15, 11, 32, 5, 2]
    >>> batch = tok(["MKTA", "MK"], padding=True, return_tensors="pt")
    >>> batch.input_ids.shape, batch.attention_mask.tolist()
    (torch.Size([2, 6]), [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
"""

from __future__ import annotations

import contextlib
import gc
import json
import operator
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from esmkernels.core.configuration import ESM_VOCAB

VOCAB_FILE_NAME = "vocab.txt"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"

# transformers writes "no limit" as int(1e30); anything this large means unlimited here.
_UNLIMITED = 10**18
# Lookup-table codes that are not token ids.
_WHITESPACE = -1
_INVALID = -2
# Non-whitespace ASCII control characters, used as one-character stand-ins for multi-character
# tokens so that texts with inline `<mask>` etc. take the vectorised path.
_STAND_INS = tuple(chr(c) for c in (*range(32), 127) if not chr(c).isspace())

# Accepted `padding` / `truncation` values (transformers' spellings) and what they mean here.
_PADDING = {
    False: None,
    "do_not_pad": None,
    True: "longest",
    "longest": "longest",
    "max_length": "max_length",
}
_TRUNCATION = {
    None: None,
    False: False,
    "do_not_truncate": False,
    True: True,
    "longest_first": True,
    "only_first": True,
}


class _Rescan(Exception):
    """Internal: the vectorised path saw an unknown character under strict=True."""


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
def _gc_paused() -> Iterator[None]:
    # Building ~1e5 lists makes the cyclic GC rescan every list built so far, over and over
    # (3-5x slower); lists of ints hold no cycles, so pause it.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_vocab_file(path: str | os.PathLike) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f.read().splitlines()]


def _check_flag(name: str, value: Any, allowed: dict) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        if value in allowed:
            return allowed[value]
    options = ", ".join(repr(k) for k in allowed)
    raise ValueError(f"EsmTokenizer: {name}={value!r} is not one of {options}")


def _check_int(name: str, value: Any, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"EsmTokenizer: {name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"EsmTokenizer: {name}={value} must be >= {minimum}")
    return int(value)


def _as_id(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(f"EsmTokenizer: token ids must be ints, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            f"EsmTokenizer: token ids must be ints, got {type(value).__name__} {value!r}"
        ) from None


class EsmTokenizer:
    """Tokenizer for ESM-1b / ESM-1v / ESM-2 / ESMFold (the HF `vocab.txt` format).

    Args:
        vocab_file: a `vocab.txt` (one token per line); None uses the built-in `ESM_VOCAB`.
        model_max_length: default length for `truncation=True` without `max_length`
            (None: unlimited, like transformers' ESM tokenizers).

    Example:
        >>> tok = EsmTokenizer()
        >>> enc = tok(["MKTAYIAK", "MK<mask>"], padding="max_length", max_length=8,
        ...           truncation=True, return_tensors="np")
        >>> enc["input_ids"].tolist()
        [[0, 20, 15, 11, 5, 19, 12, 2], [0, 20, 15, 32, 2, 1, 1, 1]]
        >>> tok.decode(enc["input_ids"][1], skip_special_tokens=True)
        'M K'
    """

    # Set from the vocabulary: `cls_token`, `pad_token`, `eos_token`, `unk_token`, `mask_token`
    # (strings) and `cls_token_id`, `pad_token_id`, ... (ints).
    cls_token_id: int
    pad_token_id: int
    eos_token_id: int
    unk_token_id: int
    mask_token_id: int

    vocab_files_names = {"vocab_file": VOCAB_FILE_NAME}
    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"
    truncation_side = "right"
    # Same names, values and order as transformers' special-token attributes for ESM.
    _SPECIAL = (
        ("eos_token", "<eos>"),
        ("unk_token", "<unk>"),
        ("pad_token", "<pad>"),
        ("cls_token", "<cls>"),
        ("mask_token", "<mask>"),
    )

    def __init__(
        self, vocab_file: str | os.PathLike | None = None, *, model_max_length: int | None = None
    ) -> None:
        tokens = list(ESM_VOCAB) if vocab_file is None else _read_vocab_file(vocab_file)
        self._set_vocab(tokens, source=str(vocab_file) if vocab_file is not None else "ESM_VOCAB")
        self.model_max_length = _check_int("model_max_length", model_max_length, 1)
        self.vocab_file = None if vocab_file is None else str(vocab_file)

    # ------------------------------------------------------------------ vocabulary

    def _set_vocab(self, tokens: list[str], source: str) -> None:
        seen: dict[str, int] = {}
        for line, token in enumerate(tokens, start=1):
            if not token or any(ch.isspace() for ch in token):
                raise ValueError(f"{source}: line {line} holds no token or contains whitespace")
            if token in seen:
                raise ValueError(
                    f"{source}: token {token!r} on line {line} repeats line {seen[token] + 1}"
                )
            seen[token] = line - 1
        for attr, token in self._SPECIAL:
            if token not in seen:
                raise ValueError(f"{source}: the vocabulary lacks the special token {token!r}")
            # cls_token / cls_token_id, ... as plain attributes, as in transformers.
            setattr(self, attr, token)
            setattr(self, attr + "_id", seen[token])
        self._tokens = tuple(tokens)
        self._token_to_id = seen
        self._special_ids = frozenset(seen[t] for _, t in self._SPECIAL)

        lut = np.full(256, _INVALID, dtype=np.int16)
        for c in range(128):
            if chr(c).isspace():
                lut[c] = _WHITESPACE
        multi = sorted((t for t in tokens if len(t) > 1), key=len, reverse=True)
        for token, i in seen.items():
            if len(token) == 1 and token.isascii():
                lut[ord(token)] = i
        # Longest first, so that a token that is a prefix of another never wins the match.
        self._split_re = re.compile("(" + "|".join(map(re.escape, multi)) + ")") if multi else None
        starts = sorted({t[0] for t in multi})
        self._start_re = re.compile("[" + "".join(map(re.escape, starts)) + "]") if multi else None
        self._stand_in: dict[str, str] = {}
        stand_ins = [c for c in _STAND_INS if c not in seen]
        if len(multi) <= len(stand_ins):
            self._stand_in = dict(zip(multi, stand_ins, strict=False))
            for token, ch in self._stand_in.items():
                lut[ord(ch)] = seen[token]
        used = "".join(self._stand_in.values())
        self._stand_in_re = re.compile("[" + re.escape(used) + "]") if used else None
        self._lut = lut

    @property
    def vocab_size(self) -> int:
        """Number of tokens in the vocabulary (33 for ESM)."""
        return len(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def get_vocab(self) -> dict[str, int]:
        """A copy of the token -> id mapping."""
        return dict(self._token_to_id)

    @property
    def all_special_tokens(self) -> list[str]:
        """`['<eos>', '<unk>', '<pad>', '<cls>', '<mask>']`, in transformers' order."""
        return [token for _, token in self._SPECIAL]

    @property
    def all_special_ids(self) -> list[int]:
        return [self._token_to_id[token] for _, token in self._SPECIAL]

    def __repr__(self) -> str:
        return (
            f"EsmTokenizer(vocab_size={self.vocab_size}, model_max_length={self.model_max_length})"
        )

    # ------------------------------------------------------------------ files

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> EsmTokenizer:
        """Load from a directory holding `vocab.txt` (a saved HF tokenizer or ours), or a vocab file.

        `model_max_length` is read from `tokenizer_config.json` when the directory has one.
        Nothing is downloaded: fetch hub files first (e.g. `huggingface_hub.snapshot_download`).
        """
        path = Path(path)
        if path.is_dir():
            vocab = path / VOCAB_FILE_NAME
            if not vocab.is_file():
                raise FileNotFoundError(f"EsmTokenizer.from_pretrained: no {vocab}")
            max_len = None
            config = path / TOKENIZER_CONFIG_NAME
            if config.is_file():
                value = json.loads(config.read_text(encoding="utf-8")).get("model_max_length")
                if isinstance(value, int) and 0 < value < _UNLIMITED:
                    max_len = value
            return cls(vocab, model_max_length=max_len)
        if path.is_file():
            return cls(path)
        raise FileNotFoundError(
            f"EsmTokenizer.from_pretrained: {str(path)!r} is neither a directory nor a vocab file "
            "(esmkernels never downloads; fetch hub files first)"
        )

    def save_vocabulary(
        self, save_directory: str | os.PathLike, filename_prefix: str | None = None
    ) -> tuple[str]:
        """Write `[prefix-]vocab.txt` (one token per line, as transformers does); return its path."""
        name = (filename_prefix + "-" if filename_prefix else "") + VOCAB_FILE_NAME
        path = os.path.join(save_directory, name)
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(self._tokens))
        return (path,)

    def save_pretrained(self, save_directory: str | os.PathLike) -> tuple[str, ...]:
        """Write `tokenizer_config.json` and `vocab.txt`, loadable here and by transformers."""
        os.makedirs(save_directory, exist_ok=True)
        config: dict[str, Any] = {"tokenizer_class": "EsmTokenizer"}
        config.update({attr: token for attr, token in self._SPECIAL})
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        config_path = os.path.join(save_directory, TOKENIZER_CONFIG_NAME)
        with open(config_path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")
        return (config_path, *self.save_vocabulary(save_directory))

    # ------------------------------------------------------------------ token <-> id

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int]:
        """Token(s) to id(s); anything outside the vocabulary maps to `<unk>` (as in transformers)."""
        unk = self.unk_token_id
        if isinstance(tokens, str):
            return self._token_to_id.get(tokens, unk)
        return [self._token_to_id.get(t, unk) for t in tokens]

    def convert_ids_to_tokens(
        self, ids: int | Iterable[int], skip_special_tokens: bool = False
    ) -> str | list[str]:
        """Id(s) to token(s). Ids outside `[0, vocab_size)` raise ValueError."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if not isinstance(ids, (list, tuple)):
            return self._token(_as_id(ids))
        out = []
        for value in ids:
            i = _as_id(value)
            if skip_special_tokens and i in self._special_ids:
                continue
            out.append(self._token(i))
        return out

    def _token(self, i: int) -> str:
        if not 0 <= i < len(self._tokens):
            raise ValueError(f"EsmTokenizer: token id {i} is outside [0, {len(self._tokens)})")
        return self._tokens[i]

    def convert_tokens_to_string(self, tokens: Iterable[str]) -> str:
        return " ".join(tokens)

    def decode(self, token_ids: Any, skip_special_tokens: bool = False) -> str:
        """Ids `[L]` (list, numpy array or tensor) to text: tokens joined by single spaces.

        Example:
            >>> tok = EsmTokenizer()
            >>> tok.decode([0, 20, 15, 32, 2]), tok.decode([0, 20, 15, 32, 2], True)
            ('<cls> M K <mask> <eos>', 'M K')
        """
        tokens = self.convert_ids_to_tokens(token_ids, skip_special_tokens=skip_special_tokens)
        if isinstance(tokens, str):
            return tokens
        return " ".join(tokens)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False) -> list[str]:
        """`decode` for each row of `sequences` (`[B, L]` list, array or tensor)."""
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        return [self.decode(ids, skip_special_tokens=skip_special_tokens) for ids in sequences]

    # ------------------------------------------------------------------ special tokens

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """`<cls> ids0 <eos>`, or `<cls> ids0 <eos> ids1 <eos>` for a pair."""
        out = [self.cls_token_id, *token_ids_0, self.eos_token_id]
        if token_ids_1 is not None:
            out += [*token_ids_1, self.eos_token_id]
        return out

    def get_special_tokens_mask(
        self,
        token_ids_0: list[int],
        token_ids_1: list[int] | None = None,
        already_has_special_tokens: bool = False,
    ) -> list[int]:
        """1 where `build_inputs_with_special_tokens` adds a token, else 0.

        With `already_has_special_tokens=True`, 1 marks every id among `all_special_ids`
        (`<cls> <pad> <eos> <unk> <mask>`, not `<null_1>`), as in transformers.
        """
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise ValueError(
                    "EsmTokenizer.get_special_tokens_mask: token_ids_1 cannot be given when "
                    "already_has_special_tokens=True"
                )
            return [1 if _as_id(i) in self._special_ids else 0 for i in token_ids_0]
        mask = [1] + [0] * len(token_ids_0) + [1]
        if token_ids_1 is not None:
            mask += [0] * len(token_ids_1) + [1]
        return mask

    def create_token_type_ids_from_sequences(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """Zeros over `<cls> ids0 <eos>`, then ones over `ids1 <eos>` (transformers 5 semantics)."""
        first = [0] * (len(token_ids_0) + 2)
        if token_ids_1 is None:
            return first
        return first + [1] * (len(token_ids_1) + 1)

    # ------------------------------------------------------------------ encoding

    def _scan(self, text: str) -> Iterator[tuple[str, int, int | None]]:
        """(token, position in `text`, id or None if unknown) for each token, whitespace skipped.

        The per-character reference path: readable, and what the vectorised path must equal.
        """
        pieces = self._split_re.split(text) if self._split_re is not None else [text]
        pos = 0
        for k, piece in enumerate(pieces):
            if k % 2:
                yield piece, pos, self._token_to_id[piece]
            else:
                for j, ch in enumerate(piece):
                    if not ch.isspace():
                        yield ch, pos + j, self._token_to_id.get(ch)
            pos += len(piece)

    def _encode_slow(self, text: str, strict: bool = False, index: int | None = None) -> list[int]:
        unk = self.unk_token_id
        ids = []
        for token, pos, i in self._scan(text):
            if i is None:
                if strict:
                    self._raise_invalid(token, pos, index)
                i = unk
            ids.append(i)
        return ids

    def _raise_invalid(self, ch: str, pos: int, index: int | None) -> None:
        where = f"position {pos}" + ("" if index is None else f" of sequence {index}")
        hint = ""
        if ch.upper() in self._token_to_id and ch.upper() != ch:
            hint = " (the vocabulary is upper case: upper-case the sequence first)"
        raise ValueError(
            f"EsmTokenizer: character {ch!r} at {where} is not in the vocabulary{hint}; "
            "pass strict=False to map it to <unk>"
        )

    def tokenize(self, text: str) -> list[str]:
        """Tokens of `text` without special tokens added; unknown characters are kept as they are.

        Example:
            >>> EsmTokenizer().tokenize("MK <mask>x")
            ['M', 'K', '<mask>', 'x']
        """
        if not isinstance(text, str):
            raise TypeError(f"EsmTokenizer.tokenize: expected a str, got {type(text).__name__}")
        return [token for token, _, _ in self._scan(text)]

    def _vectorisable(self, text: str) -> bool:
        """Whether `text` can take the lookup-table path (see the module docstring)."""
        if not text.isascii():
            return False
        if self._stand_in_re is not None and self._stand_in_re.search(text):
            return False
        return bool(self._stand_in) or self._start_re is None or not self._start_re.search(text)

    def _encode_ascii(self, texts: list[str], strict: bool) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised: ASCII texts (multi-character tokens already replaced by stand-ins).

        Returns flat ids `[sum(counts)]` (int64) and per-text token counts `[len(texts)]`.
        Raises `_Rescan` when `strict` and some character is not in the vocabulary.
        """
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        codes = np.frombuffer("".join(texts).encode("ascii"), dtype=np.uint8)
        vals = self._lut[codes].astype(np.int64)
        bad = vals == _INVALID
        if bad.any():
            if strict:
                raise _Rescan
            vals[bad] = self.unk_token_id
        keep = vals >= 0
        if keep.all():
            return vals, lengths
        kept = np.concatenate(([0], np.cumsum(keep)))
        ends = np.cumsum(lengths)
        counts = kept[ends] - kept[ends - lengths]
        return vals[keep], counts

    def _encode_many(
        self, texts: Sequence[str], strict: bool, batched: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Flat ids `[sum(counts)]` and per-text counts `[len(texts)]`, no special tokens added."""
        n = len(texts)
        joined = "".join(texts)
        fast = list(range(n)) if self._vectorisable(joined) else None
        if fast is None:
            fast = [k for k, t in enumerate(texts) if self._vectorisable(t)]
        prepared = [texts[k] for k in fast]
        if self._stand_in and self._start_re.search(joined):
            sub, table, start = self._split_re.sub, self._stand_in, self._start_re.search
            prepared = [sub(lambda m: table[m.group()], t) if start(t) else t for t in prepared]
        try:
            flat, counts = self._encode_ascii(prepared, strict)
            slow = [] if len(fast) == n else sorted(set(range(n)).difference(fast))
            slow_ids = [self._encode_slow(texts[k], strict, k if batched else None) for k in slow]
        except _Rescan:
            # Errors are rare: find the first offending sequence and character the slow way.
            for k, t in enumerate(texts):
                self._encode_slow(t, strict=True, index=k if batched else None)
            raise AssertionError("unreachable: no invalid character found on rescan") from None
        if not slow:
            return flat, counts
        # Mixed batch: scatter the vectorised results, then fill in the rest one by one.
        all_counts = np.zeros(n, dtype=np.int64)
        all_counts[fast] = counts
        all_counts[slow] = [len(ids) for ids in slow_ids]
        starts = np.concatenate(([0], np.cumsum(all_counts)))
        out = np.empty(int(starts[-1]), dtype=np.int64)
        shift = np.repeat(starts[fast] - (np.cumsum(counts) - counts), counts)
        out[np.arange(len(flat)) + shift] = flat
        for k, ids in zip(slow, slow_ids, strict=True):
            out[starts[k] : starts[k + 1]] = ids
        return out, all_counts

    def encode(
        self,
        text: str,
        add_special_tokens: bool = True,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        strict: bool = False,
    ) -> list[int]:
        """Ids of one sequence: `self(text, ...)["input_ids"]`.

        Example:
            >>> EsmTokenizer().encode("MK9")
            [0, 20, 15, 3, 2]
        """
        if not isinstance(text, str):
            raise TypeError(f"EsmTokenizer.encode: expected a str, got {type(text).__name__}")
        return self(
            text,
            add_special_tokens=add_special_tokens,
            truncation=truncation,
            max_length=max_length,
            strict=strict,
        )["input_ids"]

    def __call__(
        self,
        text: str | Sequence[str],
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        add_special_tokens: bool = True,
        return_tensors: str | None = None,
        return_attention_mask: bool = True,
        strict: bool = False,
        pad_to_multiple_of: int | None = None,
    ) -> BatchEncoding:
        """Encode one sequence or a batch.

        Args:
            text: a sequence (str) or a list/tuple of them. Whitespace is ignored; inline vocab
                tokens (`<mask>`, ...) are single tokens; every other character is one `<unk>`.
            padding: False / "do_not_pad"; True / "longest" (to the longest in the batch);
                "max_length" (to `max_length`; longer sequences stay longer, as in transformers).
                Padding is `<pad>` on the right.
            truncation: True / "longest_first" cuts residues from the end so that each output
                holds at most `max_length` tokens including `<cls>`/`<eos>` (without
                `max_length`: `model_max_length`, or no limit). None (default) truncates when
                `max_length` is given and `padding` is False (transformers' rule).
            max_length: length limit for truncation and "max_length" padding.
            add_special_tokens: wrap each sequence in `<cls>` ... `<eos>`.
            return_tensors: None (lists), "np" or "pt": int64 `[B, L]`, also for a single str.
            return_attention_mask: include `attention_mask` (1 = real token, 0 = padding).
            strict: raise ValueError naming the first character outside the vocabulary (its
                0-based index in the string, and the sequence index for a batch).
            pad_to_multiple_of: round the padded length up to a multiple of this.

        Returns:
            BatchEncoding with `input_ids` and `attention_mask`; for a single str with
            return_tensors=None these are flat lists.

        Example:
            >>> tok = EsmTokenizer()
            >>> tok(["MKT", "M"], padding=True)["attention_mask"]
            [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
        """
        single = isinstance(text, str)
        if single:
            texts: Sequence[str] = [text]
        elif isinstance(text, (list, tuple)):
            texts = text
            for k, t in enumerate(texts):
                if not isinstance(t, str):
                    raise TypeError(
                        f"EsmTokenizer: sequence {k} is a {type(t).__name__}, expected a str"
                    )
        else:
            raise TypeError(
                f"EsmTokenizer: expected a str or a list of str, got {type(text).__name__}"
            )
        pad_mode = _check_flag("padding", padding, _PADDING)
        trunc = _check_flag("truncation", truncation, _TRUNCATION)
        n_special = 2 if add_special_tokens else 0
        max_length = _check_int("max_length", max_length, 0)
        multiple = _check_int("pad_to_multiple_of", pad_to_multiple_of, 1)
        if return_tensors not in (None, "np", "pt"):
            raise ValueError(
                f"EsmTokenizer: return_tensors={return_tensors!r} is not one of None, 'np', 'pt'"
            )
        if trunc is None:
            trunc = max_length is not None and padding is False
        if (trunc or pad_mode == "max_length") and max_length is None:
            max_length = self.model_max_length
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

        flat, counts = self._encode_many(texts, strict=bool(strict), batched=not single)
        if (
            trunc
            and max_length is not None
            and counts.size
            and counts.max() > max_length - n_special
        ):
            limit = max_length - n_special
            within = np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)
            flat = flat[within < limit]
            counts = np.minimum(counts, limit)
        lengths = counts + n_special
        target = None
        if pad_mode == "longest":
            target = int(lengths.max()) if lengths.size else 0
        elif pad_mode == "max_length":
            target = max_length
        if target is not None and multiple is not None:
            target = -(-target // multiple) * multiple
        args = (flat, counts, add_special_tokens, target, return_attention_mask)
        if return_tensors is None:
            with _gc_paused():
                enc = self._pack_lists(*args)
        else:
            enc = self._pack_arrays(*args)
        if return_tensors == "pt":
            import torch

            enc.update({key: torch.from_numpy(value) for key, value in enc.items()})
        elif return_tensors is None and single:
            enc.update({key: value[0] for key, value in enc.items()})
        return enc

    def _pack_arrays(
        self,
        flat: np.ndarray,
        counts: np.ndarray,
        add_special_tokens: bool,
        target: int | None,
        return_attention_mask: bool,
    ) -> BatchEncoding:
        """Residue ids `[sum(counts)]` to int64 arrays `[B, L]`; all rows must end equal."""
        n_special = 2 if add_special_tokens else 0
        lengths = counts + n_special
        padded = lengths if target is None else np.maximum(lengths, target)
        width = int(padded.max()) if padded.size else (target or 0)
        if padded.size and padded.min() != width:
            raise ValueError(
                f"EsmTokenizer: returning tensors needs equal lengths but they range from "
                f"{int(padded.min())} to {width} tokens; pass padding=True "
                "(or truncation=True with max_length)"
            )
        cols = np.arange(width)
        ids = np.full((len(counts), width), self.pad_token_id, dtype=np.int64)
        first = n_special // 2
        # Row-major boolean assignment fills each row's residue slots in order.
        ids[(cols >= first) & (cols < (counts + first)[:, None])] = flat
        if add_special_tokens:
            rows = np.arange(len(counts))
            ids[rows, 0] = self.cls_token_id
            ids[rows, counts + 1] = self.eos_token_id
        enc = BatchEncoding(input_ids=ids)
        if return_attention_mask:
            enc["attention_mask"] = (cols < lengths[:, None]).astype(np.int64)
        return enc

    def _pack_lists(
        self,
        flat: np.ndarray,
        counts: np.ndarray,
        add_special_tokens: bool,
        target: int | None,
        return_attention_mask: bool,
    ) -> BatchEncoding:
        """Residue ids `[sum(counts)]` to one list of ids per sequence (and masks)."""
        values = flat.tolist()
        ends = np.cumsum(counts).tolist()
        lens = counts.tolist()
        if add_special_tokens:
            cls, eos = [self.cls_token_id], [self.eos_token_id]
            rows = [cls + values[e - c : e] + eos for e, c in zip(ends, lens, strict=True)]
        else:
            rows = [values[e - c : e] for e, c in zip(ends, lens, strict=True)]
        masks = [[1] * len(row) for row in rows] if return_attention_mask else None
        if target is not None:
            pad = self.pad_token_id
            for k, row in enumerate(rows):
                if len(row) < target:
                    if masks is not None:
                        masks[k] += [0] * (target - len(row))
                    row += [pad] * (target - len(row))
        enc = BatchEncoding(input_ids=rows)
        if masks is not None:
            enc["attention_mask"] = masks
        return enc


__all__ = ["VOCAB_FILE_NAME", "BatchEncoding", "EsmTokenizer"]
