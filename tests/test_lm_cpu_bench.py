"""The lm suite's CPU inference table (`esmkernels.benchmarks.lm_cpu`) at its tiny size: every
provider timed side by side, ratios and residues / s that are the recorded times', int8 quality
beside the int8 row, transformers' absence reported; wired into `esmkernels bench --suite lm`.
And the torch-threads policy of the commands (`esmkernels.jobs.threads`)."""

from __future__ import annotations

import json

import pytest
import torch

from esmkernels.benchmarks import lm_cpu, peers, runner
from esmkernels.cli import main
from esmkernels.jobs import threads

needs_hf = pytest.mark.skipif(not peers.has("transformers"), reason="transformers not installed")


def _rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| tiny")]  # fmt: skip


@needs_hf
def test_table_columns_are_the_recorded_times():
    table = lm_cpu.run_table("tiny", repeats=1)
    assert table["meta"]["transformers_missing"] is None
    assert table["meta"]["threads"] == torch.get_num_threads()
    assert len(table["rows"]) == len(lm_cpu.CASES["tiny"]) == 2
    for r in table["rows"]:
        assert r["status"] == "ok", r
        s = r["seconds"]
        assert set(s) == set(lm_cpu.PROVIDERS) and min(s.values()) > 0
        lengths = lm_cpu.Case(r["shape"], r["case"], r["L"], r["batch"]).lengths()
        assert r["residues"] == sum(lengths)
        for p in lm_cpu.PROVIDERS:
            assert r["ratio_to_hf_fp32"][p] == pytest.approx(s[p] / s["hf_fp32"])
            assert r["residues_per_s"][p] == pytest.approx(r["residues"] / s[p])
        assert r["ratio_to_hf_bf16"]["ours_bf16"] == pytest.approx(s["ours_bf16"] / s["hf_bf16"])
        q = r["int8_quality"]
        assert 0.99 < q["cos_min"] < 1.0  # int8 ran (not fp32 again) and stays close
        assert 0.9 <= q["argmax_agree"] <= 1.0
    rows = _rows(lm_cpu.markdown(table))
    assert [row[4] for row in rows[:5]] == [lm_cpu.LABELS[p] for p in lm_cpu.PROVIDERS]
    first = table["rows"][0]
    for row, p in zip(rows[:5], lm_cpu.PROVIDERS):
        assert float(row[6]) == pytest.approx(first["ratio_to_hf_fp32"][p], abs=0.006)
        assert (row[9] != "") == (p == "ours_int8")  # quality beside the int8 row only
    assert rows[4][9] == f"{first['int8_quality']['cos_min']:.4f}, " + (
        f"{first['int8_quality']['argmax_agree']:.3f}"
    )


def test_table_without_transformers_has_our_rows_and_says_so(monkeypatch):
    monkeypatch.setattr(peers, "has", lambda module: False)
    table = lm_cpu.run_table("tiny", repeats=1, cases=["skewed"])
    assert "transformers is not installed" in table["meta"]["transformers_missing"]
    (row,) = table["rows"]
    assert set(row["seconds"]) == {"ours_fp32", "ours_bf16", "ours_int8"}
    assert row["ratio_to_hf_fp32"]["ours_fp32"] is None
    text = lm_cpu.markdown(table)
    assert "transformers rows missing: transformers is not installed" in text
    assert [r[4] for r in _rows(text)] == ["ours fp32", "ours bf16", "ours int8"]


def test_selection_and_arguments():
    assert [c.length for c in lm_cpu.select("tiny", lengths=[16])] == [16]
    assert max(c.length for c in lm_cpu.CASES["cpu"]) == 1024
    assert {c.shape for c in lm_cpu.CASES["cpu"]} == {"esm2_35M", "esm2_150M"}
    with pytest.raises(ValueError, match="'huge'"):
        lm_cpu.select("huge")
    with pytest.raises(ValueError, match="repeats=0"):
        lm_cpu.run_table("tiny", repeats=0)


def test_a_broken_case_is_reported_not_raised(monkeypatch, tmp_path):
    def broken(models, case, repeats):
        raise RuntimeError("boom")

    monkeypatch.setattr(lm_cpu, "time_case", broken)
    run = runner.run_benchmarks(["lm"], out=tmp_path, device="cpu", providers=["torch"],
                                size="tiny", plot=False, lengths=[16], max_time=0.01)  # fmt: skip
    (row,) = run.cpu_table["rows"]
    assert row["status"] == "error: RuntimeError: boom"
    assert [f["status"] for f in run.failed] == ["error: RuntimeError: boom"]


def test_bench_lm_on_cpu_prints_and_writes_the_table(capsys, tmp_path):
    args = ["bench", "--suite", "lm", "--size", "tiny", "--lengths", "16", "--max-time", "0.01",
            "--compare", "torch,hf", "--threads", "1", "--no-plot", "--out", str(tmp_path)]  # fmt: skip
    code = main(args)
    out = capsys.readouterr().out
    assert code == 0, out
    payload = json.loads((tmp_path / "bench.json").read_text())
    assert {r["provider"] for r in payload["records"]} == {"torch", "hf"}  # the suite as before
    (row,) = payload["lm_cpu"]["rows"]
    assert row["L"] == 16 and row["status"] == "ok"
    assert "ours int8" in out and "| / transformers fp32 |" in out
    assert (tmp_path / lm_cpu.MARKDOWN_NAME).read_text().strip() in out
    if not peers.has("transformers"):
        assert "lm CPU table: transformers is not installed" in out


def test_physical_cores_capped_by_the_cpu_quota(monkeypatch):
    assert 1 <= threads.physical_cores() <= len(threads._allowed_cpus())
    monkeypatch.setattr(threads, "_quota", lambda: 1)
    assert threads.physical_cores() == 1


def test_threads_policy(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert threads.set_threads(2) == 2 == torch.get_num_threads()
        monkeypatch.setattr(threads, "physical_cores", lambda: 1)
        assert threads.set_threads(None) == 1 == torch.get_num_threads()  # capped
        monkeypatch.setattr(threads, "physical_cores", lambda: 8)
        assert threads.set_threads(None) == 1  # never raised above what was set
        with pytest.raises(ValueError, match="threads=0"):
            threads.set_threads(0)
    finally:
        torch.set_num_threads(before)
