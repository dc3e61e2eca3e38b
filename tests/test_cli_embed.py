"""`esmkernels embed`: the store holds what direct reference-model calls give, for every option;
it resumes without recomputing and byte-identically; failures are isolated; shares add up."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from esmkernels import open_embeddings
from esmkernels.core.tokenization import EsmTokenizer
from esmkernels.jobs.embed import EmbedJob, windows
from esmkernels.jobs.embeddings import EmbeddingWriter
from esmkernels.jobs.files import split_parts
from esmkernels.reference import esm as ref
from tests._cli import fasta, files, lm_checkpoint, run

RECORDS = [
    ("sp|P69905|HBA_HUMAN hemoglobin", "MVLSPADKTNVKAAWGKVG"),
    ("a/b", "MKTAYIAKQR"),
    ("../c", "GG"),
    ("d", "MKVLAAGIVGLLLAQ"),
    ("e", "MQIFVK"),
]
IDS = ["sp|P69905|HBA_HUMAN", "a/b", "../c", "d", "e"]


def probe(batch) -> bool:
    """Whether a batch of segments is the made-up input of `EmbedJob.preflight`."""
    return all(order < 0 for order, *_ in batch)


def reference_outputs(ckpt, seq, layers, dtype=torch.float32):
    """Direct single-sequence calls of the reference model: per-layer hidden states, contacts."""
    model = ref.EsmModel.from_pretrained(ckpt, dtype=dtype).eval()
    enc = EsmTokenizer()(seq, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
        contacts = model.predict_contacts(enc["input_ids"], enc["attention_mask"])[0]
    hidden = {layer: out.hidden_states[layer][0].float() for layer in layers}
    return hidden, contacts.float()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return lm_checkpoint(tmp_path_factory.mktemp("embed"))


def test_every_pool_and_layer_equals_the_reference(ckpt, tmp_path):
    fa = fasta(tmp_path / "in.fasta", RECORDS)
    out = tmp_path / "emb"
    argv = ["embed", fa, "--model", ckpt, "--out", out, "--repr-layers", "0", "-1", "1"]
    argv += ["--include", "mean", "per_tok", "bos", "contacts", "--max-tokens-per-batch", "40"]
    assert run(*argv, "--quiet") == 0
    store = open_embeddings(out)
    assert store.ids == IDS and list(store) == IDS and len(store) == 5 and not store.failed
    assert store.layers == [0, 1, 2]  # -1 is the final layer (2) of this 2-layer model
    for rid, (_, seq) in zip(IDS, RECORDS):
        hidden, contacts = reference_outputs(ckpt, seq, [0, 1, 2])
        rec = store[rid]
        assert rec["label"] == rid and rec["length"] == len(seq)
        for layer in (0, 1, 2):
            h = hidden[layer]
            atol = dict(atol=2e-5, rtol=2e-5)
            torch.testing.assert_close(rec["representations"][layer], h[1 : len(seq) + 1], **atol)
            torch.testing.assert_close(
                rec["mean_representations"][layer], h[1 : len(seq) + 1].mean(0), **atol
            )
            torch.testing.assert_close(rec["bos_representations"][layer], h[0], **atol)
        torch.testing.assert_close(rec["contacts"], contacts, atol=2e-5, rtol=2e-5)
    matrix, ids = store.matrix(-1, "mean")
    assert ids == IDS and matrix.shape == (5, 32) and isinstance(matrix, np.memmap)
    for n, rid in enumerate(IDS):
        np.testing.assert_array_equal(matrix[n], store[rid]["mean_representations"][2].numpy())
    bos, _ = store.matrix(0, "bos")
    np.testing.assert_array_equal(bos[1], store["a/b"]["bos_representations"][0].numpy())
    # ids live in the index only: no file is named after one
    names = {p.name for p in out.iterdir()}
    assert names == {"index-0of1.json", "shard-0of1-00000.safetensors"}


def test_records_per_shard_and_batches_are_used(ckpt, tmp_path, monkeypatch):
    fa = fasta(tmp_path / "in.fasta", RECORDS)
    sizes = []
    real = EmbedJob._forward

    def spy(self, batch):
        if not probe(batch):
            sizes.append(len(batch))
        return real(self, batch)

    monkeypatch.setattr(EmbedJob, "_forward", spy)
    out = tmp_path / "emb"
    argv = ["embed", fa, "-m", ckpt, "-o", out, "--records-per-shard", "2", "-q"]
    assert run(*argv, "--max-tokens-per-batch", "17") == 0
    # longest first: shards {19, 15}, {10, 6}, {2}; 17 tokens fit one record of 15 (+2) at most
    assert sorted(p.name for p in out.glob("shard-*")) == [
        f"shard-0of1-0000{i}.safetensors" for i in range(3)
    ]
    assert sizes == [1, 1, 1, 1, 1]
    sizes.clear()
    out2 = tmp_path / "emb2"
    assert run("embed", fa, "-m", ckpt, "-o", out2, "-q", "--max-tokens-per-batch", "1000") == 0
    assert sizes == [5]
    a, b = open_embeddings(out), open_embeddings(out2)
    for rid in IDS:
        torch.testing.assert_close(
            a[rid]["mean_representations"][2],
            b[rid]["mean_representations"][2],
            atol=1e-5,
            rtol=1e-5,
        )


def test_dtype_and_backend_reach_the_model(ckpt, tmp_path):
    from tests._launches import launches

    fa = fasta(tmp_path / "in.fasta", RECORDS[:2])
    seq = RECORDS[1][1]
    assert run("embed", fa, "-m", ckpt, "-o", tmp_path / "bf16", "--dtype", "bfloat16", "-q") == 0
    got = open_embeddings(tmp_path / "bf16")["a/b"]["mean_representations"][2]
    bf16, _ = reference_outputs(ckpt, seq, [2], dtype=torch.bfloat16)
    fp32, _ = reference_outputs(ckpt, seq, [2])
    want16, want32 = bf16[2][1 : len(seq) + 1].mean(0), fp32[2][1 : len(seq) + 1].mean(0)
    assert (want16 - want32).abs().max() > 1e-3  # bf16 is visibly different here ...
    torch.testing.assert_close(got, want16, atol=0.05, rtol=0.05)  # ... and the store has it
    assert (got - want32).abs().max() > 1e-4
    with launches() as seen:
        assert run("embed", fa, "-m", ckpt, "-o", tmp_path / "tr", "--backend", "triton", "-q") == 0
    seen.no_fallback()
    seen.expect("_rotary_attention_fwd_kernel")
    with launches() as seen:
        assert run("embed", fa, "-m", ckpt, "-o", tmp_path / "to", "--backend", "torch", "-q") == 0
    assert not seen.kernels


@pytest.fixture(scope="module")
def absolute_ckpt(tmp_path_factory):
    # positions 2..11: at most 10 tokens, 8 residues
    return lm_checkpoint(
        tmp_path_factory.mktemp("abs"),
        "esm1b",
        position_embedding_type="absolute",
        max_position_embeddings=12,
    )


def test_long_sequences_error_truncate_window(absolute_ckpt, tmp_path, capsys):
    long = "MKTAYIAKQRQISFV"  # 15 residues > 8
    fa = fasta(tmp_path / "in.fasta", [("short", "MKTAY"), ("long", long)])
    common = ["--include", "mean", "per_tok", "bos", "contacts", "-q"]
    assert run("embed", fa, "-m", absolute_ckpt, "-o", tmp_path / "err", *common) == 1
    err = capsys.readouterr().err
    assert "long: too long: 15 residues, the limit is 8" in err
    store = open_embeddings(tmp_path / "err")
    assert store.ids == ["short"] and "too long" in store.failed["long"]

    assert (
        run(
            "embed",
            fa,
            "-m",
            absolute_ckpt,
            "-o",
            tmp_path / "tr",
            "--long-sequences",
            "truncate",
            *common,
        )
        == 0
    )
    rec = open_embeddings(tmp_path / "tr")["long"]
    hidden, contacts = reference_outputs(absolute_ckpt, long[:8], [2])
    torch.testing.assert_close(rec["representations"][2], hidden[2][1:9], atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(rec["contacts"], contacts, atol=2e-5, rtol=2e-5)

    assert (
        run(
            "embed",
            fa,
            "-m",
            absolute_ckpt,
            "-o",
            tmp_path / "win",
            "--long-sequences",
            "window",
            *common,
        )
        == 0
    )
    rec = open_embeddings(tmp_path / "win")["long"]
    assert windows(15, 8) == [(0, 8), (4, 12), (7, 15)]
    per_tok = torch.zeros(15, 32)
    count = torch.zeros(15, 1)
    pair, pair_n = torch.zeros(15, 15), torch.zeros(15, 15)
    bos = torch.zeros(32)
    for a, b in [(0, 8), (4, 12), (7, 15)]:
        hidden, contacts = reference_outputs(absolute_ckpt, long[a:b], [2])
        per_tok[a:b] += hidden[2][1:9]
        count[a:b] += 1
        pair[a:b, a:b] += contacts
        pair_n[a:b, a:b] += 1
        bos += hidden[2][0] / 3
    per_tok /= count
    tol = dict(atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(rec["representations"][2], per_tok, **tol)
    torch.testing.assert_close(rec["mean_representations"][2], per_tok.mean(0), **tol)
    torch.testing.assert_close(rec["bos_representations"][2], bos, **tol)
    torch.testing.assert_close(rec["contacts"], pair / pair_n.clamp(min=1), **tol)
    assert rec["contacts"][0, 14] == 0  # no window holds residues 1 and 15


def test_truncation_seq_length_on_a_rotary_model(ckpt, tmp_path):
    fa = fasta(tmp_path / "in.fasta", RECORDS[:2])
    argv = ["embed", fa, "-m", ckpt, "-o", tmp_path / "t", "--truncation-seq-length", "7"]
    assert run(*argv, "--long-sequences", "truncate", "--include", "per_tok", "-q") == 0
    store = open_embeddings(tmp_path / "t")
    rec = store["a/b"]
    hidden, _ = reference_outputs(ckpt, RECORDS[1][1][:7], [2])
    torch.testing.assert_close(rec["representations"][2], hidden[2][1:8], atol=2e-5, rtol=2e-5)
    assert store.entry("a/b")["stored_length"] == 7 and rec["length"] == 10


def test_killed_run_resumes_byte_identically_without_recomputing(ckpt, tmp_path, monkeypatch):
    fa = fasta(tmp_path / "in.fasta", RECORDS)
    argv = ["--include", "mean", "per_tok", "--records-per-shard", "2", "-q"]
    assert run("embed", fa, "-m", ckpt, "-o", tmp_path / "whole", *argv) == 0

    real_write = EmbeddingWriter.write_shard
    written = []

    def killed_after_one(self, shard, entries, tensors):
        if written:
            raise KeyboardInterrupt  # the job dies while computing its second shard
        written.append(shard)
        return real_write(self, shard, entries, tensors)

    monkeypatch.setattr(EmbeddingWriter, "write_shard", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        run("embed", fa, "-m", ckpt, "-o", tmp_path / "killed", *argv)
    monkeypatch.setattr(EmbeddingWriter, "write_shard", real_write)
    (tmp_path / "killed" / ".shard-0of1-00001.safetensors.x1y2.tmp").write_bytes(b"half")
    first = tmp_path / "killed" / "shard-0of1-00000.safetensors"
    stamp = first.stat().st_mtime_ns, first.stat().st_ino
    assert open_embeddings(tmp_path / "killed").ids == [IDS[0], IDS[3]]  # the longest two

    seen = []
    real_forward = EmbedJob._forward
    monkeypatch.setattr(
        EmbedJob,
        "_forward",
        lambda self, b: seen.extend(s[0] for s in b if not probe(b)) or real_forward(self, b),
    )
    assert run("embed", fa, "-m", ckpt, "-o", tmp_path / "killed", *argv) == 0
    assert sorted(seen) == [1, 2, 4]  # only the records the killed run had not finished
    assert (first.stat().st_mtime_ns, first.stat().st_ino) == stamp  # finished shard untouched
    assert files(tmp_path / "killed") == files(tmp_path / "whole")

    seen.clear()
    assert run("embed", fa, "-m", ckpt, "-o", tmp_path / "killed", *argv) == 0  # all done
    assert seen == []


def test_out_of_memory_is_isolated_to_the_record(ckpt, tmp_path, monkeypatch, capsys):
    fa = fasta(tmp_path / "in.fasta", RECORDS)
    real = EmbedJob._forward
    batches = []

    def oom_on_d(self, batch):
        if probe(batch):
            return real(self, batch)
        batches.append(sorted(s[0] for s in batch))
        if any(s[0] == 3 for s in batch):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real(self, batch)

    monkeypatch.setattr(EmbedJob, "_forward", oom_on_d)
    assert run("embed", fa, "-m", ckpt, "-o", tmp_path / "o", "-q") == 1
    assert batches[0] == [0, 1, 2, 3, 4] and [3] in batches  # split down to d alone
    err = capsys.readouterr().err
    assert "1 record(s) failed" in err and "d: out of memory even alone (15 residues)" in err
    store = open_embeddings(tmp_path / "o")
    assert store.ids == ["sp|P69905|HBA_HUMAN", "a/b", "../c", "e"]
    assert store.failed == {"d": "out of memory even alone (15 residues)"}
    hidden, _ = reference_outputs(ckpt, "MQIFVK", [2])
    torch.testing.assert_close(
        store["e"]["mean_representations"][2], hidden[2][1:7].mean(0), atol=2e-5, rtol=2e-5
    )


def test_skip_invalid_records_them_as_failed(ckpt, tmp_path, capsys):
    fa = fasta(tmp_path / "in.fasta", [("ok", "MKTAY"), ("bad", "MKT1Y"), ("empty", "")])
    assert run("embed", fa, "-m", ckpt, "-o", tmp_path / "x", "-q") == 2
    assert "record 'bad': invalid residue '1' at position 4" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing done
    assert run("embed", fa, "-m", ckpt, "-o", tmp_path / "y", "-q", "--skip-invalid") == 1
    store = open_embeddings(tmp_path / "y")
    assert store.ids == ["ok"]
    assert store.failed == {"bad": "invalid residue '1' at position 4", "empty": "empty sequence"}


def test_shares_are_disjoint_and_their_union_is_the_whole_job(ckpt, tmp_path, capsys):
    fa = fasta(tmp_path / "in.fasta", RECORDS)
    assert run("embed", fa, "-m", ckpt, "-o", tmp_path / "one", "-q") == 0
    for k in (0, 1):
        assert run("embed", fa, "-m", ckpt, "-o", tmp_path / "two", "--shard", f"{k}/2", "-q") == 0
    one, two = open_embeddings(tmp_path / "one"), open_embeddings(tmp_path / "two")
    assert two.ids == one.ids == IDS
    parts = [
        {
            e["id"]
            for e in __import__("json").loads(
                (tmp_path / "two" / f"index-{k}of2.json").read_text()
            )["records"]
        }
        for k in (0, 1)
    ]
    assert parts[0] and parts[1] and not parts[0] & parts[1] and parts[0] | parts[1] == set(IDS)
    for rid in IDS:
        torch.testing.assert_close(
            two[rid]["mean_representations"][2],
            one[rid]["mean_representations"][2],
            atol=1e-5,
            rtol=1e-5,
        )
    # a different split in the same directory, or other settings, are refused before any work
    assert run("embed", fa, "-m", ckpt, "-o", tmp_path / "two", "--shard", "0/3", "-q") == 2
    assert "split 2 ways" in capsys.readouterr().err
    assert run("embed", fa, "-m", ckpt, "-o", tmp_path / "one", "--include", "bos", "-q") == 2
    assert "include: ['mean'] -> ['bos']" in capsys.readouterr().err
    assert run("embed", fa, "-m", ckpt, "-o", tmp_path / "one", "--shard", "2/2") == 2


def test_split_parts_is_a_balanced_partition():
    lengths = [50, 3, 3, 40, 10, 10, 1, 7]
    shares = split_parts(lengths, 3)
    flat = sorted(i for s in shares for i in s)
    assert flat == list(range(8))
    loads = [sum(lengths[i] + 2 for i in s) for s in shares]
    assert max(loads) - min(loads) <= max(lengths) + 2
    assert split_parts(lengths, 3) == shares
    assert split_parts([5], 3) == [[0], [], []]
