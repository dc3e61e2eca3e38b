"""`torchrun --nproc-per-node 2 -m esmkernels embed` on CPU (gloo): each rank writes its own
share; a rank killed mid-run and a rerun give the files of an uninterrupted job; the union reads
as one store equal to a single-process run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from esmkernels import open_embeddings
from tests._cli import fasta, files, lm_checkpoint, run

RECORDS = [(f"p{i}/x", "MKTAYIAKQRQISFVKSHFSRQ"[: 4 + 2 * i]) for i in range(8)]
# Rank 1 dies (as if killed) right after its first shard is durable.
KILL_RANK_1 = textwrap.dedent(
    """
    import os
    if os.environ.get("RANK") == "1":
        from esmkernels.jobs.embeddings import EmbeddingWriter
        real = EmbeddingWriter.write_shard
        def write_then_die(self, *args, **kwargs):
            real(self, *args, **kwargs)
            os._exit(9)
        EmbeddingWriter.write_shard = write_then_die
    """
)


def torchrun(argv, tmp_path, kill=False):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if kill:
        hook = tmp_path / "hook"
        hook.mkdir(exist_ok=True)
        (hook / "sitecustomize.py").write_text(KILL_RANK_1)
        env["PYTHONPATH"] = os.pathsep.join([str(hook), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "-m", "esmkernels", *map(str, argv)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_torchrun_two_ranks_killed_and_resumed(tmp_path):
    ckpt = lm_checkpoint(tmp_path)
    fa = fasta(tmp_path / "in.fasta", RECORDS)
    opts = ["-m", ckpt, "--include", "mean", "per_tok", "--records-per-shard", "1", "-q"]
    # the same shares without torchrun: the reference for the files each rank must write
    for k in (0, 1):
        assert run("embed", fa, "-o", tmp_path / "shards", "--shard", f"{k}/2", *opts) == 0
    assert run("embed", fa, "-o", tmp_path / "single", *opts) == 0

    out = tmp_path / "ddp"
    died = torchrun(["embed", fa, "-o", out, *opts], tmp_path, kill=True)
    assert died.returncode != 0, died.stderr[-2000:]
    rank1 = sorted(p.name for p in out.glob("shard-1of2-*"))
    assert rank1 == ["shard-1of2-00000.safetensors"]  # killed after one of its four shards
    kept = (out / rank1[0]).stat()
    again = torchrun(["embed", fa, "-o", out, *opts], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "index-0of2.json" in again.stderr and "index-1of2.json" in again.stderr
    assert sorted(files(out)) == sorted(files(tmp_path / "shards"))  # no temporary files left
    assert files(out) == files(tmp_path / "shards")
    assert (out / rank1[0]).stat().st_ino == kept.st_ino  # resumed, not rewritten
    assert (out / rank1[0]).stat().st_mtime_ns == kept.st_mtime_ns

    store, single = open_embeddings(out), open_embeddings(tmp_path / "single")
    assert store.ids == single.ids == [rid.split()[0] for rid, _ in RECORDS]
    for rid in store.ids:
        for key in ("mean_representations", "representations"):
            torch.testing.assert_close(
                store[rid][key][2], single[rid][key][2], atol=1e-5, rtol=1e-5
            )
