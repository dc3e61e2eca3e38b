"""`esmkernels score`: scores equal their definitions computed with the reference model, for every
strategy, DMS tables (CSV / TSV, offsets, multi-mutants), ensembles and windows; a wild-type
mismatch is an error naming the row."""

from __future__ import annotations

import csv
import io

import pytest
import torch

from esmkernels.core.tokenization import EsmTokenizer
from esmkernels.reference import esm as ref
from tests._cli import fasta, lm_checkpoint, run

WT = "MKTAYIAKQRQISFVKSH"
TOK = EsmTokenizer()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    return lm_checkpoint(root, seed=0), lm_checkpoint(root, seed=1)


def log_probs(ckpt, tokens):
    model = ref.EsmForMaskedLM.from_pretrained(ckpt).eval()
    with torch.no_grad():
        return model(input_ids=tokens[None]).logits[0].float().log_softmax(-1)


def ids(seq):
    return TOK(seq, return_tensors="pt")["input_ids"][0]


def by_definition(ckpt, seq, mutant, strategy, window=None):
    """Score from the definitions (Meier et al. 2021), site by site, no shared code."""
    sites = [(int(m[1:-1]) - 1, m[0], m[-1]) for m in mutant.split(":")]
    a = TOK.convert_tokens_to_ids
    if strategy == "pseudo-ppl":
        mutated = list(seq)
        for i, _, mt in sites:
            mutated[i] = mt

        def pll(s):
            total = 0.0
            for i in range(len(s)):
                t = ids(s)
                t[i + 1] = TOK.mask_token_id
                total += float(log_probs(ckpt, t)[i + 1, a(s[i])])
            return total

        return pll("".join(mutated)) - pll(seq)
    score = 0.0
    for i, wt, mt in sites:
        first, text = 0, seq
        if window is not None and len(seq) > window:
            first = min(max(i - window // 2, 0), len(seq) - window)
            text = seq[first : first + window]
        t = ids(text)
        if strategy == "masked-marginals":
            t[i - first + 1] = TOK.mask_token_id
        lp = log_probs(ckpt, t)[i - first + 1]
        score += float(lp[a(mt)] - lp[a(wt)])
    return score


def read_csv(text):
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize("strategy", ["masked-marginals", "wt-marginals", "pseudo-ppl"])
def test_each_strategy_matches_its_definition(models, strategy, capsys):
    ckpt = models[0]
    muts = ["K2A", "T3G:A4C", "Y5Y"]
    argv = ["score", "-m", ckpt, "--sequence", WT, "--mutations", ",".join(muts)]
    assert run(*argv, "--scoring-strategy", strategy, "--batch-size", "5") == 0
    rows = read_csv(capsys.readouterr().out)
    assert [r["mutant"] for r in rows] == muts
    name = ckpt.name
    for row, mutant in zip(rows, muts):
        want = by_definition(ckpt, WT, mutant, strategy)
        assert float(row[name]) == pytest.approx(want, abs=2e-4), mutant
    assert float(rows[2][name]) == pytest.approx(0.0, abs=1e-6)  # synonymous


def test_dms_table_ensemble_and_offset(models, tmp_path):
    table = tmp_path / "dms.tsv"
    table.write_text("variant\tDMS_score\nK12A\t0.5\nT13G:A14C\t-1.0\n")  # numbered from 11
    wt = fasta(tmp_path / "wt.fasta", [("wt protein", WT.lower())])
    out = tmp_path / "scores.csv"
    argv = ["score", "-m", models[0], "-m", models[1], "--fasta", wt, "--dms-input", table]
    argv += ["--mutation-col", "variant", "--offset-idx", "11", "--out", out]
    assert run(*argv) == 0
    rows = read_csv(out.read_text())
    a, b = models[0].name, models[1].name
    assert list(rows[0]) == ["variant", "DMS_score", a, b, "mean"]
    assert [r["DMS_score"] for r in rows] == ["0.5", "-1.0"]
    for row, mutant in zip(rows, ["K2A", "T3G:A4C"]):
        sa = by_definition(models[0], WT, mutant, "masked-marginals")
        sb = by_definition(models[1], WT, mutant, "masked-marginals")
        assert float(row[a]) == pytest.approx(sa, abs=2e-4)
        assert float(row[b]) == pytest.approx(sb, abs=2e-4)
        assert float(row["mean"]) == pytest.approx((sa + sb) / 2, abs=2e-4)
    assert sa != pytest.approx(sb, abs=1e-3)  # two different models


def test_wild_type_mismatch_names_the_row(models, tmp_path, capsys):
    table = tmp_path / "dms.csv"
    table.write_text("mutant,y\nK2A,1\nT3G:Q4C,2\n")
    argv = ["score", "-m", models[0], "--sequence", WT, "--dms-input", table]
    assert run(*argv) == 2
    err = capsys.readouterr().err
    assert "row 3" in err and "the wild type at position 4 is 'A', not 'Q'" in err
    assert run(*argv, "--mutation-col", "nope") == 2
    assert "no column 'nope'" in capsys.readouterr().err
    assert run("score", "-m", models[0], "--sequence", WT, "--mutations", "K2A,Z99A") == 2
    assert "--mutations item 2" in capsys.readouterr().err
    assert run("score", "-m", models[0], "--sequence", "MK1", "--mutations", "K2A") == 2
    two = fasta(tmp_path / "two.fasta", [("a", "MK"), ("b", "MK")])
    assert run("score", "-m", models[0], "--fasta", two, "--mutations", "K2A") == 2
    assert "holds 2 records" in capsys.readouterr().err


def test_long_sequence_is_scored_in_windows(tmp_path, capsys):
    ckpt = lm_checkpoint(
        tmp_path, "esm1b", position_embedding_type="absolute", max_position_embeddings=12
    )  # at most 8 residues
    muts = ["K2A", "I12A:F14A", "H18W"]
    argv = ["score", "-m", ckpt, "--sequence", WT, "--mutations", ",".join(muts)]
    for strategy in ("masked-marginals", "wt-marginals"):
        assert run(*argv, "--scoring-strategy", strategy) == 0
        rows = read_csv(capsys.readouterr().out)
        for row, mutant in zip(rows, muts):
            want = by_definition(ckpt, WT, mutant, strategy, window=8)
            assert float(row[ckpt.name]) == pytest.approx(want, abs=2e-4), (strategy, mutant)


@pytest.mark.parametrize("strategy", ["masked-marginals", "wt-marginals", "pseudo-ppl"])
@pytest.mark.parametrize("window", [None, 8])
def test_progress_counts_every_sequence_the_model_runs(models, strategy, window):
    from esmkernels.jobs.score import forward_count, score_mutants

    model = ref.EsmForMaskedLM.from_pretrained(models[0]).eval()
    muts = ["K2A", "T3G:A4C", "Y5Y", "K2G", "H18W"]
    runs = []
    real = model.forward
    model.forward = lambda *a, **kw: runs.append(kw["input_ids"].shape[0]) or real(*a, **kw)
    seen = []
    kwargs = dict(batch_size=3, window=window, offset=1)
    got = score_mutants(model, TOK, WT, muts, strategy, progress=seen.append, **kwargs)
    assert seen == runs and sum(seen) == forward_count(WT, muts, strategy, 1, window) > 0
    runs.clear()
    assert score_mutants(model, TOK, WT, muts, strategy, **kwargs) == got  # same numbers


def test_score_shows_a_progress_bar(models, monkeypatch, capsys):
    from esmkernels.jobs import progress

    real = progress.count_bar
    monkeypatch.setattr(progress, "count_bar", lambda *a, **kw: real(*a, **{**kw, "delay": 0}))
    argv = ["score", "-m", models[0], "--sequence", WT, "--mutations", "K2A,T3G,A4C"]
    assert run(*argv) == 0
    err = capsys.readouterr().err
    assert "score: 100%" in err and "3/3" in err and "seq/s" in err
    assert run(*argv, "--quiet") == 0
    assert "score:" not in capsys.readouterr().err
