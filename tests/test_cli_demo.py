"""`esmkernels demo` (`make demo`): runs offline end to end, says its weights are random, says
where everything went, and agrees with the reference; its checkpoints are deterministic."""

from __future__ import annotations

import csv

from esmkernels import open_embeddings
from esmkernels.jobs import demo
from esmkernels.jobs.fasta import read_records
from tests._cli import files, run


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run("demo", "--out", out, "--quiet", "--device", "cpu") == 0
    text = capsys.readouterr().out
    assert text.startswith("=") and "RANDOM WEIGHTS" in text
    records, _ = read_records(demo.demo_fasta(), multimer=True)
    assert any(":" in r.sequence for r in records)  # one multimer
    store = open_embeddings(out / "embeddings")
    assert len(store) == sum(r.sequence.count(":") + 1 for r in records) and not store.failed
    for r in records:
        pdb = (out / "structures" / f"{r.id}.pdb").read_text()
        chains = {line[21] for line in pdb.splitlines() if line.startswith("ATOM")}
        assert chains == set("ABCDEFGH"[: r.sequence.count(":") + 1])
        assert (out / "structures" / f"{r.id}.pae.json").is_file()
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert [row["mutant"] for row in rows] == demo.MUTATIONS.split(",")
    for path in (out / "embeddings", out / "structures", out / "scores.csv"):
        assert str(path) in text
    # agreement and speed lines carry numbers; the agreement is close
    lm_line = next(line for line in text.splitlines() if "final hidden states" in line)
    assert float(lm_line.split()[-1]) < 1e-4
    fold_line = next(line for line in text.splitlines() if "atom position difference" in line)
    assert float(fold_line.split("difference ")[1].split()[0]) < 1e-2
    assert "x\n" in text and "reference" in text
    for real in ("facebook/esmfold_v1", "facebook/esm2_t33_650M_UR50D"):
        assert f"--model {real}" in text


def test_demo_checkpoints_are_deterministic(tmp_path):
    a = demo.make_checkpoints(tmp_path / "a")
    b = demo.make_checkpoints(tmp_path / "b")
    for x, y in zip(a, b):
        assert files(x) == files(y) and "model.safetensors" in files(x)
