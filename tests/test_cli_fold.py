"""`esmkernels fold`: PDBs, PAE JSON and summary.tsv equal direct model calls for every option;
PDBs parse with the right residues, chains and pLDDT range; resuming recomputes nothing finished
and gives byte-identical files; out-of-memory retries at a smaller chunk, then fails alone."""

from __future__ import annotations

import json
import re

import pytest
import torch

from esmkernels.jobs.fold import PROBE
from esmkernels.models.esmfold import EsmForProteinFolding
from esmkernels.reference.esmfold.inference import retry_chunk_sizes
from esmkernels.reference.esmfold.trunk import EsmFoldingTrunk
from tests._cli import fasta, files, fold_checkpoint, run
from tests.test_esmfold_model import parse_atoms

RECORDS = [("mono", "MKTAYIAK"), ("x/y|z", "MKT:GGAV"), ("short", "QW")]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return fold_checkpoint(tmp_path_factory.mktemp("fold"))


def summary(path):
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


def assert_same_outputs(a, b):
    """Two fold output directories hold the same files, byte for byte, but for the summary's
    `seconds` (a measured time)."""
    one, two = files(a), files(b)
    assert set(one) == set(two)
    for name in one:
        if name != "summary.tsv":
            assert one[name] == two[name], name

    def timeless(path):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in summary(path)]

    assert timeless(a / "summary.tsv") == timeless(b / "summary.tsv")


def direct(ckpt, seq, recycles, chunk=None):
    model = EsmForProteinFolding.from_pretrained(ckpt).eval()
    model.set_chunk_size(chunk)
    with torch.no_grad():
        out = model.infer(seq, num_recycles=recycles)
    return out, model.output_to_pdb(out)[0]


def test_outputs_equal_direct_calls(ckpt, tmp_path):
    fa = fasta(tmp_path / "in.fasta", RECORDS)
    out = tmp_path / "o"
    argv = ["fold", fa, "-m", ckpt, "-o", out, "--num-recycles", "1", "--pae", "-q"]
    assert run(*argv, "--max-tokens-per-batch", "1") == 0
    rows = summary(out / "summary.tsv")
    assert [r["id"] for r in rows] == ["mono", "x/y|z", "short"]
    assert rows[1]["file"].startswith("x_y_z-") and rows[1]["file"].endswith(".pdb")
    for (_, seq), row in zip(RECORDS, rows):
        want, want_pdb = direct(ckpt, seq, 1)
        text = (out / row["file"]).read_text()
        got, ref = parse_atoms(text), parse_atoms(want_pdb)
        assert [(a["name"], a["res"], a["chain"], a["resseq"]) for a in got] == [
            (a["name"], a["res"], a["chain"], a["resseq"]) for a in ref
        ]
        for a, b in zip(got, ref):
            assert max(abs(x - y) for x, y in zip(a["xyz"], b["xyz"])) <= 2e-3
            assert abs(a["bfactor"] - b["bfactor"]) <= 0.02 and 0 <= a["bfactor"] <= 100
        chains = seq.split(":")
        assert len({(a["chain"], a["resseq"]) for a in got}) == len(seq.replace(":", ""))
        assert {a["chain"] for a in got} == set("AB"[: len(chains)])
        assert sum(a["name"] == "CA" and a["chain"] == "B" for a in got) == (
            len(chains[1]) if len(chains) > 1 else 0
        )
        assert row["length"] == str(len(seq.replace(":", ""))) and row["status"] == "done"
        assert float(row["mean_plddt"]) == pytest.approx(float(want.mean_plddt[0]) * 100, abs=0.01)
        assert float(row["ptm"]) == pytest.approx(float(want.ptm[0]), abs=1e-3)
        assert float(row["seconds"]) >= 0 and row["chunk_size"]
        pae = json.loads((out / row["file"].replace(".pdb", ".pae.json")).read_text())
        assert set(pae[0]) == {"predicted_aligned_error", "max_predicted_aligned_error"}
        matrix = torch.tensor(pae[0]["predicted_aligned_error"])
        keep = want.atom37_atom_exists[0].sum(-1) > 0  # the linker is left out
        n = len(seq.replace(":", ""))
        assert matrix.shape == (n, n)
        torch.testing.assert_close(
            matrix, want.predicted_aligned_error[0][keep][:, keep].float(), atol=0.006, rtol=0
        )
        assert pae[0]["max_predicted_aligned_error"] == pytest.approx(31.75)


def test_num_recycles_and_chunk_size_reach_the_model(ckpt, tmp_path, monkeypatch):
    fa = fasta(tmp_path / "in.fasta", RECORDS[:1])
    chunks = []
    real = EsmForProteinFolding.set_chunk_size
    monkeypatch.setattr(
        EsmForProteinFolding, "set_chunk_size", lambda self, c: chunks.append(c) or real(self, c)
    )
    assert run("fold", fa, "-m", ckpt, "-o", tmp_path / "r0", "--num-recycles", "0", "-q") == 0
    assert run("fold", fa, "-m", ckpt, "-o", tmp_path / "r2", "--num-recycles", "2", "-q") == 0
    assert run("fold", fa, "-m", ckpt, "-o", tmp_path / "c3", "--chunk-size", "3", "-q") == 0
    assert 3 in chunks
    assert summary(tmp_path / "c3" / "summary.tsv")[0]["chunk_size"] == "3"
    for name, recycles in (("r0", 0), ("r2", 2)):
        want, _ = direct(ckpt, "MKTAYIAK", recycles)
        row = summary(tmp_path / name / "summary.tsv")[0]
        assert float(row["ptm"]) == pytest.approx(float(want.ptm[0]), abs=1e-3)
    r0 = (tmp_path / "r0" / "mono.pdb").read_text()
    assert r0 != (tmp_path / "r2" / "mono.pdb").read_text()
    assert run("fold", fa, "-m", ckpt, "-o", tmp_path / "bad", "--chunk-size", "0") == 2
    assert run("fold", fa, "-m", ckpt, "-o", tmp_path / "bad", "--chunk-size", "big") == 2


def test_killed_run_resumes_byte_identically(ckpt, tmp_path, monkeypatch):
    fa = fasta(tmp_path / "in.fasta", RECORDS)
    argv = ["-m", ckpt, "--max-tokens-per-batch", "1", "--pae", "--num-recycles", "0", "-q"]
    assert run("fold", fa, "-o", tmp_path / "whole", *argv) == 0
    real = EsmForProteinFolding.infer_records
    calls = []

    def dies_on_second(self, seqs, **kwargs):
        calls.append(list(seqs))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, seqs, **kwargs)

    monkeypatch.setattr(EsmForProteinFolding, "infer_records", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        run("fold", fa, "-o", tmp_path / "killed", *argv)
    name = summary(tmp_path / "whole" / "summary.tsv")[1]["file"]
    first = tmp_path / "killed" / name  # the dimer goes first: 7 residues + a 25-residue linker
    stamp = first.stat().st_mtime_ns, first.stat().st_ino
    (tmp_path / "killed" / ".mono.pdb.k9x_2ab1.tmp").write_text("half a PDB")  # killed mid-write
    calls.clear()
    monkeypatch.setattr(
        EsmForProteinFolding,
        "infer_records",
        lambda self, seqs, **kw: calls.append(list(seqs)) or real(self, seqs, **kw),
    )
    assert run("fold", fa, "-o", tmp_path / "killed", *argv) == 0
    assert calls == [["MKTAYIAK"], ["QW"]]  # the dimer was not folded again
    assert (first.stat().st_mtime_ns, first.stat().st_ino) == stamp
    assert_same_outputs(tmp_path / "whole", tmp_path / "killed")
    calls.clear()
    assert run("fold", fa, "-o", tmp_path / "killed", *argv) == 0 and calls == []
    assert run("fold", fa, "-o", tmp_path / "killed", *argv[:-2], "--num-recycles", "1", "-q") == 2


def fake_trunk_oom(monkeypatch, fails):
    """The trunk raises torch.OutOfMemoryError when `fails(batch, positions, chunk)`; returns
    the (batch, positions, chunk) of every trunk call."""
    calls = []
    real = EsmFoldingTrunk.forward

    def trunk(self, s_s_0, *args, **kwargs):
        if s_s_0.shape[1] == len(PROBE):  # the job's preflight: not a record
            return real(self, s_s_0, *args, **kwargs)
        calls.append((*s_s_0.shape[:2], self.chunk_size))
        if fails(*calls[-1]):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(self, s_s_0, *args, **kwargs)

    monkeypatch.setattr(EsmFoldingTrunk, "forward", trunk)
    return calls


def test_out_of_memory_splits_the_batch_retries_smaller_chunks_then_fails_alone(
    ckpt, tmp_path, monkeypatch, capsys
):
    fa = fasta(tmp_path / "in.fasta", RECORDS)

    def fails(batch, positions, chunk):  # mono (8) never fits; the dimer (32) fits at a retry
        alone = [c for b, n, c in calls if (b, n) == (1, 32)]
        return batch > 1 or positions == 8 or len(alone) == 1

    calls = fake_trunk_oom(monkeypatch, fails)
    code = run("fold", fa, "-m", ckpt, "-o", tmp_path / "o", "--num-recycles", "0", "-q")
    assert code == 1
    assert calls[0][:2] == (3, 32)  # one batch, split after the OOM
    first, retry = [c for b, n, c in calls if (b, n) == (1, 32)]
    assert retry == retry_chunk_sizes(first, 32)[0]  # half the chunk "auto" picked
    rows = {r["id"]: r for r in summary(tmp_path / "o" / "summary.tsv")}
    assert rows["x/y|z"]["status"] == "done" and rows["x/y|z"]["chunk_size"] == str(retry)
    assert rows["short"]["status"] == "done"
    assert rows["mono"]["status"] == "failed"
    assert re.fullmatch(
        r"OutOfMemoryError: ESMFold infer: out of memory folding a sequence of L=8 positions "
        r"\(linkers included\) alone, at chunk sizes \[\w+, 4\] .*",
        rows["mono"]["reason"],
    ), rows["mono"]["reason"]
    assert not (tmp_path / "o" / "mono.pdb").exists()
    assert "mono: OutOfMemoryError" in capsys.readouterr().err


def test_skip_invalid_and_multimer_rules(ckpt, tmp_path, capsys):
    fa = fasta(tmp_path / "in.fasta", [("ok", "MKTA"), ("gap", "MK::TA"), ("bad", "MKJ")])
    assert run("fold", fa, "-m", ckpt, "-o", tmp_path / "o", "-q") == 2
    assert "record 'gap': chain 2 is empty" in capsys.readouterr().err
    assert run("fold", fa, "-m", ckpt, "-o", tmp_path / "o", "-q", "--skip-invalid") == 1
    rows = {r["id"]: r for r in summary(tmp_path / "o" / "summary.tsv")}
    assert rows["ok"]["status"] == "done"
    assert rows["bad"]["reason"] == "invalid residue 'J' at position 3"
    assert sorted(p.name for p in (tmp_path / "o").glob("*.pdb")) == ["ok.pdb"]


def test_shares_fold_disjoint_records(ckpt, tmp_path):
    fa = fasta(tmp_path / "in.fasta", RECORDS)
    out = tmp_path / "o"
    for k in (0, 1):
        assert (
            run("fold", fa, "-m", ckpt, "-o", out, "--shard", f"{k}/2", "--num-recycles", "0", "-q")
            == 0
        )
    parts = [{r["id"] for r in summary(out / f"summary-{k}of2.tsv")} for k in (0, 1)]
    assert parts[0] and parts[1] and not parts[0] & parts[1]
    assert parts[0] | parts[1] == {rid for rid, _ in RECORDS}
    assert len(list(out.glob("*.pdb"))) == 3 and not (out / "summary.tsv").exists()


def test_out_of_memory_halves_the_chunk_size_given(ckpt, tmp_path, monkeypatch):
    fa = fasta(tmp_path / "in.fasta", [("long", "MKTAYIAKQRQISFVKSHFS")])
    calls = fake_trunk_oom(monkeypatch, lambda b, n, chunk: chunk == 16)
    argv = ["-m", ckpt, "-o", tmp_path / "o", "--num-recycles", "0", "--chunk-size", "16", "-q"]
    assert run("fold", fa, *argv) == 0
    assert [c for _, _, c in calls] == [16, 8]
    assert summary(tmp_path / "o" / "summary.tsv")[0]["chunk_size"] == "8"


def test_residues_without_atoms_are_listed_in_the_summary_with_a_warning(ckpt, tmp_path, capsys):
    fa = fasta(tmp_path / "in.fasta", [("odd", "MKXAU:GBZO"), ("plain", "MKTA")])
    assert run("fold", fa, "-m", ckpt, "-o", tmp_path / "o", "--num-recycles", "0", "-q") == 0
    err = capsys.readouterr().err
    assert "warning: odd: residues X3,U5,B7,Z8,O9 are not standard amino acids" in err
    assert "no atoms" in err and "plain" not in err.split("warning")[1]
    rows = {r["id"]: r for r in summary(tmp_path / "o" / "summary.tsv")}
    assert rows["odd"]["no_atoms"] == "X3,U5,B7,Z8,O9" and rows["plain"]["no_atoms"] == ""
    assert rows["odd"]["length"] == "9"
    atoms = parse_atoms((tmp_path / "o" / "odd.pdb").read_text())
    # chain A numbered 1..5; chain B continues after the linker and the 512 jump: 5 + 25 + 512
    have = {(a["chain"], a["resseq"]) for a in atoms}
    assert have == {("A", 1), ("A", 2), ("A", 4), ("B", 543)}
