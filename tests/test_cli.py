"""The `esmkernels` command line as a whole: subcommands, --help examples, exit codes, and the
input rules every subcommand shares (FASTA problems, wrong model kinds, unwritable outputs)."""

from __future__ import annotations

import gzip
import subprocess
import sys

import pytest

from esmkernels import cli, open_embeddings
from esmkernels.cli import COMMANDS
from tests._cli import fasta, fold_checkpoint, lm_checkpoint, run


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return lm_checkpoint(root), fold_checkpoint(root)


def test_every_subcommand_has_a_module_and_help_with_an_example(capsys):
    parser, modules = cli.build_parser()
    missing = set(COMMANDS) - set(modules)
    assert missing <= {"bench"}, missing  # bench is written separately and may not exist yet
    for name, module in modules.items():
        assert callable(module.add_parser) and callable(module.run)
        assert run(name, "--help") == 0
        text = capsys.readouterr().out
        assert "example:" in text and f"esmkernels {name}" in text.split("example:")[1], name


def test_exit_codes_for_usage(capsys):
    assert run() == cli.EXIT_USAGE
    assert run("frobnicate") == cli.EXIT_USAGE
    assert run("embed", "x.fasta") == cli.EXIT_USAGE  # --model, --out missing
    assert "required" in capsys.readouterr().err
    assert run("--version") == 0
    assert run("info") == 0
    assert "torch" in capsys.readouterr().out


def test_python_dash_m():
    done = subprocess.run(
        [sys.executable, "-m", "esmkernels", "fold", "--chunk-size"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "usage: esmkernels fold" in done.stderr


def test_fasta_problems_are_usage_errors_naming_the_record(ckpts, tmp_path, capsys):
    lm, _ = ckpts
    out = tmp_path / "out"

    def embed(path, *extra):
        return run("embed", path, "-m", lm, "-o", out, "-q", *extra)

    assert embed(tmp_path / "missing.fasta") == 2
    assert "missing.fasta: no such file" in capsys.readouterr().err
    assert embed(tmp_path) == 2
    assert "is a directory" in capsys.readouterr().err
    (tmp_path / "notfasta.txt").write_text("hello\n")
    assert embed(tmp_path / "notfasta.txt") == 2
    assert "line 1 holds sequence data before any '>'" in capsys.readouterr().err
    (tmp_path / "empty.fasta").write_text("")
    assert embed(tmp_path / "empty.fasta") == 2
    assert "no FASTA records" in capsys.readouterr().err
    dup = fasta(tmp_path / "dup.fasta", [("a x", "MKT"), ("b", "MK"), ("a y", "GGG")])
    assert embed(dup) == 2
    assert "duplicate record id 'a' (records 1 and 3)" in capsys.readouterr().err
    empty = fasta(tmp_path / "e.fasta", [("a", "MKT"), ("b", "")])
    assert embed(empty) == 2
    assert "record 'b': empty sequence" in capsys.readouterr().err
    assert embed(fasta(tmp_path / "h.fasta", [("", "MKT")])) == 2
    assert "record 1 has an empty header" in capsys.readouterr().err
    assert not out.exists()  # none of these did any work


def test_gzip_and_lowercase_input(ckpts, tmp_path, capsys):
    lm, _ = ckpts
    gz = tmp_path / "in.fa.gz"
    gz.write_bytes(gzip.compress(b">p1\nmktAYi\n>p2\nMKV\n"))
    assert run("embed", gz, "-m", lm, "-o", tmp_path / "o", "-q") == 0
    assert "record 'p1' has lowercase letters; read as uppercase" in capsys.readouterr().err
    plain = fasta(tmp_path / "up.fasta", [("p1", "MKTAYI"), ("p2", "MKV")])
    assert run("embed", plain, "-m", lm, "-o", tmp_path / "u", "-q") == 0
    a, b = open_embeddings(tmp_path / "o"), open_embeddings(tmp_path / "u")
    assert a.entry("p1")["sha256"] == b.entry("p1")["sha256"]  # the same sequence, not <unk>s
    assert (a["p1"]["mean_representations"][2] == b["p1"]["mean_representations"][2]).all()


def test_wrong_model_kind_and_bad_model(ckpts, tmp_path, capsys):
    lm, fold = ckpts
    fa = fasta(tmp_path / "in.fasta", [("a", "MKTAY")])
    assert run("fold", fa, "-m", lm, "-o", tmp_path / "f", "-q") == 2
    assert "is a language model, not ESMFold" in capsys.readouterr().err
    assert run("embed", fa, "-m", fold, "-o", tmp_path / "e", "-q") == 2
    assert "is an ESMFold model; `embed` needs an ESM language model" in capsys.readouterr().err
    assert run("score", "-m", fold, "--sequence", "MKTAY", "--mutations", "K2A") == 2
    assert "`score` needs an ESM language model" in capsys.readouterr().err
    assert run("embed", fa, "-m", tmp_path / "nothing", "-o", tmp_path / "e", "-q") == 2
    assert "nothing: no such file or directory" in capsys.readouterr().err


def test_unwritable_output(ckpts, tmp_path, capsys):
    lm, _ = ckpts
    fa = fasta(tmp_path / "in.fasta", [("a", "MKTAY")])
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert run("embed", fa, "-m", lm, "-o", blocker, "-q") == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    assert run("embed", fa, "-m", lm, "-o", blocker / "sub", "-q") == 2
    assert "is not writable" in capsys.readouterr().err
    assert run("fold", fa, "-m", lm, "-o", blocker / "sub", "-q") == 2
