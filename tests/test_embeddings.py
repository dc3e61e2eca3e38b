"""The embedding store and its job files (`esmkernels.jobs.files`): atomic files, shard plans, the reader's errors and multi-shard
matrices (the end-to-end behaviour is in tests/test_cli_embed.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from esmkernels.jobs.embeddings import EmbeddingWriter, open_embeddings
from esmkernels.jobs.files import atomic_write, parse_shard, plan_shards

SETTINGS = {"layers": [3], "include": ["mean", "per_tok"], "model": "m"}


def entry(rid, order, n, status="done", reason=None):
    e = {"id": rid, "order": order, "length": n, "sha256": "0", "status": status}
    if status == "done":
        e["stored_length"] = n
    else:
        e["reason"] = reason
    return e


def write_store(directory, shards):
    """shards: list of [(id, order, per-token [n, 4] tensor or reason str)]."""
    writer = EmbeddingWriter(directory, SETTINGS, 0, 1)
    for s, recs in enumerate(shards):
        entries, means, toks = [], [], []
        offset = 0
        for rid, order, value in sorted(recs, key=lambda r: r[1]):
            if isinstance(value, str):
                entries.append(entry(rid, order, 3, "failed", value))
                continue
            e = entry(rid, order, len(value))
            e.update(row=len(means), token_offset=offset)
            offset += len(value)
            entries.append(e)
            means.append(value.mean(0))
            toks.append(value)
        tensors = {"mean.3": torch.stack(means), "per_tok.3": torch.cat(toks)} if means else {}
        writer.write_shard(s, entries, tensors)
    return writer


def test_store_across_shards_reads_in_input_order(tmp_path):
    g = torch.Generator().manual_seed(0)
    t = {k: torch.randn(n, 4, generator=g) for k, n in (("a", 2), ("b", 5), ("c", 3), ("d", 1))}
    write_store(
        tmp_path,
        [
            [("b", 1, t["b"]), ("d", 3, t["d"])],
            [("a", 0, t["a"]), ("x", 2, "boom")],
            [("c", 4, t["c"])],
        ],
    )
    store = open_embeddings(tmp_path)
    assert store.ids == ["a", "b", "d", "c"] and store.failed == {"x": "boom"}
    matrix, ids = store.matrix(3, "mean")
    assert ids == store.ids and not isinstance(matrix, np.memmap)  # three shards: copied
    np.testing.assert_allclose(matrix, torch.stack([t[k].mean(0) for k in ids]).numpy(), rtol=1e-6)
    for k in ids:
        torch.testing.assert_close(store[k]["representations"][3], t[k], rtol=0, atol=0)
    assert "bos_representations" not in store["a"]
    with pytest.raises(KeyError, match="it failed: boom"):
        store["x"]
    with pytest.raises(KeyError):
        store["nope"]
    with pytest.raises(ValueError, match="not stored"):
        store.matrix(2)
    with pytest.raises(ValueError, match="not 'bos'"):
        store.matrix(3, "bos")
    with pytest.raises(ValueError, match="fixed width"):
        store.matrix(3, "per_tok")


def test_reader_and_writer_refuse_mixed_or_missing_indexes(tmp_path):
    with pytest.raises(ValueError, match="holds no embedding index"):
        open_embeddings(tmp_path)
    write_store(tmp_path / "s", [[("a", 0, torch.ones(2, 4))]])
    with pytest.raises(ValueError, match=r"other settings \(model: 'm' -> 'n'\)"):
        EmbeddingWriter(tmp_path / "s", {**SETTINGS, "model": "n"}, 0, 1)
    other = json.loads((tmp_path / "s" / "index-0of1.json").read_text())
    other["settings"]["model"] = "n"
    (tmp_path / "s" / "index-1of1.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="other settings"):
        open_embeddings(tmp_path / "s")
    (tmp_path / "s" / "index-1of1.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable index"):
        open_embeddings(tmp_path / "s")


def test_atomic_write_leaves_old_or_new(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write(target, b"old")
    import os

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temporary file left
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode


def test_plan_and_shard_parsing():
    lengths = {0: 5, 1: 50, 2: 7, 3: 50, 4: 1}
    assert plan_shards(lengths, 2, 10**9, lambda n: n) == [[1, 3], [0, 2], [4]]
    assert plan_shards(lengths, 10, 60, lambda n: n) == [[1], [2, 3], [0, 4]]  # 50+7, 5+1
    assert parse_shard("3/16") == (3, 16)
    for bad in ("16/16", "1", "-1/2", "a/b", "0/0"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)
