"""fair-esm's spellings (issue 18): `fold` takes esm-fold's `-i/-o`, `--num-recycles`,
`--max-tokens-per-batch`, `--chunk-size`, `--cpu-only`; `embed` takes esm-extract's
`--repr_layers`, `--toks_per_batch`, `--truncation_seq_length`, `--include`, `--nogpu`. Each
alias gives what the house spelling gives."""

from __future__ import annotations

import pytest

from esmkernels import cli
from tests._cli import fasta, files, fold_checkpoint, lm_checkpoint, run
from tests.test_cli_fold import assert_same_outputs


def parsed(*argv):
    parser, _ = cli.build_parser()
    return vars(parser.parse_args([str(a) for a in argv]))


@pytest.mark.parametrize(
    "fair, ours",
    [
        (["--repr_layers", "0", "-1"], ["--repr-layers", "0", "-1"]),
        (["--toks_per_batch", "100"], ["--max-tokens-per-batch", "100"]),
        (["--truncation_seq_length", "7"], ["--truncation-seq-length", "7"]),
        (["--include", "mean", "per_tok", "bos", "contacts"], None),
    ],
)
def test_embed_underscore_spellings_parse_as_the_dashed_ones(fair, ours):
    base = ["embed", "in.fasta", "-m", "M", "-o", "out"]
    got = parsed(*base, *fair)
    if ours is None:
        assert got["include"] == ["mean", "per_tok", "bos", "contacts"]
    else:
        assert got == parsed(*base, *ours)


@pytest.mark.parametrize(
    "fair, key, value",
    [
        (["-i", "in.fasta", "-o", "out"], "input", "in.fasta"),
        (["--fasta", "in.fasta", "-o", "out"], "input", "in.fasta"),
        (["in.fasta", "-o", "out"], "out", "out"),
        (["in.fasta", "--pdb", "out"], "out", "out"),
        (["in.fasta", "-o", "o", "--num-recycles", "2"], "num_recycles", 2),
        (["in.fasta", "-o", "o", "--max-tokens-per-batch", "9"], "max_tokens_per_batch", 9),
        (["in.fasta", "-o", "o", "--chunk-size", "4"], "chunk_size", "4"),
        (["in.fasta", "-o", "o", "--cpu-only"], "cpu_only", True),
    ],
)
def test_fold_esm_fold_spellings_parse(fair, key, value):
    assert parsed("fold", "-m", "M", *fair)[key] == value


def test_embed_with_esm_extract_spellings_writes_the_same_store(tmp_path, capsys):
    lm = lm_checkpoint(tmp_path)
    fa = fasta(tmp_path / "in.fasta", [("a", "MKTAYIAKQR"), ("b", "MKV")])
    fair = ["--repr_layers", "0", "-1", "--include", "mean", "per_tok", "bos", "contacts"]
    fair += ["--toks_per_batch", "12", "--truncation_seq_length", "7", "--nogpu", "-q"]
    ours = ["--repr-layers", "0", "-1", "--include", "mean", "per_tok", "bos", "contacts"]
    ours += ["--max-tokens-per-batch", "12", "--truncation-seq-length", "7", "--device", "cpu"]
    ours += ["-q", "--long-sequences", "error"]
    assert run("embed", fa, "-m", lm, "-o", tmp_path / "fair", *fair) == 1  # a is too long
    assert "on cpu" in capsys.readouterr().err
    assert run("embed", fa, "-m", lm, "-o", tmp_path / "ours", *ours) == 1
    assert files(tmp_path / "fair") == files(tmp_path / "ours")
    assert run("embed", fa, "-m", lm, "-o", tmp_path / "x", "--nogpu", "--device", "cuda") == 2
    assert "--nogpu and --device cuda contradict" in capsys.readouterr().err


def test_fold_with_esm_fold_spellings_writes_the_same_files(tmp_path, capsys):
    ckpt = fold_checkpoint(tmp_path)
    fa = fasta(tmp_path / "in.fasta", [("a", "MKTAYIAK"), ("b", "MKV")])
    common = ["-m", ckpt, "--num-recycles", "0", "--max-tokens-per-batch", "9", "-q"]
    assert (
        run("fold", "-i", fa, "-o", tmp_path / "fair", *common, "--chunk-size", "4", "--cpu-only")
        == 0
    )
    assert "on cpu" in capsys.readouterr().err
    argv = ["fold", fa, "--out", tmp_path / "ours", *common, "--chunk-size", "4", "--device", "cpu"]
    assert run(*argv) == 0
    assert_same_outputs(tmp_path / "fair", tmp_path / "ours")
    assert run("fold", "-o", tmp_path / "x", *common) == 2  # no input at all
    assert "give the input FASTA once" in capsys.readouterr().err
    assert run("fold", fa, "-i", fa, "-o", tmp_path / "x", *common) == 2
    assert "two inputs" in capsys.readouterr().err
    assert run("fold", fa, "-o", tmp_path / "x", *common, "--cpu-only", "--device", "cuda") == 2
    assert not (tmp_path / "x").exists()
