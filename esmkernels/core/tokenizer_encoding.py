"""The encoding engine of `EsmTokenizer`: text -> flat token ids, vectorised where possible.

Texts that are plain ASCII are encoded together through a 256-entry numpy lookup table over their
bytes; inline special tokens (`<mask>`, ...) are first replaced by one stand-in control character
each (a regex substitution), so they take the same path. Anything else (non-ASCII text, or text
that already contains a stand-in character) goes through a per-character scan (`_scan`), which
is also the reference the fast path is tested against. Lower-case handling (`upper`,
`lowercase_unknown`) lives here too, since it must skip inline tokens the same way.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Sequence

import numpy as np

# Lookup-table codes that are not token ids.
_WHITESPACE = -1
_INVALID = -2
# Non-whitespace ASCII control characters, used as one-character stand-ins for multi-character
# tokens so that texts with inline `<mask>` etc. take the vectorised path.
_STAND_INS = tuple(chr(c) for c in (*range(32), 127) if not chr(c).isspace())


class _Rescan(Exception):
    """Internal: the vectorised path saw an unknown character under strict=True."""


class EncodingMixin:
    """Vocabulary lookup and encoding; `EsmTokenizer` sets `_token_to_id` and `unk_token_id`."""

    _token_to_id: dict[str, int]
    unk_token_id: int

    def _build_lookup(self, tokens: list[str], seen: dict[str, int]) -> None:
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

    def upper(self, text: str) -> str:
        """`text` with residue letters upper-cased; inline tokens such as `<mask>` kept as they are.

        Example:
            >>> from esmkernels.core.tokenization import EsmTokenizer
            >>> EsmTokenizer().upper("mk<mask>t")
            'MK<mask>T'
        """
        if self._split_re is None:
            return text.upper()
        pieces = self._split_re.split(text)
        return "".join(p if k % 2 else p.upper() for k, p in enumerate(pieces))

    def lowercase_unknown(self, texts: Sequence[str]) -> int:
        """How many lower-case letters of `texts` are outside the vocabulary (they become `<unk>`)
        while their upper case is in it; inline tokens such as `<mask>` are not counted."""
        joined = "".join(texts)
        if not any(c.islower() for c in joined):
            return 0
        if self._split_re is not None:
            joined = self._split_re.sub("", joined)
        vocab = self._token_to_id
        return sum(1 for c in joined if c.islower() and c not in vocab and c.upper() in vocab)

    def _warn_lowercase(self, texts: Sequence[str]) -> None:
        n = self.lowercase_unknown(texts)
        if n:
            warnings.warn(
                f"EsmTokenizer: {n} lower-case letter(s) became <unk> (the vocabulary is upper "
                "case, as in transformers); pass uppercase=True to upper-case residues first",
                UserWarning,
                stacklevel=3,
            )


__all__ = ["EncodingMixin"]
