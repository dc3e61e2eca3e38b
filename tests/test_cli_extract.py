"""`esmkernels extract`: fair-esm `esm-extract`'s files (keys, layer numbering, truncation,
contacts, labels, file names) from the same peer-made checkpoint; resumable byte-identically;
bad input stops before anything is written."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from esmkernels.cli.extract import model_location
from esmkernels.jobs.embed import EmbedJob
from esmkernels.jobs.extract import MANIFEST, output_path
from tests._cli import fasta, fold_checkpoint, lm_checkpoint, run
from tests.test_checkpoint_fairesm import _esm2_file, _fair_models, _raw_from_module
from tests.tolerances import MODEL_FP32

# Headers with spaces and a '/', lengths that pad each other, one over the truncation (12).
RECORDS = [
    ("sp|P69905|HBA_HUMAN Hemoglobin subunit alpha", "MVLSPADKTNVKAAWGKVGAHAG"),
    ("a/b second record", "MKTAYIAKQR"),
    ("c", "GG"),
    ("d", "MKVLAAGIVG"),
    ("e", "MQIFVKTL"),
]
TRUNCATION = 12


def tree(directory: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under `directory`, manifest included."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def spy_batches(monkeypatch) -> list[list[int]]:
    """The records of every batch the job computes (the preflight's made-up probe left out)."""
    seen: list[list[int]] = []
    real = EmbedJob._forward

    def forward(self, batch):
        if batch[0][0] >= 0:
            seen.append(sorted(s[0] for s in batch))
        return real(self, batch)

    monkeypatch.setattr(EmbedJob, "_forward", forward)
    return seen


@pytest.fixture(scope="module")
def fair_checkpoint(tmp_path_factory):
    """A tiny ESM-2 fair-esm `.pt` (+ contact regression) written from fair-esm's own ESM2."""
    esm2, _, _ = _fair_models()
    root = tmp_path_factory.mktemp("fair")
    path = _esm2_file(root / "esm2_t2_tiny.pt", _raw_from_module(esm2))
    head = {k: v for k, v in esm2.state_dict().items() if k.startswith("contact_head")}
    torch.save({"model": head}, root / "esm2_t2_tiny-contact-regression.pt")
    return path


def fair_esm_extract(model_path, fasta_path, out, repr_layers, include, toks, truncation):
    """fair-esm's extraction of `fasta_path` into `out`: its script when the installed
    release ships it (`esm.scripts.extract`), else the same steps through fair-esm's own
    functions (FASTA dataset, length batches, truncating batch converter, the model's
    representations and contacts, and esm-extract's slicing and file naming)."""
    import esm

    argv = [str(model_path), str(fasta_path), str(out), "--toks_per_batch", str(toks)]
    argv += ["--repr_layers", *map(str, repr_layers), "--include", *include]
    argv += ["--truncation_seq_length", str(truncation), "--nogpu"]
    with torch.serialization.safe_globals([argparse.Namespace]):  # fair-esm's torch.load
        try:
            from esm.scripts import extract as script
        except ImportError:
            script = None
        if script is not None:
            script.run(script.create_parser().parse_args(argv))
            return
        model, alphabet = esm.pretrained.load_model_and_alphabet_local(str(model_path))
    model.eval()
    data = esm.FastaBatchedDataset.from_file(fasta_path)
    convert = alphabet.get_batch_converter(truncation)
    n = model.num_layers
    layers = [(i + n + 1) % (n + 1) for i in repr_layers]
    for batch in data.get_batch_indices(toks, extra_toks_per_seq=1):
        labels, strs, tokens = convert(
            [(data.sequence_labels[i], data.sequence_strs[i]) for i in batch]
        )
        with torch.no_grad():
            result = model(tokens, repr_layers=layers, return_contacts="contacts" in include)
        for b, label in enumerate(labels):
            k = min(truncation, len(strs[b]))
            reps = result["representations"]
            record = {"label": label}
            if "per_tok" in include:
                record["representations"] = {i: t[b, 1 : k + 1].clone() for i, t in reps.items()}
            if "mean" in include:
                record["mean_representations"] = {
                    i: t[b, 1 : k + 1].mean(0).clone() for i, t in reps.items()
                }
            if "bos" in include:
                record["bos_representations"] = {i: t[b, 0].clone() for i, t in reps.items()}
            if "contacts" in include:
                record["contacts"] = result["contacts"][b, :k, :k].clone()
            path = Path(out) / f"{label}.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(record, path)


@pytest.mark.peer
def test_output_equals_fair_esm_extraction(fair_checkpoint, tmp_path):
    fa = fasta(tmp_path / "in.fasta", RECORDS)
    layers = ["0", "-1", "1"]
    include = ["mean", "per_tok", "bos", "contacts"]
    fair_esm_extract(fair_checkpoint, fa, tmp_path / "fair", [0, -1, 1], include, 40, TRUNCATION)
    argv = ["extract", fair_checkpoint, fa, tmp_path / "ours", "--repr_layers", *layers]
    argv += ["--include", *include, "--toks_per_batch", "40"]
    assert run(*argv, "--truncation_seq_length", str(TRUNCATION), "--nogpu", "-q") == 0

    fair_files = sorted(p.relative_to(tmp_path / "fair") for p in (tmp_path / "fair").rglob("*.pt"))
    ours_files = sorted(p.relative_to(tmp_path / "ours") for p in (tmp_path / "ours").rglob("*.pt"))
    assert fair_files == ours_files == sorted(Path(f"{h}.pt") for h, _ in RECORDS)
    for header, seq in RECORDS:
        expected = load(tmp_path / "fair" / f"{header}.pt")
        got = load(tmp_path / "ours" / f"{header}.pt")
        assert list(got) == list(expected)  # same keys, in fair-esm's order
        assert got["label"] == expected["label"] == header
        n = min(len(seq), TRUNCATION)
        for key in ("representations", "mean_representations", "bos_representations"):
            assert list(got[key]) == list(expected[key]) == [0, 1, 2]  # -1 is layer 2
            for layer, value in expected[key].items():
                assert got[key][layer].dtype == value.dtype == torch.float32
                torch.testing.assert_close(got[key][layer], value, **MODEL_FP32)
        assert got["representations"][2].shape == (n, 16)
        assert got["contacts"].shape == expected["contacts"].shape == (n, n)
        torch.testing.assert_close(got["contacts"], expected["contacts"], **MODEL_FP32)
        # each tensor owns its storage, as fair-esm's clones do (no whole batch in the file)
        assert got["contacts"].untyped_storage().nbytes() == 4 * n * n
        assert got["representations"][1].untyped_storage().nbytes() == 4 * n * 16
        assert got["mean_representations"][0].untyped_storage().nbytes() == 4 * 16


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return lm_checkpoint(tmp_path_factory.mktemp("extract"))


def test_resume_recomputes_only_missing_records_byte_identically(ckpt, tmp_path, monkeypatch):
    fa = fasta(tmp_path / "in.fasta", RECORDS)
    argv = ["--include", "mean", "per_tok", "bos", "contacts", "--toks_per_batch", "30", "-q"]
    assert run("extract", ckpt, fa, tmp_path / "whole", *argv) == 0
    whole = tree(tmp_path / "whole")
    assert MANIFEST in whole and len(whole) == 6

    assert run("extract", ckpt, fa, tmp_path / "part", *argv) == 0
    part = tmp_path / "part"
    (part / "c.pt").unlink()  # a record never written
    (part / "e.pt").write_bytes((part / "e.pt").read_bytes()[:100])  # a foreign, cut-off file
    kept = part / "d.pt"
    stamp = kept.stat().st_mtime_ns, kept.stat().st_ino

    seen = spy_batches(monkeypatch)
    assert run("extract", ckpt, fa, part, *argv) == 0
    # batches of 30 padded tokens: [0], [1, 3], [4, 2]; only the last holds c and e
    assert seen == [[2, 4]]
    assert (kept.stat().st_mtime_ns, kept.stat().st_ino) == stamp
    assert tree(part) == whole

    seen.clear()
    assert run("extract", ckpt, fa, part, *argv) == 0
    assert seen == []


def test_batches_count_truncated_tokens(ckpt, tmp_path, monkeypatch):
    """--toks_per_batch bounds padded tokens as the model sees them: a 23-residue record
    truncated to 12 is 14 tokens, so it shares a batch of 40 with a 12-residue one."""
    fa = fasta(tmp_path / "in.fasta", RECORDS)
    seen = spy_batches(monkeypatch)
    argv = ["--include", "mean", "--toks_per_batch", "40", "--truncation_seq_length", "12"]
    assert run("extract", ckpt, fa, tmp_path / "o", *argv, "-q") == 0
    assert seen == [[0, 1], [2, 3, 4]]


def test_rerun_with_other_settings_or_sequences_is_refused(ckpt, tmp_path, capsys):
    fa = fasta(tmp_path / "in.fasta", RECORDS)
    out = tmp_path / "o"
    assert run("extract", ckpt, fa, out, "--include", "mean", "-q") == 0
    before = tree(out)
    assert run("extract", ckpt, fa, out, "--include", "mean", "--repr_layers", "0", "-q") == 2
    assert "other settings (layers: [2] -> [0])" in capsys.readouterr().err
    changed = fasta(tmp_path / "changed.fasta", [("c", "GGG")])
    assert run("extract", ckpt, changed, out, "--include", "mean", "-q") == 2
    assert "holds record 'c' of another sequence" in capsys.readouterr().err
    assert tree(out) == before
    # a record added to the input is extracted; the others are left alone
    more = fasta(tmp_path / "more.fasta", [*RECORDS, ("f", "MKKK")])
    assert run("extract", ckpt, more, out, "--include", "mean", "-q") == 0
    after = tree(out)
    assert set(after) - set(before) == {"f.pt"}
    assert all(after[k] == v for k, v in before.items() if k != MANIFEST)


def test_model_is_identified_by_its_files_not_its_spelling(tmp_path, monkeypatch, capsys):
    import shutil

    model = tmp_path / "models" / "esm2_small"
    shutil.copytree(lm_checkpoint(tmp_path, seed=0), model)
    fa = fasta(tmp_path / "in.fasta", RECORDS)
    out = tmp_path / "o"
    assert run("extract", model, fa, out, "--include", "mean", "-q") == 0
    seen = spy_batches(monkeypatch)
    monkeypatch.chdir(tmp_path / "models")
    assert run("extract", "./esm2_small/", fa, out, "--include", "mean", "-q") == 0
    assert seen == []  # same model, other spelling: resumed, nothing recomputed
    other = lm_checkpoint(tmp_path, seed=1)
    shutil.copy(other / "model.safetensors", model / "model.safetensors")
    assert run("extract", "esm2_small", fa, out, "--include", "mean", "-q") == 2
    assert "other weights" in capsys.readouterr().err and seen == []


def test_failed_record_gets_no_file_and_a_rerun_heals(ckpt, tmp_path, monkeypatch, capsys):
    fa = fasta(tmp_path / "in.fasta", RECORDS)
    real = EmbedJob._forward

    def fails_on_d(self, batch):
        if any(s[0] == 3 for s in batch):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real(self, batch)

    monkeypatch.setattr(EmbedJob, "_forward", fails_on_d)
    out = tmp_path / "o"
    assert run("extract", ckpt, fa, out, "--include", "mean", "-q") == 1
    assert "d: out of memory even alone (10 residues)" in capsys.readouterr().err
    assert not (out / "d.pt").exists() and (out / "e.pt").exists()
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["failed"] == {"d": "out of memory even alone (10 residues)"}
    monkeypatch.setattr(EmbedJob, "_forward", real)
    seen = spy_batches(monkeypatch)
    assert run("extract", ckpt, fa, out, "--include", "mean", "-q", "--no-retry-failed") == 1
    assert seen == [] and not (out / "d.pt").exists()
    assert "d: out of memory even alone (10 residues)" in capsys.readouterr().err
    assert run("extract", ckpt, fa, out, "--include", "mean", "-q") == 0
    assert "retrying 1 failed record(s)" in capsys.readouterr().err
    assert seen == [[0, 1, 2, 3, 4]]  # d's planned batch, its companions recomputed with it
    assert load(out / "d.pt")["label"] == "d"
    assert json.loads((out / MANIFEST).read_text())["failed"] == {}
    # the companions were computed apart from d after the failure; now as uninterrupted
    assert run("extract", ckpt, fa, tmp_path / "whole", "--include", "mean", "-q") == 0
    assert tree(out) == tree(tmp_path / "whole")


def test_a_new_sequence_under_a_failed_label_is_not_kept_failed(ckpt, tmp_path, monkeypatch):
    real = EmbedJob._forward

    def fails_on_d(self, batch):
        if any(s[3] == "MKVLAAGIVG" for s in batch):
            raise RuntimeError("boom")
        return real(self, batch)

    monkeypatch.setattr(EmbedJob, "_forward", fails_on_d)
    out = tmp_path / "o"
    assert run("extract", ckpt, fasta(tmp_path / "a.fasta", RECORDS), out, "--include", "bos") == 1
    changed = [(h, "MKV" if h == "d" else seq) for h, seq in RECORDS]
    fa = fasta(tmp_path / "b.fasta", changed)
    assert run("extract", ckpt, fa, out, "--include", "bos", "-q", "--no-retry-failed") == 0
    assert load(out / "d.pt")["bos_representations"][2].shape == (32,)


def test_skip_invalid_reports_the_record(ckpt, tmp_path, capsys):
    fa = fasta(tmp_path / "in.fasta", [("ok", "MKTAY"), ("bad", "MKT1Y")])
    assert run("extract", ckpt, fa, tmp_path / "x", "--include", "bos", "-q", "--skip-invalid") == 1
    assert "bad: invalid residue '1' at position 4" in capsys.readouterr().err
    assert {p.name for p in (tmp_path / "x").iterdir()} == {"ok.pt", MANIFEST}
    assert list(load(tmp_path / "x" / "ok.pt")) == ["label", "bos_representations"]


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing fasta", "no such file"),
        ("invalid residue", "record 'bad': invalid residue '1' at position 4"),
        ("label leaves the directory", "label '../c' has an empty, '.' or '..' path component"),
        ("absolute label", "label '/etc/x' is an absolute path"),
        ("layer out of range", "--repr_layers 3: this model has layers 0..2"),
        ("zero tokens per batch", "--toks_per_batch 0: must be >= 1"),
        ("no --include", ""),
        ("folding model", "is an ESMFold model"),
        ("missing model", "no-model-here: no such file or directory"),
        ("nogpu and cuda", "--nogpu and --device cuda contradict each other"),
        ("backend cannot run", "cannot run on cpu with backend triton"),
        ("outdir is a file", "exists and is not a directory"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(ckpt, tmp_path, capsys, monkeypatch, case, message):
    good = fasta(tmp_path / "in.fasta", RECORDS)
    out = tmp_path / "out"
    argv = [ckpt, good, out, "--include", "mean", "-q"]
    if case == "missing fasta":
        argv[1] = tmp_path / "nope.fasta"
    elif case == "invalid residue":
        argv[1] = fasta(tmp_path / "bad.fasta", [("ok", "MKT"), ("bad", "MKT1Y")])
    elif case == "label leaves the directory":
        argv[1] = fasta(tmp_path / "bad.fasta", [("../c", "MKT")])
    elif case == "absolute label":
        argv[1] = fasta(tmp_path / "bad.fasta", [("/etc/x", "MKT")])
    elif case == "layer out of range":
        argv += ["--repr_layers", "3"]
    elif case == "zero tokens per batch":
        argv += ["--toks_per_batch", "0"]
    elif case == "no --include":
        argv = argv[:3]
    elif case == "folding model":
        argv[0] = fold_checkpoint(tmp_path)
    elif case == "missing model":
        argv[0] = tmp_path / "no-model-here"
    elif case == "nogpu and cuda":
        argv += ["--nogpu", "--device", "cuda"]
    elif case == "backend cannot run":
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # no kernels on a CPU then
        argv += ["--backend", "triton"]
    elif case == "outdir is a file":
        out.write_text("not a directory")
    assert run("extract", *argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() or out.is_file()


def test_truncation_over_an_absolute_model_limit_is_refused(tmp_path, capsys):
    ckpt = lm_checkpoint(tmp_path, "esm1b", max_position_embeddings=12)  # 8 residues
    fa = fasta(tmp_path / "in.fasta", [("a", "MKTAYIAKQRQ")])
    out = tmp_path / "o"
    assert run("extract", ckpt, fa, out, "--include", "mean", "-q") == 2
    assert "--truncation_seq_length 1022: this model takes at most 8 residues" in (
        capsys.readouterr().err
    )
    assert not out.exists()
    argv = ["--include", "per_tok", "--truncation_seq_length", "8", "-q"]
    assert run("extract", ckpt, fa, out, *argv) == 0
    assert load(out / "a.pt")["representations"][2].shape == (8, 32)


def test_files_of_another_tool_are_not_overwritten(ckpt, tmp_path, capsys):
    fa = fasta(tmp_path / "in.fasta", RECORDS)
    out = tmp_path / "o"
    out.mkdir()
    (out / "c.pt").write_bytes(b"written by esm-extract")
    assert run("extract", ckpt, fa, out, "--include", "mean", "-q") == 2
    assert "holds 1 file(s) this job would write (e.g. c.pt) but no" in capsys.readouterr().err
    assert tree(out) == {"c.pt": b"written by esm-extract"}


def test_labels_and_model_names_as_esm_extract_takes_them(tmp_path, monkeypatch):
    assert str(output_path("sp|P1|X_HUMAN desc")) == "sp|P1|X_HUMAN desc.pt"
    assert str(output_path("a/b")) == "a/b.pt"
    for bad in ("../x", "a/../b", "./x", "a//b", "/x", "x\0", "y" * 256):
        with pytest.raises(ValueError, match="label"):
            output_path(bad)
    assert model_location("esm2_t33_650M_UR50D") == "facebook/esm2_t33_650M_UR50D"
    assert model_location("esm1v_t33_650M_UR90S_1") == "facebook/esm1v_t33_650M_UR90S_1"
    assert model_location("facebook/esm2_t6_8M_UR50D") == "facebook/esm2_t6_8M_UR50D"
    monkeypatch.chdir(tmp_path)
    Path("esm2_t6_8M_UR50D").mkdir()  # a local directory of that name wins
    assert model_location("esm2_t6_8M_UR50D") == "esm2_t6_8M_UR50D"
