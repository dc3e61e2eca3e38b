"""The `esmkernels` command line on tiny random checkpoints: outputs equal direct model calls,
errors are clear and lose nothing."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from esmkernels import cli
from esmkernels.configuration import EsmConfig
from esmkernels.fasta import write_fasta
from esmkernels.reference import esm as ref
from esmkernels.tokenization import EsmTokenizer
from tests._configs import tiny_lm_config

SEQS = {"p1": "MKTAYIAKQRQISFVKSH", "p2": "MVLSPADK", "p3": "GG"}


def lm_config(**kw) -> EsmConfig:
    return tiny_lm_config("esm2", **kw)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = ref.EsmForMaskedLM(lm_config()).eval()
    model.save_pretrained(path)
    EsmTokenizer().save_pretrained(path)
    return path, model


@pytest.fixture
def fasta(tmp_path):
    path = tmp_path / "in.fasta"
    write_fasta(list(SEQS.items()), path)
    return path


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_embed_matches_model(checkpoint, fasta, tmp_path, pool):
    path, model = checkpoint
    out = tmp_path / "emb.safetensors"
    argv = ["embed", str(path), str(fasta), "-o", str(out), "--pool", pool, "--quiet"]
    assert cli.main([*argv, "--device", "cpu", "--max-tokens", "40"]) == 0
    got = load_file(out)
    assert set(got) == set(SEQS)
    tok = EsmTokenizer()
    for rid, seq in SEQS.items():
        enc = tok(seq, return_tensors="pt")
        with torch.no_grad():
            h = model.esm(**enc).last_hidden_state[0]
        want = h[1 : len(seq) + 1].mean(0) if pool == "mean" else h[0]
        torch.testing.assert_close(got[rid], want, atol=1e-5, rtol=1e-5)


def test_embed_refuses_to_overwrite_and_duplicate_ids(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    dup = tmp_path / "dup.fasta"
    write_fasta([("a", "MKT"), ("a", "GGG")], dup)
    out = tmp_path / "o.safetensors"
    assert cli.main(["embed", str(path), str(dup), "-o", str(out), "--quiet"]) == 1
    assert "duplicate record id 'a'" in capsys.readouterr().err
    out.write_bytes(b"keep me")
    ok = tmp_path / "ok.fasta"
    write_fasta([("a", "MKT")], ok)
    assert cli.main(["embed", str(path), str(ok), "-o", str(out), "--quiet"]) == 1
    assert "exists" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"


def test_embed_too_long_for_absolute_model(tmp_path, capsys):
    cfg = lm_config(position_embedding_type="absolute", max_position_embeddings=12)
    ckpt = tmp_path / "abs"
    ref.EsmModel(cfg).save_pretrained(ckpt)
    fa = tmp_path / "long.fasta"
    write_fasta([("short", "MKTAYIAK"), ("long", "MKTAYIAKQ")], fa)
    code = cli.main(["embed", str(ckpt), str(fa), "-o", str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err
    assert code == 1
    assert "long (9)" in err and "8 residues" in err and "short" not in err


def test_embed_saves_partial_results_on_failure(checkpoint, fasta, tmp_path, monkeypatch):
    path, _ = checkpoint
    calls = {"n": 0}
    real = cli._embed_batch

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cli, "_embed_batch", flaky)
    out = tmp_path / "emb.safetensors"
    with pytest.raises(KeyboardInterrupt):
        cli.main(["embed", str(path), str(fasta), "-o", str(out), "--max-tokens", "20", "--quiet"])
    partial = load_file(tmp_path / "emb.partial.safetensors")
    assert len(partial) == 1 and not out.exists()


def test_score(checkpoint, capsys):
    path, model = checkpoint
    seq = SEQS["p1"]
    assert (
        cli.main(
            ["score", str(path), "--sequence", seq, "--mutations", "K2A,T3G", "--device", "cpu"]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "mutation\tscore" and [ln.split("\t")[0] for ln in lines[1:]] == [
        "K2A",
        "T3G",
    ]
    # masked-marginals by definition for K2A: log p(A) - log p(K) at the masked position
    tok = EsmTokenizer()
    masked = seq[:1] + "<mask>" + seq[2:]
    with torch.no_grad():
        logp = model(**tok(masked, return_tensors="pt")).logits[0, 2].log_softmax(-1)
    want = (logp[tok.convert_tokens_to_ids("A")] - logp[tok.convert_tokens_to_ids("K")]).item()
    assert float(lines[1].split("\t")[1]) == pytest.approx(want, abs=1e-4)
    assert cli.main(["score", str(path), "--sequence", seq, "--mutations", "A2G"]) == 1
    assert "A2G" in capsys.readouterr().err


def test_fold_writes_pdbs_and_resumes(tmp_path, capsys):
    from tests.test_esmfold_model import tiny_model

    ckpt = tmp_path / "fold"
    tiny_model().save_pretrained(ckpt)
    fa = tmp_path / "in.fasta"
    write_fasta([("mono", "MKTAYIAK"), ("dimer", "MKT:GGA"), ("bad", "MKZ1")], fa)
    out = tmp_path / "pdb"
    code = cli.main(["fold", str(ckpt), str(fa), "-o", str(out), "--num-recycles", "0", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "failed: bad" in err
    mono = (out / "mono.pdb").read_text()
    dimer = (out / "dimer.pdb").read_text()
    assert mono.count(" CA ") == 8 and mono.rstrip().endswith("END")
    chains = {line[21] for line in dimer.splitlines() if line.startswith("ATOM")}
    assert chains == {"A", "B"} and not (out / "bad.pdb").exists()
    code = cli.main(["fold", str(ckpt), str(fa), "-o", str(out), "--quiet"])
    assert "skipping 2 already folded" in capsys.readouterr().err


def test_info_and_usage(capsys):
    assert cli.main(["info"]) == 0
    assert "esmkernels" in capsys.readouterr().out
    assert cli.main([]) == cli.EXIT_USAGE
