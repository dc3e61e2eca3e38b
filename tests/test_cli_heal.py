"""Reruns heal (issue 18): a record that failed is retried on the rerun, with the companions of
its planned batch, so that once the cause is gone the outputs are byte-identical to an
uninterrupted run's; batches without a failure are never recomputed; `--no-retry-failed` keeps
failures. What would fail every record (a backend that cannot run here, a head size the
kernels do not take) stops the job before anything is written, with exit code 2."""

from __future__ import annotations

import pytest
import torch

from esmkernels import open_embeddings
from esmkernels.jobs.embed import EmbedJob
from esmkernels.models.esmfold import EsmForProteinFolding
from esmkernels.reference.esmfold.trunk import EsmFoldingTrunk
from tests._cli import fasta, files, fold_checkpoint, lm_checkpoint, run
from tests.test_cli_embed import RECORDS, probe
from tests.test_cli_fold import RECORDS as FOLD_RECORDS
from tests.test_cli_fold import assert_same_outputs, summary


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("heal")
    return lm_checkpoint(root), fold_checkpoint(root)


def stamps(directory):
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in directory.iterdir()}


# Shards [0, 1, 3] and [2, 4]; the first shard's planned batches are [0] and [1, 3].
EMBED = ["--records-per-shard", "3", "--max-tokens-per-batch", "36", "-q"]
EMBED += ["--include", "mean", "per_tok", "bos", "contacts", "--repr-layers", "0", "-1"]


def test_embed_rerun_retries_the_failed_batch_and_matches_a_clean_run(
    ckpts, tmp_path, monkeypatch, capsys
):
    lm, _ = ckpts
    fa = fasta(tmp_path / "in.fasta", RECORDS)
    assert run("embed", fa, "-m", lm, "-o", tmp_path / "clean", *EMBED) == 0
    real = EmbedJob._forward
    batches = []

    def oom_on_d(self, batch):  # record 3 ("d") runs out of memory in any batch
        if not probe(batch):
            batches.append(sorted(s[0] for s in batch))
            if any(s[0] == 3 for s in batch):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real(self, batch)

    monkeypatch.setattr(EmbedJob, "_forward", oom_on_d)
    out = tmp_path / "healed"
    assert run("embed", fa, "-m", lm, "-o", out, *EMBED) == 1
    assert [1, 3] in batches and [1] in batches and [3] in batches  # split, then d alone
    assert open_embeddings(out).failed == {"d": "out of memory even alone (15 residues)"}
    capsys.readouterr()
    other_shard = out / "shard-0of1-00001.safetensors"
    before = stamps(out)

    # --no-retry-failed: nothing is computed, the failure stays
    batches.clear()
    assert run("embed", fa, "-m", lm, "-o", out, *EMBED, "--no-retry-failed") == 1
    assert batches == [] and "retrying" not in capsys.readouterr().err

    # the cause is gone: only the planned batch holding d runs again, whole
    monkeypatch.setattr(EmbedJob, "_forward", lambda self, b: batches.append(b) or real(self, b))
    batches.clear()
    assert run("embed", fa, "-m", lm, "-o", out, *EMBED) == 0
    assert "retrying 1 failed record(s)" in capsys.readouterr().err
    assert [sorted(s[0] for s in b) for b in batches if not probe(b)] == [[1, 3]]
    assert stamps(out)[other_shard.name] == before[other_shard.name]  # never rewritten
    assert files(out) == files(tmp_path / "clean")  # byte for byte
    assert not open_embeddings(out).failed

    batches.clear()
    assert run("embed", fa, "-m", lm, "-o", out, *EMBED) == 0  # all done: nothing runs
    assert [b for b in batches if not probe(b)] == []


def test_fold_rerun_retries_the_failed_record_and_matches_a_clean_run(
    ckpts, tmp_path, monkeypatch, capsys
):
    _, fold = ckpts
    fa = fasta(tmp_path / "in.fasta", FOLD_RECORDS)  # one planned batch of all three
    argv = ["-m", fold, "--pae", "--num-recycles", "0", "-q"]
    assert run("fold", fa, "-o", tmp_path / "clean", *argv) == 0
    real = EsmFoldingTrunk.forward
    broken = [True]

    def trunk(self, s_s_0, *args, **kwargs):  # "mono" (8 positions) never fits, nor a batch
        batch, positions = s_s_0.shape[:2]
        if broken[0] and (batch > 1 or positions == 8):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(self, s_s_0, *args, **kwargs)

    monkeypatch.setattr(EsmFoldingTrunk, "forward", trunk)
    out = tmp_path / "healed"
    assert run("fold", fa, "-o", out, *argv) == 1
    rows = {r["id"]: r for r in summary(out / "summary.tsv")}
    assert rows["mono"]["status"] == "failed" and rows["short"]["status"] == "done"
    capsys.readouterr()

    calls = []
    infer = EsmForProteinFolding.infer_records
    monkeypatch.setattr(
        EsmForProteinFolding,
        "infer_records",
        lambda self, seqs, **kw: calls.append(list(seqs)) or infer(self, seqs, **kw),
    )
    assert run("fold", fa, "-o", out, *argv, "--no-retry-failed") == 1
    assert calls == [] and "retrying" not in capsys.readouterr().err

    broken[0] = False
    assert run("fold", fa, "-o", out, *argv) == 0
    assert "retrying 1 failed record(s)" in capsys.readouterr().err
    assert calls == [["MKT:GGAV", "MKTAYIAK", "QW"]]  # the planned batch, whole (longest first)
    assert_same_outputs(tmp_path / "clean", out)  # byte for byte, but measured seconds
    calls.clear()
    assert run("fold", fa, "-o", out, *argv) == 0 and calls == []


@pytest.mark.parametrize("command", ["embed", "fold", "score"])
def test_a_backend_that_cannot_run_here_stops_before_any_work(
    ckpts, command, tmp_path, monkeypatch, capsys
):
    lm, fold = ckpts
    fa = fasta(tmp_path / "in.fasta", [("a", "MKTAYIAK"), ("b", "MKV")])
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # CPU tensors, no interpreter
    out = tmp_path / "out"
    if command == "score":
        argv = [
            "score",
            "-m",
            lm,
            "--sequence",
            "MKTAYIAK",
            "--mutations",
            "K2A",
            "-o",
            out / "s.csv",
        ]
    else:
        argv = [command, fa, "-m", fold if command == "fold" else lm, "-o", out, "-q"]
    assert run(*argv, "--backend", "triton") == 2
    err = capsys.readouterr().err
    assert f"esmkernels {command}: error: --model" in err and "backend triton" in err
    assert "TRITON_INTERPRET=1" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_head_size_the_kernels_do_not_take_stops_before_any_work(tmp_path, capsys):
    wide = lm_checkpoint(tmp_path, hidden_size=48, num_attention_heads=2)  # head dim 24
    fa = fasta(tmp_path / "in.fasta", [("a", "MKTAYIAK")])
    out = tmp_path / "out"
    assert run("embed", fa, "-m", wide, "-o", out, "-q", "--backend", "triton") == 2
    assert "got D=24" in capsys.readouterr().err
    assert not out.exists()
    assert run("embed", fa, "-m", wide, "-o", out, "-q", "--backend", "torch") == 0
