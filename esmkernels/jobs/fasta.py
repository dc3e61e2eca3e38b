"""Reading and writing FASTA files of protein sequences.

`read_fasta` accepts what real files contain: sequences wrapped over several lines, blank lines,
Windows (`\\r\\n`) or old Mac (`\\r`) line endings, a UTF-8 byte-order mark, `;` comment lines, and
gzip compression (recognised by its magic bytes, whatever the file name). Sequence lines lose all
whitespace; case and every other character are kept as they are, so that the tokenizer (or its
`strict=True` mode) decides what is valid. A header with no sequence lines gives an empty sequence.

`read_records` applies the command line's input rules on top: record ids, residue letters,
lowercase, empty records and duplicate ids (see its docstring).

Example:
    >>> from esmkernels.jobs.fasta import read_fasta, write_fasta
    >>> write_fasta([("seq1 some protein", "MKTAYIAKQR"), ("seq2", "MKV")], "/tmp/x.fasta")
    >>> read_fasta("/tmp/x.fasta")
    [('seq1 some protein', 'MKTAYIAKQR'), ('seq2', 'MKV')]
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO

_GZIP_MAGIC = b"\x1f\x8b"


def _read_text(source: str | os.PathLike | IO) -> tuple[str, str]:
    """The decoded text of a path or open file, and a name for error messages."""
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        with open(name, "rb") as f:
            data: bytes | str = f.read()
    elif hasattr(source, "read"):
        name = getattr(source, "name", "<file>")
        data = source.read()
    else:
        raise TypeError(f"read_fasta: expected a path or an open file, got {type(source).__name__}")
    if isinstance(data, bytes):
        if data[:2] == _GZIP_MAGIC:
            data = gzip.decompress(data)
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"read_fasta: {name} is not UTF-8 text ({e})") from None
    if not isinstance(data, str):
        raise TypeError(f"read_fasta: {name} returned {type(data).__name__}, not str or bytes")
    return data.removeprefix("\ufeff"), str(name)


def read_fasta(path_or_file: str | os.PathLike | IO) -> list[tuple[str, str]]:
    """All records of a FASTA file, in order, as `(header, sequence)` pairs.

    Args:
        path_or_file: a path (plain or gzip-compressed) or an open file (text or binary).

    Returns:
        `[(header, sequence), ...]`: the header is the text after `>` with surrounding whitespace
        removed; the sequence is the record's lines joined with all whitespace removed.

    Raises:
        ValueError: sequence data before the first `>` header (naming the 1-based line number),
            or bytes that are not UTF-8.

    Example:
        >>> import io
        >>> read_fasta(io.StringIO(">a desc\\r\\nMKT\\r\\nAYI\\r\\n\\n>b\\nQ\\n"))
        [('a desc', 'MKTAYI'), ('b', 'Q')]
    """
    text, name = _read_text(path_or_file)
    records: list[tuple[str, str]] = []
    header: str | None = None
    chunks: list[str] = []
    for number, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), 1):
        if line.startswith(">"):
            if header is not None:
                records.append((header, "".join(chunks)))
            header, chunks = line[1:].strip(), []
        elif line.startswith(";"):
            continue
        else:
            residues = "".join(line.split())
            if not residues:
                continue
            if header is None:
                raise ValueError(
                    f"read_fasta: {name} line {number} holds sequence data before any '>' header: "
                    f"{line[:40]!r}"
                )
            chunks.append(residues)
    if header is not None:
        records.append((header, "".join(chunks)))
    return records


def write_fasta(
    records: Iterable[tuple[str, str]],
    path: str | os.PathLike | IO,
    line_width: int | None = 60,
) -> None:
    """Write `(header, sequence)` records as FASTA (gzip-compressed when `path` ends in `.gz`).

    Args:
        records: `(header, sequence)` pairs; the header is written after `>`.
        path: a file path, or an open text file.
        line_width: residues per line; None or 0 writes each sequence on one line.

    Raises:
        ValueError: a header or sequence containing a line break, or a sequence line that would
            start with `>` or `;` (it would read back as a header or a comment). Headers with
            surrounding whitespace and sequences with inner whitespace read back stripped.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> write_fasta([("a", "MKTAYI")], out, line_width=4)
        >>> out.getvalue()
        '>a\\nMKTA\\nYI\\n'
    """
    if line_width is not None and (isinstance(line_width, bool) or line_width < 0):
        raise ValueError(f"write_fasta: line_width={line_width!r} must be None or >= 0")
    lines = []
    for k, record in enumerate(records):
        if not (isinstance(record, (tuple, list)) and len(record) == 2):
            raise TypeError(f"write_fasta: record {k} is not a (header, sequence) pair: {record!r}")
        header, seq = record
        if not isinstance(header, str) or not isinstance(seq, str):
            raise TypeError(f"write_fasta: record {k} must hold two str, got {record!r}")
        if any(c in header or c in seq for c in "\r\n"):
            raise ValueError(f"write_fasta: record {k} ({header[:40]!r}) contains a line break")
        lines.append(f">{header}\n")
        step = line_width or max(len(seq), 1)
        for i in range(0, len(seq), step):
            if seq[i] in ">;":
                raise ValueError(
                    f"write_fasta: record {k} ({header[:40]!r}) would have a sequence line "
                    f"starting with {seq[i]!r} (read back as a header or comment); try "
                    "line_width=None"
                )
            lines.append(seq[i : i + step] + "\n")
    text = "".join(lines)
    if hasattr(path, "write"):
        path.write(text)
        return
    name = os.fspath(path)
    if name.endswith(".gz"):
        with gzip.open(name, "wt", encoding="utf-8", newline="\n") as f:
            f.write(text)
    else:
        with open(name, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)


# The protein letters of the ESM vocabulary: the 20 standard residues, X (unknown), B, Z (Asx,
# Glx), U (selenocysteine) and O (pyrrolysine). J, '*', '-', '.' and digits are not residues here.
RESIDUES = frozenset("ACDEFGHIKLMNPQRSTVWYXBZUO")


@dataclass(frozen=True)
class Record:
    """One checked FASTA record: `id` (first word of the header), `sequence` (uppercase),
    `header` (the whole header line) and `order` (0-based position in the file)."""

    id: str
    sequence: str
    header: str
    order: int


@dataclass(frozen=True)
class Rejected:
    """A record `read_records(skip_invalid=True)` kept out of the work, and why."""

    id: str
    sequence: str
    order: int
    reason: str


def check_sequence(sequence: str, multimer: bool = False) -> str | None:
    """Why `sequence` cannot be used, or None when it can.

    Valid: letters of `RESIDUES` (uppercase); with `multimer`, chains joined by ':' (none empty).
    The reason names the first offending character and its 1-based position.

    Example:
        >>> check_sequence("MKT1A")
        "invalid residue '1' at position 4"
    """
    if not sequence:
        return "empty sequence"
    if multimer:
        for c, chain in enumerate(sequence.split(":")):
            if not chain:
                return f"chain {c + 1} is empty (check the ':' separators)"
    for pos, ch in enumerate(sequence, 1):
        if ch not in RESIDUES and not (multimer and ch == ":"):
            return f"invalid residue {ch!r} at position {pos}"
    return None


def read_records(
    path: str | os.PathLike,
    *,
    multimer: bool = False,
    skip_invalid: bool = False,
    warn: Callable[[str], None] | None = None,
) -> tuple[list[Record], list[Rejected]]:
    """Read a FASTA file (plain or gzip) under the command line's input rules.

    * The record id is the first word of the header (`sp|P69905|HBA_HUMAN` for
      `>sp|P69905|HBA_HUMAN Hemoglobin alpha`); a header without one is an error.
    * Duplicate ids are an error (outputs are keyed by id).
    * Lowercase letters are read as uppercase, with one warning per record through `warn`.
    * A residue letter outside `RESIDUES` (`check_sequence`), an empty record, or with
      `multimer` an empty chain, is an error naming the record id and position; with
      `skip_invalid` the record is returned in the second list instead, with its reason.
    * A file that cannot be read, is not FASTA or holds no records is an error.

    Args:
        path: the FASTA file.
        multimer: allow chains joined by ':' (ESMFold).
        skip_invalid: keep going past invalid or empty records.
        warn: called with each warning (default: `warnings.warn`).

    Returns:
        `(records, rejected)`, both in file order.

    Raises:
        ValueError: as listed above, naming the file.

    Example:
        >>> records, rejected = read_records("proteins.fasta.gz")  # doctest: +SKIP
    """
    if warn is None:
        import warnings

        def warn(message: str) -> None:
            warnings.warn(message, stacklevel=3)

    name = os.fspath(path)
    try:
        raw = read_fasta(path)
    except FileNotFoundError:
        raise ValueError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{name} is a directory, not a FASTA file") from None
    except (PermissionError, OSError, EOFError) as err:
        raise ValueError(f"{name}: cannot read it ({err})") from None
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    if not raw:
        raise ValueError(f"{name}: no FASTA records found (no line starts with '>')")
    records: list[Record] = []
    rejected: list[Rejected] = []
    seen: dict[str, int] = {}
    for order, (header, seq) in enumerate(raw):
        words = header.split()
        if not words:
            raise ValueError(f"{name}: record {order + 1} has an empty header (no id after '>')")
        rid = words[0]
        if rid in seen:
            raise ValueError(
                f"{name}: duplicate record id {rid!r} (records {seen[rid] + 1} and {order + 1})"
            )
        seen[rid] = order
        if seq != seq.upper():
            warn(f"{name}: record {rid!r} has lowercase letters; read as uppercase")
            seq = seq.upper()
        why = check_sequence(seq, multimer)
        if why is not None:
            if not skip_invalid:
                raise ValueError(
                    f"{name}: record {rid!r}: {why} (pass --skip-invalid to skip such records)"
                )
            rejected.append(Rejected(rid, seq, order, why))
            continue
        records.append(Record(rid, seq, header, order))
    return records, rejected


__all__ = [
    "RESIDUES",
    "Record",
    "Rejected",
    "check_sequence",
    "read_fasta",
    "read_records",
    "write_fasta",
]
