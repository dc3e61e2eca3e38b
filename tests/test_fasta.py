"""read_fasta / write_fasta: real-world file layouts, gzip, errors, round trips."""

import gzip
import io

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from esmkernels.jobs.fasta import read_fasta, write_fasta

# Any text without line breaks; \x0b, \x1c, \x85, \u2028... are not line breaks in FASTA.
headers = st.text(st.characters(blacklist_characters="\r\n"), max_size=30).map(str.strip)
sequences = st.text(alphabet="ACDEFGHIKLMNPQRSTVWYXBUZO.-*<mask", max_size=150)
records = st.lists(st.tuples(headers, sequences), max_size=6)


@given(records, st.sampled_from([None, 0, 1, 7, 60]), st.booleans())
@example([("", "")], 60, False)
@example([("a", "MKT"), ("b", "")], 1, True)
def test_round_trip(tmp_path_factory, recs, width, gz):
    path = tmp_path_factory.mktemp("fa") / ("x.fasta.gz" if gz else "x.fasta")
    write_fasta(recs, path, line_width=width)
    assert read_fasta(path) == recs
    if width:
        for line in read_lines(path):
            assert line.startswith(">") or len(line) <= width


def read_lines(path):
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode().split("\n")[:-1]


def test_messy_file(tmp_path):
    text = (
        "\ufeff;old-style comment\r\n"
        "\r\n"
        ">sp|P69905|HBA_HUMAN Hemoglobin alpha  \r\n"
        "MVLSPADKTN\r\n"
        "  VKAAWGKVGA \r\n"
        "\r\n"
        "HAGEYGAE\r\n"
        ">empty record\r\n"
        ">lower case and stop\r"
        "mkt AYI*\r"
        ">last line has no newline\n"
        "QQ"
    )
    path = tmp_path / "messy.fa"
    path.write_bytes(text.encode())
    expected = [
        ("sp|P69905|HBA_HUMAN Hemoglobin alpha", "MVLSPADKTNVKAAWGKVGAHAGEYGAE"),
        ("empty record", ""),
        ("lower case and stop", "mktAYI*"),
        ("last line has no newline", "QQ"),
    ]
    assert read_fasta(path) == expected
    assert read_fasta(str(path)) == expected
    assert read_fasta(io.StringIO(text)) == expected
    assert read_fasta(io.BytesIO(text.encode())) == expected
    # gzip is recognised by content, whatever the name or handle.
    packed = tmp_path / "messy.fa.bin"
    packed.write_bytes(gzip.compress(text.encode()))
    assert read_fasta(packed) == expected
    with open(packed, "rb") as f:
        assert read_fasta(f) == expected


def test_empty_and_header_only(tmp_path):
    assert read_fasta(io.StringIO("")) == []
    assert read_fasta(io.StringIO("\n\n  \n")) == []
    assert read_fasta(io.StringIO(">only")) == [("only", "")]


@pytest.mark.parametrize(
    "text, line",
    [("MKT\n>a\nMK\n", 1), ("\n\n  MKT\n>a\n", 3), (";c\r\nQ\r\n", 2)],
)
def test_sequence_before_header_names_line(text, line):
    with pytest.raises(ValueError, match=f"line {line} holds sequence data before any '>'"):
        read_fasta(io.StringIO(text))


def test_read_errors(tmp_path):
    path = tmp_path / "bad.fa"
    path.write_bytes(b">a\n\xff\xfe\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_fasta(path)
    with pytest.raises(TypeError, match="path or an open file"):
        read_fasta(42)
    with pytest.raises(FileNotFoundError):
        read_fasta(tmp_path / "missing.fa")


def test_write_to_handle_and_errors(tmp_path):
    out = io.StringIO()
    write_fasta([("a", "MKTAYI"), ("b", "")], out, line_width=4)
    assert out.getvalue() == ">a\nMKTA\nYI\n>b\n"
    with pytest.raises(ValueError, match="line break"):
        write_fasta([("a\nb", "MK")], tmp_path / "x.fa")
    with pytest.raises(ValueError, match="line break"):
        write_fasta([("a", "MK\r\nQ")], tmp_path / "x.fa")
    with pytest.raises(TypeError, match="record 1"):
        write_fasta([("a", "MK"), ("b",)], tmp_path / "x.fa")
    with pytest.raises(TypeError, match="record 0"):
        write_fasta([("a", None)], tmp_path / "x.fa")
    with pytest.raises(ValueError, match="line_width"):
        write_fasta([("a", "MK")], tmp_path / "x.fa", line_width=-1)
    with pytest.raises(ValueError, match="starting with '>'"):
        write_fasta([("m", "MK<mask>A")], tmp_path / "x.fa", line_width=7)
    with pytest.raises(ValueError, match="starting with ';'"):
        write_fasta([("m", ";MK")], tmp_path / "x.fa", line_width=None)
    write_fasta([("m", "MK<mask>A")], out := io.StringIO(), line_width=None)
    assert read_fasta(io.StringIO(out.getvalue())) == [("m", "MK<mask>A")]
    write_fasta(iter([("g", "MKV")]), tmp_path / "y.fa.gz")
    assert gzip.decompress((tmp_path / "y.fa.gz").read_bytes()) == b">g\nMKV\n"


# ------------------------------------------------------------------------------------------------
# read_records: the command line's input rules
# ------------------------------------------------------------------------------------------------


def test_read_records_rules(tmp_path):
    from esmkernels.jobs.fasta import Record, Rejected, read_records

    path = tmp_path / "in.fa.gz"
    path.write_bytes(gzip.compress(b">sp|P1|X desc\nmkta\n>b\nMK1T\n>c\n\n>d\nMK:GG\n>e\nMK::G\n"))
    warnings = []
    records, rejected = read_records(path, skip_invalid=True, warn=warnings.append)
    assert records == [Record("sp|P1|X", "MKTA", "sp|P1|X desc", 0)]
    assert rejected == [
        Rejected("b", "MK1T", 1, "invalid residue '1' at position 3"),
        Rejected("c", "", 2, "empty sequence"),
        Rejected("d", "MK:GG", 3, "invalid residue ':' at position 3"),
        Rejected("e", "MK::G", 4, "invalid residue ':' at position 3"),
    ]
    assert warnings == [f"{path}: record 'sp|P1|X' has lowercase letters; read as uppercase"]
    records, rejected = read_records(path, multimer=True, skip_invalid=True, warn=warnings.append)
    assert [r.id for r in records] == ["sp|P1|X", "d"]
    assert rejected[-1].reason == "chain 2 is empty (check the ':' separators)"
    with pytest.raises(ValueError, match=r"record 'b': invalid residue '1' at position 3"):
        read_records(path, warn=warnings.append)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "no FASTA records found"),
        (">a\nMK\n>b\nQ\n>a x\nG\n", r"duplicate record id 'a' \(records 1 and 3\)"),
        (">\nMK\n", "record 1 has an empty header"),
        ("MK\n", "line 1 holds sequence data"),
    ],
)
def test_read_records_errors(tmp_path, text, message):
    from esmkernels.jobs.fasta import read_records

    path = tmp_path / "x.fa"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_records(path, skip_invalid=True)


def test_every_residue_letter_is_in_the_esm_vocabulary():
    from esmkernels.core.configuration import ESM_VOCAB
    from esmkernels.jobs.fasta import RESIDUES, check_sequence

    assert RESIDUES <= set(ESM_VOCAB)
    assert check_sequence("".join(sorted(RESIDUES))) is None
    for bad in "J*-.<1 a":
        assert check_sequence("MK" + bad) == f"invalid residue {bad!r} at position 3"
