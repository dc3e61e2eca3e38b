"""The GPU session (bench/gpu_session.sh): phase and budget logic with stub phases, targets,
tuned configs, bringing the output home, and (slow) the whole script end to end on CPU.

Stub phases are small Python programs that take the runner's `--records FILE --deadline T`
arguments, write records, sleep or fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench import targets
from bench.gpu_session import MAX_FILES, OUT_FILES, Phase, Session, tuned_configs

ROOT = Path(__file__).resolve().parent.parent

STUB = textwrap.dedent(
    """
    import json, os, subprocess, sys, time
    records = sys.argv[sys.argv.index("--records") + 1]
    out, action = sys.argv[1], sys.argv[2]
    def emit(record):
        with open(records, "a") as f:
            f.write(json.dumps(record) + "\\n")
    emit({"kind": "stub", "action": action, "pid": os.getpid()})
    if action == "sleep":  # leaves a child behind too: the whole group must go
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        emit({"kind": "child", "pid": child.pid})
        time.sleep(120)
    elif action == "fail":
        sys.exit(3)
    elif action == "watch":  # sees earlier phases, and its own record while it runs
        def seen():
            try:
                data = json.load(open(os.path.join(out, "results.json")))
            except (OSError, ValueError):
                return set()
            return {r.get("action") for p in data["phases"] for r in p["records"]}
        before = seen()
        for _ in range(200):
            if "watch" in seen():
                break
            time.sleep(0.05)
        emit({"kind": "seen", "before": sorted(a for a in before if a), "own": "watch" in seen()})
    """
)


def _stub(tmp_path, name, action, cap):
    script = tmp_path / "stub.py"
    script.write_text(STUB)
    return Phase(name, cap, [sys.executable, str(script), str(tmp_path / "out"), action], name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _records(result, kind):
    return [r for r in result.records if r.get("kind") == kind]


def test_cut_and_failed_phases_are_reported_and_later_phases_run(tmp_path):
    out = tmp_path / "out"
    phases = [
        _stub(tmp_path, "first", "ok", 30),
        _stub(tmp_path, "sleepy", "sleep", 1.5),
        _stub(tmp_path, "broken", "fail", 30),
        _stub(tmp_path, "last", "watch", None),
    ]
    session = Session(phases, out, tmp_path / "staging", 60, reserve=0.5, min_phase=0.5, poll=0.1)
    first, sleepy, broken, last = session.run()
    assert first.status == "ok"
    assert sleepy.status == "cut at cap (2 s)"
    assert broken.status == "failed (exit 3)"
    assert last.status == "ok"
    # The cut phase's records written before the cut are kept; it and its child are gone.
    assert _records(sleepy, "stub") and _records(sleepy, "child")
    assert not _alive(_records(sleepy, "stub")[0]["pid"])
    assert not _alive(_records(sleepy, "child")[0]["pid"])
    # The last phase saw the earlier phases' results in $OUT before it ended, and its own
    # record there while it was still running (the runner refreshes mid-phase).
    seen = _records(last, "seen")[0]
    assert seen["before"] == ["fail", "ok", "sleep"] and seen["own"]
    assert sorted(p.name for p in out.iterdir()) == sorted(OUT_FILES)
    assert len(OUT_FILES) <= MAX_FILES
    data = json.loads((out / "results.json").read_text())
    assert data["finished"] and [p["status"] for p in data["phases"]] == [
        "ok", "cut at cap (2 s)", "failed (exit 3)", "ok"
    ]  # fmt: skip
    summary = (out / "summary.md").read_text()
    assert "| sleepy | cut at cap (2 s) |" in summary and "| broken | failed (exit 3) |" in summary


def test_budget_cuts_the_open_phase_and_skips_the_rest(tmp_path):
    out = tmp_path / "out"
    phases = [_stub(tmp_path, "open", "sleep", None), _stub(tmp_path, "after", "ok", 30)]
    session = Session(phases, out, tmp_path / "staging", 3, reserve=0.5, min_phase=1, poll=0.1)
    opened, after = session.run()
    assert opened.status == "cut at budget (2 s)"
    assert after.status == "skipped: budget spent (3 s)" and not after.records
    assert "skipped: budget spent" in (out / "summary.md").read_text()


def test_a_phase_can_declare_itself_skipped(tmp_path):
    script = tmp_path / "declare.py"
    script.write_text(
        "import json, sys\n"
        "p = sys.argv[sys.argv.index('--records') + 1]\n"
        "open(p, 'a').write(json.dumps({'kind': 'phase_status', 'status': 'skipped: no CUDA'}) + '\\n')\n"
    )
    phase = Phase("gpu_only", 10, [sys.executable, str(script)])
    (result,) = Session([phase], tmp_path / "out", tmp_path / "st", 20, reserve=0.5).run()
    assert result.status == "skipped: no CUDA"


def _bench(case, provider, ms, suite="kernels", length=1024, device="cuda", **extra):
    return {"kind": "bench", "suite": suite, "case": case, "provider": provider, "mode": "fwd",
            "length": length, "device": device, "status": "ok", "ms": ms, "peak_mb": 10.0,
            **extra}  # fmt: skip


def test_targets_read_the_right_record_and_peer():
    records = [
        _bench("layer_norm", "triton", 0.10, tbps=3.0),
        _bench("layer_norm", "torch", 0.25, tbps=1.2),
        _bench("rotary_attention", "triton", 0.20, tflops=250.0),
        _bench("rotary_attention", "torch", 0.15, tflops=330.0),
        _bench("rotary_attention_varlen", "triton", 0.40),
        _bench("rotary_attention_varlen", "torch", 1.00),
        {**_bench("trimul_out", "triton", None), "status": "oom"},
        _bench("tri_att_start", "triton", 5.0),
        _bench("tri_att_start", "reference", 40.0),  # hf absent: the next peer
        _bench("uniform", "triton", 100.0, suite="lm", tokens_per_s=8e4),
        _bench("uniform", "hf", 150.0, suite="lm", tokens_per_s=5e4),
        _bench("skewed", "triton", 1.0, suite="lm", length=8, device="cpu"),
    ]
    rows = {t.name: targets.evaluate(t, records) for t in targets.TARGETS}
    ln = rows["LayerNorm D=1280 fwd >= 2.5 TB/s"]
    assert ln["verdict"] == "pass" and ln["ratio"] == pytest.approx(2.5)
    assert ln["measured"] == "3 TB/s" and ln["peer"] == "torch: 1.2 TB/s"
    assert rows["rotary attention fwd hd64 L=1024 >= 300 TFLOP/s"]["verdict"] == "short"
    slower = rows["rotary attention fwd hd64 L=1024 >= SDPA + separate rotary"]
    assert slower["verdict"] == "short" and slower["ratio"] == pytest.approx(0.75)
    assert rows["varlen skewed batch <= 1/2 padded SDPA"]["verdict"] == "pass"  # 2.5x
    assert rows["tri-mul (outgoing) L=1024 c_z=128 <= 6 ms"]["verdict"] == "not measured: oom"
    tri = rows["tri-attention (starting) L=1024 4x32 heads <= 6 ms"]
    assert tri["verdict"] == "pass" and tri["peer"].startswith("reference")
    assert rows["ESM-2 650M uniform B=8 L=1024 faster than transformers SDPA"]["verdict"] == "pass"
    cpu = rows["ESM-2 650M skewed 50-1022 faster than transformers SDPA"]["verdict"]
    assert cpu.startswith("not measured: a GPU target") and "cpu" in cpu
    fold = rows["ESMFold full size L=1024 fold faster than transformers"]
    assert fold["verdict"] == "not measured: no record"
    # A GPU number from a CPU run is never a pass.
    assert targets.evaluate(
        targets.TARGETS[0], [_bench("layer_norm", "triton", 0.1, device="cpu", tbps=9.0)]
    )["verdict"].startswith("not measured")


def test_longest_fold_row():
    probes = [
        {"kind": "probe", "length": 1024, "status": "ok", "seconds": 2.0},
        {"kind": "probe", "length": 2048, "status": "ok", "seconds": 9.5, "peak_mb": 5000.0},
        {"kind": "probe", "length": 3072, "status": "oom"},
    ]
    row = targets.longest_fold(probes)
    assert row["measured"] == "L=2048 in 9.5 s" and "L=3072 oom" in row["verdict"]
    probes[1]["predicted_mb"] = 5500.0
    assert targets.longest_fold(probes)["measured"] == (
        "L=2048 in 9.5 s; peak 5000 MB, predicted 5500 MB (1.10x)"
    )
    assert targets.longest_fold([])["verdict"] == "not measured: no probe ran"


def _autotune(kernel, key, block):
    config = {"kwargs": {"BLOCK_M": block}, "num_warps": 4, "num_stages": 2}
    return {"kind": "autotune", "kernels": {kernel: [{"key": key, "config": config}]}}


ENV = {"kind": "env", "device": "NVIDIA H200", "device_type": "cuda", "commit": "abc1234def9",
       "date": "2026-11-28T10:00:00Z", "torch": "2.11", "triton": "3.6"}  # fmt: skip


def test_tuned_configs_of_a_run_load_as_a_table(tmp_path):
    from esmkernels.ops import _recorded_configs as rc

    records = [_autotune("_k", [1024, "torch.bfloat16"], 32), _autotune("_k", [1024, "x"], 64)]
    table = tuned_configs(ENV, records)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(table))
    # the latest snapshot of a kernel wins (snapshots are cumulative within a process)
    assert rc.lookup("NVIDIA H200", "_k", (1024, "x"), rc.load_table(path))["kwargs"] == {
        "BLOCK_M": 64
    }
    assert tuned_configs({**ENV, "device_type": "cpu"}, records)["gpus"] == {}


def test_collect_copies_the_run_home_and_merges_tuned_configs(tmp_path):
    from bench.collect_gpu_run import collect
    from esmkernels.ops import _recorded_configs as rc

    script = tmp_path / "phase.py"
    lines = [ENV, _autotune("_k", [64, "torch.float32"], 16), _bench("layer_norm", "triton", 1.0)]
    script.write_text(
        "import sys\n"
        "p = sys.argv[sys.argv.index('--records') + 1]\n"
        f"open(p, 'a').write({''.join(json.dumps(x) + chr(10) for x in lines)!r})\n"
    )
    out = tmp_path / "out"
    Session([Phase("env", 10, [sys.executable, str(script)])], out, tmp_path / "st", 20,
            reserve=0.5).run()  # fmt: skip
    configs = tmp_path / "tuned.json"
    configs.write_text(json.dumps(rc.empty_table()))
    dest = collect(out, tmp_path / "results", configs)
    assert dest.name == "20261128-nvidia-h200-abc1234def"
    assert sorted(p.name for p in dest.iterdir() if p.suffix != ".png") == sorted(OUT_FILES)
    assert (dest / "kernels.png").read_bytes()[:4] == b"\x89PNG"
    assert rc.lookup("NVIDIA H200", "_k", (64, "torch.float32"), rc.load_table(configs))


@pytest.mark.slow
def test_gpu_session_script_runs_end_to_end_on_cpu(tmp_path):
    """bash bench/gpu_session.sh on this CPU: every phase finishes or says why it skipped,
    the kernels run interpreted at tiny sizes, four files land in $OUT (about 2 minutes)."""
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    env.pop("TRITON_INTERPRET", None)  # the script decides (no CUDA here: interpreted)
    run = subprocess.run(
        ["bash", "bench/gpu_session.sh", "--budget", "300"],  # it needs ~2 min; slack for load
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=360,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(OUT_FILES)
    data = json.loads((out / "results.json").read_text())
    status = {p["name"]: p["status"] for p in data["phases"]}
    assert status["gpu_tests"].startswith("gpu_tests skipped: no CUDA")
    assert all(s == "ok" for n, s in status.items() if n != "gpu_tests"), status
    records = [r for p in data["phases"] for r in p["records"]]
    ran = {(r["case"], r["provider"]) for r in records if r.get("kind") == "bench"
           and r["status"] == "ok"}  # fmt: skip
    assert ("layer_norm", "triton") in ran and ("trimul_out", "triton") in ran
    assert ("uniform", "triton") in ran and ("fold", "triton") in ran
    tests = [r for r in records if r.get("kind") == "test"]
    assert tests and all(t["outcome"] == "passed" for t in tests)
    probe = next(p for p in data["phases"] if p["name"] == "fold_probe")
    assert any(r.get("kind") == "probe" and r["status"] == "ok" for r in records), probe
    summary = (out / "summary.md").read_text()
    assert "not measured: a GPU target" in summary and "no CUDA" in summary


def test_longest_fold_stops_at_the_first_out_of_memory():
    import time
    import types

    import torch

    from esmkernels.benchmarks import fold

    calls = []

    def fake_model(ids, attention_mask, num_recycles, outputs="full"):
        calls.append(ids.shape[1])
        if ids.shape[1] >= 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")
        return types.SimpleNamespace(positions=torch.zeros(1))

    models = types.SimpleNamespace(
        device="cpu", chunk_size=64, size="tiny", get=lambda p: fake_model
    )
    rows = fold.longest_fold("triton", [32, 8, 16], models=models, deadline=time.monotonic() + 60)
    assert [(r["length"], r["status"]) for r in rows] == [(8, "ok"), (16, "oom")]
    assert calls == [8, 16] and rows[0]["chunk_size"] == 64
    assert fold.longest_fold("triton", [8], models=models, deadline=time.monotonic() - 1) == []


def test_commit_of_a_copied_tree_comes_from_the_environment(tmp_path, monkeypatch):
    from esmkernels.benchmarks import environment

    monkeypatch.setattr(environment, "REPO", tmp_path)  # a tree copied without .git
    monkeypatch.setenv("ESMKERNELS_COMMIT", "0123456789abcdef")
    assert environment.git_commit() == "0123456789abcdef"
    assert environment.git_commit(short=True) == "0123456789"
    monkeypatch.delenv("ESMKERNELS_COMMIT")
    assert environment.git_commit() == "unknown"


def test_longest_fold_records_the_prediction_beside_the_fold():
    """An esmkernels model's row carries the chunk and offload it used and the memory model's
    device peak for them (the GPU session compares it with max_memory_allocated)."""
    import time

    import torch

    from esmkernels.benchmarks import fold
    from esmkernels.models import fold_memory

    models = fold.Models("tiny", "cpu", torch.float32, chunk_size="auto")
    (row,) = fold.longest_fold(
        "torch", [12], models=models, deadline=time.monotonic() + 60, outputs="lean"
    )
    model = models.get("torch")
    assert row["status"] == "ok" and row["chunk_size"] == model.last_chunk_size
    assert row["offload"] is False
    want = fold_memory.predict_fold_peak_bytes(
        model.config, 12, chunk_size=model.last_chunk_size, outputs="lean"
    )
    assert row["predicted_mb"] == want / 2**20 > 0
