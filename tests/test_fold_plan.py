"""`esmkernels fold --plan` and `esmkernels.jobs.plan`: per-record plans from the FASTA and the
configuration only (no weights opened), verdicts equal to `auto_chunk_size`'s, closed-form
parameter bytes equal to a built model's, and the FLOPs formula."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from esmkernels.models import fold_cost as fc
from esmkernels.models import fold_memory as fm
from esmkernels.models.fold_memory import esmfold_v1_config
from esmkernels.reference.esmfold.modeling import EsmForProteinFolding
from tests._cli import fasta, fold_checkpoint, run
from tests.test_esmfold_model import tiny_model
from tests.test_fold_memory import fold_config

LENGTHS = (50, 300, 1000, 2000, 4096, 8000, 10000, 16384, 20000)


@pytest.fixture
def opened(monkeypatch):
    """Paths Python opens while the test runs (an audit hook; removed hooks cannot be, so it
    only records while `active`)."""
    seen: list[str] = []
    state = {"active": True}

    def hook(event, args):
        if event == "open" and state["active"] and args and isinstance(args[0], str):
            seen.append(args[0])

    sys.addaudithook(hook)
    yield seen
    state["active"] = False


@pytest.mark.parametrize(
    "config", [esmfold_v1_config(), fold_config(128, 64), fold_config(1024, 128, 2)]
)
def test_parameter_count_equals_a_built_model(config):
    with torch.device("meta"):
        model = EsmForProteinFolding(config)
    floats = sum(p.numel() for p in model.parameters())
    floats += sum(b.numel() for b in model.buffers() if b.is_floating_point())
    ints = sum(b.numel() for b in model.buffers() if not b.is_floating_point())
    assert fc.parameter_count(config) == (floats, ints)


def test_flops_formula():
    cfg = esmfold_v1_config()
    one = fc.predict_fold_flops(cfg, 1000, num_recycles=0, outputs="lean")
    # Passes multiply the trunk and structure module; lean skips the distogram's 4 L^2 c_z 64.
    four = fc.predict_fold_flops(cfg, 1000, num_recycles=3, outputs="lean")
    assert fc.predict_fold_flops(cfg, 1000) == four + 4 * 1000**2 * 128 * 64
    assert fc.predict_fold_flops(cfg, 1000, batch=3, num_recycles=0, outputs="lean") == 3 * one
    # Beyond a few thousand residues the 12 L^3 c_z per block of the triangle ops dominate.
    big = fc.predict_fold_flops(cfg, 20000, num_recycles=0)
    assert 1.0 < big / (48 * 12 * 20000**3 * 128) < 1.1
    with pytest.raises(ValueError, match="num_recycles=-1"):
        fc.predict_fold_flops(cfg, 10, num_recycles=-1)


@pytest.mark.parametrize("offload", ["auto", False])
def test_plan_matches_auto_chunk_size(offload):
    """Fits iff the model's automatic plan (auto_chunk_size, then offload on a GPU) accepts the
    record with the memory left after the weights, and then at the chunk and offload it picks;
    with offload off, exactly auto_chunk_size's verdicts."""
    from esmkernels.jobs.plan import plan_fold

    cfg = esmfold_v1_config()
    records = [(f"r{n}", "A" * n) for n in LENGTHS]
    kw = dict(dtype=torch.bfloat16, backend="triton", outputs="lean")
    offloaded = 0
    for memory in (24e9, 48e9, 80 * 2**30, 141e9):
        plans = plan_fold(cfg, records, dtype="bfloat16", memory_bytes=int(memory), offload=offload)
        free = int(memory) - fm.model_weight_bytes(cfg, torch.bfloat16)
        for plan in plans:
            try:
                if offload is False:
                    want = fm.auto_chunk_size(cfg, plan.length, free_bytes=free, **kw), False
                else:
                    want = fm.auto_fold_plan(
                        cfg, plan.length, free_bytes=free, host_free_bytes=2**62, **kw
                    )
            except MemoryError:
                assert not plan.fits, plan
            else:
                assert plan.fits and (plan.chunk_size, plan.offload) == want, plan
                assert plan.peak_bytes == fm.predict_fold_peak_bytes(
                    cfg, plan.length, chunk_size=want[0], offload=want[1], **kw
                )
                assert plan.host_bytes == (
                    fm.predict_host_bytes(cfg, plan.length, dtype=torch.bfloat16)
                    if plan.offload else 0
                )  # fmt: skip
                offloaded += plan.offload
        assert [p.fits for p in plans] == sorted((p.fits for p in plans), reverse=True)
    assert (offloaded > 0) == (offload == "auto")
    assert plans[0].peak_bytes_with_weights - plans[0].peak_bytes == fm.model_weight_bytes(
        cfg, torch.bfloat16
    )


def test_multimer_length_counts_the_linker():
    from esmkernels.jobs.plan import plan_fold

    (plan,) = plan_fold(fold_config(128, 64), [("ab", "ACD:EF")], memory_bytes=10**12)
    assert plan.length == 5 + 25


def test_cli_plan_json_reads_no_weights(tmp_path, capsys, opened):
    model = fold_checkpoint(tmp_path)
    weights = [p for p in model.iterdir() if p.suffix in (".safetensors", ".bin", ".pt")]
    assert weights
    records = [(f"p{n}", "M" * n) for n in (50, 700, 20000)]
    path = fasta(tmp_path / "in.fasta", records)
    code = run("fold", path, "--model", model, "--plan", "--json", "--memory", "80GiB",
               "--dtype", "bfloat16")  # fmt: skip
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert [r["id"] for r in rows] == ["p50", "p700", "p20000"]
    for row in rows:
        for key in ("id", "length", "chunk_size", "peak_bytes", "peak_bytes_with_weights",
                    "fits", "flops"):  # fmt: skip
            assert key in row
        assert row["fits"] and row["flops"] > 0
    assert not [p for p in opened if any(str(w) in p for w in weights)]
    assert any("config.json" in p for p in opened)


def test_cli_plan_exit_1_when_something_does_not_fit(tmp_path, capsys):
    model = fold_checkpoint(tmp_path)
    path = fasta(tmp_path / "in.fasta", [("small", "M" * 50), ("huge", "M" * 20000)])
    code = run("fold", path, "--model", model, "--plan", "--memory", "1GiB")
    out = capsys.readouterr().out
    assert code == 1
    assert "huge" in out and "NO" in out and "small" in out


def test_cli_plan_for_esmfold_v1_without_files(tmp_path, capsys):
    """The published architecture plans without any model on disk: a FASTA of 50..20,000."""
    path = fasta(tmp_path / "in.fasta", [(f"r{n}", "A" * n) for n in LENGTHS])
    code = run("fold", path, "--model", "facebook/esmfold_v1", "--plan", "--json",
               "--memory", "141GB", "--dtype", "bfloat16")  # fmt: skip
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["length"] for r in rows] == list(LENGTHS)
    assert code == (0 if all(r["fits"] for r in rows) else 1)


@pytest.mark.parametrize("bad", ["80", "lots", "-3GB", "80XB"])
def test_bad_memory_is_named(bad):
    from esmkernels.jobs.plan import parse_memory

    if bad == "80":
        assert parse_memory(bad) == 80
        return
    with pytest.raises(ValueError, match=repr(bad)):
        parse_memory(bad)


def test_tiny_model_plans(tmp_path):
    from esmkernels.jobs.plan import load_config

    got = load_config(fold_checkpoint(tmp_path))
    assert fc.parameter_count(got) == fc.parameter_count(tiny_model().config)
    with pytest.raises(ValueError, match="config.json"):
        load_config(tmp_path / "nowhere")


def test_out_is_required_without_plan(tmp_path, capsys):
    model = fold_checkpoint(tmp_path)
    path = fasta(tmp_path / "in.fasta", [("a", "MKV")])
    assert run("fold", path, "--model", model) == 2
    assert "--out is required" in capsys.readouterr().err
