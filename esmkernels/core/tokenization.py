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
* Lower case is never silent: by default lower-case letters become `<unk>` (ids identical to
  transformers) with one warning per call naming how many; `uppercase=True` upper-cases residue
  letters first (inline tokens such as `<mask>` are kept).
* `decode` joins tokens with single spaces, as transformers does ("<cls> M K <eos>"); with
  `skip_special_tokens=True` and the spaces removed it gives the sequence back:
  `tok.decode(tok.encode(s), skip_special_tokens=True).replace(" ", "") == s` for any `s` made of
  vocabulary letters.
* Deliberate differences, all on inputs transformers accepts silently: ids outside the vocabulary
  given to `decode`/`convert_ids_to_tokens` raise ValueError (transformers prints `<unk>`);
  `padding="max_length"` without a length, and `max_length` smaller than the special tokens with
  truncation, raise ValueError; so does an empty batch (`tok([])`).

The empty sequence encodes to `<cls> <eos>`, as in transformers; models reject it later.

Speed: plain ASCII texts are encoded together through a numpy lookup table
(`esmkernels.core.tokenizer_encoding`); padding and tensors are assembled by
`esmkernels.core.batch_encoding`.

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

import json
import operator
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from esmkernels.core.batch_encoding import BatchEncoding, Layout, check_int, pack_arrays, pack_lists
from esmkernels.core.configuration import ESM_VOCAB
from esmkernels.core.tokenizer_encoding import EncodingMixin

VOCAB_FILE_NAME = "vocab.txt"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"

# transformers writes "no limit" as int(1e30); anything this large means unlimited here.
_UNLIMITED = 10**18


def _read_vocab_file(path: str | os.PathLike) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f.read().splitlines()]


def _as_id(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(f"EsmTokenizer: token ids must be ints, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            f"EsmTokenizer: token ids must be ints, got {type(value).__name__} {value!r}"
        ) from None


class EsmTokenizer(EncodingMixin):
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
        self.model_max_length = check_int("model_max_length", model_max_length, 1)
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
        self._build_lookup(tokens, seen)

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

    def tokenize(self, text: str) -> list[str]:
        """Tokens of `text` without special tokens added; unknown characters are kept as they are.

        Example:
            >>> EsmTokenizer().tokenize("MK <mask>x")
            ['M', 'K', '<mask>', 'x']
        """
        if not isinstance(text, str):
            raise TypeError(f"EsmTokenizer.tokenize: expected a str, got {type(text).__name__}")
        return [token for token, _, _ in self._scan(text)]

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
        uppercase: bool = False,
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
            uppercase: upper-case residue letters first (inline tokens are kept). By default
                lower-case letters become `<unk>`, as in transformers, with one warning per call
                naming how many did.

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
        layout = Layout.resolve(
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            pad_to_multiple_of=pad_to_multiple_of,
            add_special_tokens=add_special_tokens,
            return_tensors=return_tensors,
            return_attention_mask=return_attention_mask,
            model_max_length=self.model_max_length,
        )
        if not single and not texts:
            raise ValueError("EsmTokenizer: the batch is empty; pass at least one sequence")
        if uppercase:
            texts = [self.upper(t) for t in texts]
        elif not strict:
            self._warn_lowercase(texts)
        flat, counts = self._encode_many(texts, strict=bool(strict), batched=not single)
        flat, counts = layout.truncate_ids(flat, counts)
        ids = (self.pad_token_id, self.cls_token_id, self.eos_token_id)
        if return_tensors is None:
            enc = pack_lists(flat, counts, layout, ids)
        else:
            enc = pack_arrays(flat, counts, layout, ids)
        if return_tensors == "pt":
            import torch

            enc.update({key: torch.from_numpy(value) for key, value in enc.items()})
        elif return_tensors is None and single:
            enc.update({key: value[0] for key, value in enc.items()})
        return enc


__all__ = ["VOCAB_FILE_NAME", "BatchEncoding", "EsmTokenizer"]
