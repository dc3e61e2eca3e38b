"""Clean errors everywhere a user can reach (issue 18): a one-line error, exit code 2 and
nothing written, found before any model loads where the input decides it: every mutation of
`score` checked against the wild type and the vocabulary (`--skip-invalid` records a bad row's
reason and scores the rest); `demo --fasta` checks its input before writing checkpoints and
scores mutations that fit the user's first record."""

from __future__ import annotations

import csv
import io

import pytest

from esmkernels.jobs.demo import pick_mutations
from esmkernels.models.esm import EsmForMaskedLM
from tests._cli import fasta, lm_checkpoint, run

WT = "MKTAYIAKQRQISFVKSH"


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return lm_checkpoint(tmp_path_factory.mktemp("errors"))


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if a model is loaded."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(EsmForMaskedLM, "from_pretrained", refuse)


def one_line_error(capsys, *parts):
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("esmkernels "), err
    for part in parts:
        assert part in err, (part, err)


@pytest.mark.parametrize(
    "mutations, message",
    [
        ("K2A,M1J", "--mutations item 2: mutation 'M1J': the mutant residue 'J' is not in"),
        ("K2*", "--mutations item 1: mutation 'K2*': cannot parse 'K2*'"),
        ("K2A,A2K", "--mutations item 2: mutation 'A2K': the wild type at position 2 is 'K'"),
        ("K2A:K2G", "position 2 is mutated twice"),
        ("K99A", "position 99 is outside the sequence (1..18)"),
    ],
)
def test_score_checks_every_mutation_before_loading(
    lm, tmp_path, capsys, no_loading, mutations, message
):
    out = tmp_path / "scores.csv"
    argv = ["score", "-m", lm, "--sequence", WT, "--mutations", mutations, "-o", out]
    assert run(*argv) == 2
    one_line_error(capsys, message)
    assert not out.exists()


def test_score_checks_dms_rows_before_loading(lm, tmp_path, capsys, no_loading):
    table = tmp_path / "dms.csv"
    table.write_text("mutant,y\nK2A,1\nT3J,2\nK2*,3\n")
    out = tmp_path / "scores.csv"
    assert run("score", "-m", lm, "--sequence", WT, "--dms-input", table, "-o", out) == 2
    one_line_error(capsys, "dms.csv row 3: mutation 'T3J'", "1 more bad row(s); --skip-invalid")
    assert not out.exists()


def test_skip_invalid_records_the_reason_and_scores_the_rest(lm, tmp_path, capsys):
    table = tmp_path / "dms.csv"
    table.write_text("mutant,y\nK2A,1\nK2*,2\nT3J,3\n,4\nT3G:A4C,5\n")
    out = tmp_path / "scores.csv"
    argv = ["score", "-m", lm, "--sequence", WT, "--dms-input", table, "-o", out]
    assert run(*argv, "--skip-invalid") == 1
    err = capsys.readouterr().err
    assert "3 row(s) failed" in err and "row 3: mutation 'K2*'" in err
    rows = list(csv.DictReader(out.open()))
    assert [r["y"] for r in rows] == ["1", "2", "3", "4", "5"]  # every input row, in order
    assert list(rows[0]) == ["mutant", "y", lm.name, "reason"]
    assert [bool(r[lm.name]) for r in rows] == [True, False, False, False, True]
    assert "cannot parse 'K2*'" in rows[1]["reason"] and "'J' is not in" in rows[2]["reason"]
    assert rows[3]["reason"] == "empty mutation" and rows[0]["reason"] == rows[4]["reason"] == ""
    assert run("score", "-m", lm, "--sequence", WT, "--mutations", "K2A,T3G:A4C") == 0
    good = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [rows[0][lm.name], rows[4][lm.name]] == [g[lm.name] for g in good]


def test_demo_checks_its_fasta_before_writing_anything(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run("demo", "--out", out, "--fasta", tmp_path / "missing.fasta", "-q") == 2
    one_line_error(capsys, "missing.fasta: no such file")
    bad = fasta(tmp_path / "bad.fasta", [("p", "MKT*AY")])
    assert run("demo", "--out", out, "--fasta", bad, "-q") == 2
    one_line_error(capsys, "record 'p': invalid residue '*' at position 4")
    assert not out.exists()


def test_demo_scores_mutations_that_fit_the_users_record(tmp_path, capsys):
    mine = fasta(tmp_path / "mine.fasta", [("mine", "GSHMKTAYIAKQRQISFVKSHFSRQ"), ("b", "MKV")])
    out = tmp_path / "demo"
    assert run("demo", "--out", out, "--fasta", mine, "--device", "cpu", "-q") == 0
    picked = pick_mutations("GSHMKTAYIAKQRQISFVKSHFSRQ")
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert [r["mutant"] for r in rows] == picked.split(",") and len(rows) == 4
    capsys.readouterr()
    unknown = fasta(tmp_path / "x.fasta", [("x", "XXXX")])
    assert run("demo", "--out", tmp_path / "d2", "--fasta", unknown, "--device", "cpu", "-q") == 0
    assert "score: skipped (x has no standard residue to mutate)" in capsys.readouterr().err
    assert not (tmp_path / "d2" / "scores.csv").exists()


def test_pick_mutations_fit_any_chain():
    for seq in ("M", "MK", "AAAA", "MKTAYIAKQR", "XXMXX", "ACDEFGHIKLMNPQRSTVWY" * 5):
        picked = pick_mutations(seq)
        for mutant in picked.split(","):
            for site in mutant.split(":"):
                wt, pos, mt = site[0], int(site[1:-1]), site[-1]
                assert seq[pos - 1] == wt and mt != wt and mt in "AG", (seq, site)
    assert pick_mutations("XBZ") is None
