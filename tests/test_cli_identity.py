"""A model is identified by what it is (issue 18): the same checkpoint spelled any way (relative,
trailing slash, absolute, from another working directory) resumes a job; other weights at the
same path are refused, naming the file that changed; the fingerprint sees content that size and
modification time do not. Which `--model` text goes to the Hub: only a plain org/name."""

from __future__ import annotations

import os
import shutil

import pytest

from esmkernels.jobs import identity
from esmkernels.jobs.embed import EmbedJob
from esmkernels.jobs.identity import fingerprint_file, is_hub_id, model_identity, same_model
from esmkernels.models.esmfold import EsmForProteinFolding
from tests._cli import fasta, files, fold_checkpoint, lm_checkpoint, run
from tests.test_cli_embed import RECORDS, probe


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ident")
    return lm_checkpoint(root, seed=0), lm_checkpoint(root, seed=1), fold_checkpoint(root)


def test_same_model_any_spelling_resumes_and_other_weights_are_refused(
    ckpts, tmp_path, monkeypatch, capsys
):
    lm, other, _ = ckpts
    model = tmp_path / "models" / "med_esm2"
    shutil.copytree(lm, model)
    fa = fasta(tmp_path / "in.fasta", RECORDS)
    out = tmp_path / "emb"
    assert run("embed", fa, "-m", model, "-o", out, "-q") == 0
    written = files(out)
    seen = []
    real = EmbedJob._forward
    monkeypatch.setattr(
        EmbedJob,
        "_forward",
        lambda self, b: seen.extend(b if not probe(b) else []) or real(self, b),
    )
    monkeypatch.chdir(tmp_path / "models")
    for spelling in ("med_esm2", "./med_esm2/", str(model), os.path.relpath(model)):
        assert run("embed", fa, "-m", spelling, "-o", out, "-q") == 0, spelling
    monkeypatch.chdir(tmp_path)  # another working directory, another relative spelling
    assert run("embed", fa, "-m", "models/med_esm2", "-o", out, "-q") == 0
    assert seen == [] and files(out) == written  # resumed: nothing recomputed or rewritten
    capsys.readouterr()

    shutil.copy(other / "model.safetensors", model / "model.safetensors")  # new weights, same path
    assert run("embed", fa, "-m", model, "-o", out, "-q") == 2
    err = capsys.readouterr().err
    assert "other weights at" in err and "model.safetensors changed" in err
    assert "config.json" not in err.split("other weights")[1]  # only what differs is named
    assert seen == [] and files(out) == written


def test_fold_resumes_from_another_spelling(ckpts, tmp_path, monkeypatch):
    _, _, fold = ckpts
    fa = fasta(tmp_path / "in.fasta", [("a", "MKTAYIAK")])
    argv = ["-o", tmp_path / "o", "--num-recycles", "0", "-q"]
    assert run("fold", fa, "-m", fold, *argv) == 0
    calls = []
    real = EsmForProteinFolding.infer_records
    monkeypatch.setattr(
        EsmForProteinFolding,
        "infer_records",
        lambda self, s, **kw: calls.append(s) or real(self, s, **kw),
    )
    monkeypatch.chdir(fold.parent)
    assert run("fold", fa, "-m", f"./{fold.name}/", *argv) == 0 and calls == []


def test_fingerprint_sees_content_that_size_and_mtime_do_not(tmp_path, monkeypatch):
    monkeypatch.setattr(identity, "SMALL_FILE", 1 << 16)  # sample files above 64 KiB
    size = 40 << 20
    path = tmp_path / "model.safetensors"
    data = bytearray(os.urandom(size))
    path.write_bytes(data)
    first = fingerprint_file(path)
    stat = path.stat()
    # A sampled block in the middle: block k starts at HEAD + k * span // (BLOCKS - 1).
    span = size - identity.HEAD - identity.TAIL - identity.BLOCK
    middle = identity.HEAD + (identity.BLOCKS // 2) * span // (identity.BLOCKS - 1) + 100
    for where in (100, middle, size - 10):  # the header, a middle block, the tail
        changed = bytearray(data)
        changed[where] ^= 0xFF
        path.write_bytes(changed)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime
        assert fingerprint_file(path) != first, where
    path.write_bytes(os.urandom(size))  # retrained: every byte differs
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fingerprint_file(path) != first
    path.write_bytes(data)
    assert fingerprint_file(path) == first
    # The documented blind spot: one byte between two sampled blocks.
    changed = bytearray(data)
    changed[middle + identity.BLOCK + 1000] ^= 0xFF
    path.write_bytes(changed)
    assert fingerprint_file(path) == first
    small = tmp_path / "config.json"
    small.write_text('{"a": 1}')
    one = fingerprint_file(small)
    small.write_text('{"a": 2}')
    assert fingerprint_file(small) != one


def test_identity_of_directories_files_and_spellings(ckpts, tmp_path, monkeypatch):
    lm, other, _ = ckpts
    a = model_identity(lm)
    assert sorted(a.files) == [
        "config.json",
        "model.safetensors",
        "tokenizer_config.json",
        "vocab.txt",
    ]
    assert a.source == os.path.realpath(lm)
    (lm / "README.md").write_text("notes")  # not part of the model
    monkeypatch.chdir(lm.parent)
    b = model_identity(f"./{lm.name}/")
    assert b.files == a.files and same_model(a.settings(), b.settings())
    assert not same_model(a.settings(), model_identity(other).settings())
    link = tmp_path / "elsewhere"
    link.symlink_to(lm)
    assert same_model(model_identity(link).settings(), a.settings())  # moved or linked: same


def test_only_a_plain_org_name_goes_to_the_hub(ckpts, tmp_path, capsys, monkeypatch):
    assert is_hub_id("facebook/esm2_t6_8M_UR50D") and is_hub_id("org/model-v1.5")
    for text in ("fair/nope.pt", "a/b.safetensors", "../x/y", "nope", "./a/b", "a/b/c"):
        assert not is_hub_id(text), text
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert run("convert", "fair/nope.pt", out) == 2
    err = capsys.readouterr().err
    assert err == "esmkernels convert: error: fair/nope.pt: no such file or directory\n"
    assert not out.exists()
    fa = fasta(tmp_path / "in.fasta", [("a", "MKTAY")])
    for argv in (
        ["embed", fa, "-m", "fair/nope.pt", "-o", out],
        ["fold", fa, "-m", "fair/nope.pt", "-o", out],
        [
            "score",
            "-m",
            ckpts[0],
            "-m",
            "fair/nope.pt",
            "--sequence",
            "MKTAY",
            "--mutations",
            "K2A",
        ],
    ):
        assert run(*argv) == 2
        err = capsys.readouterr().err
        assert err.endswith("error: --model fair/nope.pt: no such file or directory\n"), err
        assert not out.exists()
