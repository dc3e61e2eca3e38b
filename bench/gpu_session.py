"""The GPU session's runner: phases in priority order, each capped, results in $OUT as they come.

    python -m bench.gpu_session --out DIR [--budget SECONDS] [--only env,kernels]

(`bench/gpu_session.sh` sets up the environment and calls this.) Each phase runs as its own
process (`python -m bench.gpu_phases PHASE`), so a phase past its cap can be killed without
losing the session: it is cut, reported as such, and the next phase starts while budget is left.
A phase appends JSON records to a staging file as it goes; while it runs, and after it ends, the
runner rewrites the files in DIR, so a session killed from outside keeps everything up to the
last few seconds:

- `summary.md`: the phase table (status, seconds, cap), the targets table (target, measured,
  peer, ratio, pass/short, device), what was skipped and why;
- `results.json`: every phase's status and records (environment, test results, benchmarks);
- `session.log`: the tail of every phase's output;
- `tuned_configs.json`: the autotune winners of this run (`esmkernels.ops._recorded_configs`
  layout; `bench/collect_gpu_run.py` merges them into the package).

Four files: within the device tool's limit of 8 files of 16 MiB. Standard library only (the
phases import torch), so the runner itself cannot be the thing that breaks.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import targets

OUT_FILES = ("summary.md", "results.json", "session.log", "tuned_configs.json")
MAX_FILES = 8
LOG_TAIL_BYTES = 256 * 1024  # per phase, in session.log
RESERVE_S = 5.0  # kept back for the final write
MIN_PHASE_S = 5.0  # a phase is not started with less than this left


@dataclass
class Phase:
    """One step. `argv` runs with `--records FILE --deadline T` appended. `cap` None: whatever
    budget is left (the last, open-ended phase)."""

    name: str
    cap: float | None
    argv: list[str]
    title: str = ""


@dataclass
class PhaseResult:
    name: str
    title: str
    status: str = "pending"  # ok | failed (exit N) | cut at cap | skipped: why | running
    seconds: float = 0.0
    cap: float | None = None
    records: list = field(default_factory=list)


def default_phases(python: str = sys.executable) -> list[Phase]:
    """The session's phases, most valuable first (caps in seconds; see bench/gpu_phases.py)."""
    run = lambda name: [python, "-m", "bench.gpu_phases", name]
    return [
        Phase("env", 30, run("env"), "environment"),
        Phase("compile_checks", 120, run("compile_checks"), "sm_90 compile checks, this Triton"),
        Phase("gpu_tests", 120, run("gpu_tests"), "compiled correctness: gpu-marked tests"),
        Phase("property_tests", 60, run("property_tests"), "compiled correctness: properties"),
        Phase("kernels", 100, run("kernels"), "kernel benchmarks vs targets"),
        Phase("lm", 60, run("lm"), "ESM-2 650M forward vs transformers"),
        Phase("fold", 80, run("fold"), "ESMFold fold vs transformers"),
        Phase("fold_probe", None, run("fold_probe"), "longest fold within the budget"),
    ]


def read_records(path: Path) -> list[dict]:
    """Records of a staging file; a half-written last line (a phase killed mid-write) is
    ignored."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _tail(path: Path, limit: int = LOG_TAIL_BYTES) -> str:
    if not path.exists():
        return ""
    data = path.read_bytes()
    cut = len(data) > limit
    text = data[-limit:].decode(errors="replace")
    return (f"[... {len(data) - limit} earlier bytes left out]\n" if cut else "") + text


class Session:
    def __init__(
        self,
        phases: list[Phase],
        out: Path,
        staging: Path,
        budget: float,
        *,
        reserve: float = RESERVE_S,
        min_phase: float = MIN_PHASE_S,
        poll: float = 2.0,
    ):
        names = [p.name for p in phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names repeat: {names}")
        if budget <= reserve + min_phase:
            raise ValueError(f"--budget {budget}: needs more than {reserve + min_phase} s")
        self.phases, self.out, self.staging, self.budget = phases, out, staging, budget
        self.reserve, self.min_phase, self.poll = reserve, min_phase, poll
        self.started = time.monotonic()
        self.results = [PhaseResult(p.name, p.title or p.name, cap=p.cap) for p in phases]
        out.mkdir(parents=True, exist_ok=True)
        staging.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.started)

    def run(self) -> list[PhaseResult]:
        self.refresh()
        for phase, result in zip(self.phases, self.results):
            self._run_phase(phase, result)
            self.refresh()
        self.refresh(final=True)
        return self.results

    def _run_phase(self, phase: Phase, result: PhaseResult) -> None:
        available = self.left() - self.reserve
        if available < self.min_phase:
            result.status = f"skipped: budget spent ({self.budget:.0f} s)"
            return
        timeout = available if phase.cap is None else min(phase.cap, available)
        records, log = self.staging / f"{phase.name}.jsonl", self.staging / f"{phase.name}.log"
        argv = [*phase.argv, "--records", str(records), "--deadline", str(time.time() + timeout)]
        result.status = "running"
        t0 = time.monotonic()
        with open(log, "ab") as sink:
            proc = subprocess.Popen(
                argv, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
            cut = False
            while True:
                remaining = timeout - (time.monotonic() - t0)
                try:
                    code = proc.wait(timeout=max(0.01, min(self.poll, remaining)))
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() - t0 >= timeout:
                        cut = True
                        _kill(proc)
                        code = proc.wait()
                        break
                    result.seconds = time.monotonic() - t0
                    result.records = read_records(records)
                    self.refresh()
            _kill(proc)  # what the phase left running (its process group) goes with it
        result.seconds = time.monotonic() - t0
        result.records = read_records(records)
        declared = [r for r in result.records if r.get("kind") == "phase_status"]
        if cut:
            limit = "cap" if phase.cap is not None and timeout >= phase.cap else "budget"
            result.status = f"cut at {limit} ({timeout:.0f} s)"
        elif code != 0:
            result.status = f"failed (exit {code})"
        elif declared:
            result.status = declared[-1]["status"]
        else:
            result.status = "ok"

    def refresh(self, final: bool = False) -> None:
        """Rewrite every file in the output folder from what is known now."""
        env = next((r for r in self._all("env")), {})
        records = [r for res in self.results for r in res.records]
        payload = {
            "budget_s": self.budget,
            "elapsed_s": round(time.monotonic() - self.started, 1),
            "finished": final,
            "environment": env,
            "phases": [
                {
                    "name": r.name,
                    "title": r.title,
                    "status": r.status,
                    "seconds": round(r.seconds, 1),
                    "cap_s": r.cap,
                    "records": r.records,
                }
                for r in self.results
            ],  # fmt: skip
        }
        _write(self.out / "results.json", json.dumps(payload, indent=1, default=str))
        _write(self.out / "summary.md", summary(payload, records))
        log = [
            f"===== {p.name} =====\n{_tail(self.staging / f'{p.name}.log')}" for p in self.phases
        ]
        _write(self.out / "session.log", "\n".join(log))
        _write(self.out / "tuned_configs.json", json.dumps(tuned_configs(env, records), indent=1))

    def _all(self, kind: str):
        for res in self.results:
            for r in res.records:
                if r.get("kind") == kind:
                    yield r


def _kill(proc: subprocess.Popen) -> None:
    """The phase and everything it started (its own process group)."""
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        if grace is None:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def tuned_configs(env: dict, records: list[dict]) -> dict:
    """This run's autotune winners as a tuned-config table (the latest snapshot per kernel)."""
    kernels: dict = {}
    for r in records:
        if r.get("kind") == "autotune":
            kernels.update(r["kernels"])
    gpu = env.get("device") if env.get("device_type") == "cuda" else None
    table = {"format": 1, "gpus": {}}
    if gpu and kernels:
        recorded = {k: env.get(k) for k in ("commit", "date", "torch", "triton", "cuda")}
        table["gpus"][gpu] = {"recorded": recorded, "kernels": kernels}
    return table


def summary(payload: dict, records: list[dict]) -> str:
    env = payload["environment"]
    device = env.get("device", "unknown device")
    lines = [
        "# GPU session",
        "",
        f"- device: {device}"
        + (f", {env['gpu_memory_gb']} GB" if env.get("gpu_memory_gb") else ""),
        f"- driver: {env.get('driver', '?')}; torch {env.get('torch', '?')} (CUDA "
        f"{env.get('cuda', '?')}); triton {env.get('triton', '?')}; transformers "
        f"{env.get('transformers', '?')}",
        f"- supported set: {env.get('supported_environment', '?')}",
        f"- commit: {env.get('commit', '?')}; date {env.get('date', '?')}",
        f"- budget {payload['budget_s']:.0f} s, elapsed {payload['elapsed_s']:.0f} s"
        + ("" if payload["finished"] else " (in progress or cut off)"),
        "",
        "## Phases",
        "",
        "| phase | status | seconds | cap |",
        "|---|---|---|---|",
    ]
    for p in payload["phases"]:
        cap = "rest" if p["cap_s"] is None else f"{p['cap_s']:.0f}"
        lines.append(f"| {p['title']} | {p['status']} | {p['seconds']:.0f} | {cap} |")
    lines += ["", "## Targets", "", *targets.table(records, device), ""]
    tests = [r for r in records if r.get("kind") == "test"]
    if tests:
        outcomes = ("passed", "failed", "error", "skipped")
        lines += ["## Tests", "", "| run | " + " | ".join(outcomes) + " |", "|---|---|---|---|---|"]
        for run in dict.fromkeys(t["run"] for t in tests):
            counts = [sum(t["run"] == run and t["outcome"] == o for t in tests) for o in outcomes]
            lines.append(f"| {run} | " + " | ".join(map(str, counts)) + " |")
        failures = [t["nodeid"] for t in tests if t["outcome"] in ("failed", "error")]
        if failures:
            lines += ["", "Failed:", ""] + [f"- `{f}`" for f in failures[:40]]
        lines.append("")
    errors = [f"{r['phase']}: {r['error']}" for r in records if r.get("kind") == "error"]
    notes = errors + [r["status"] for r in records if r.get("kind") == "phase_status"]
    notes += [f"{r['suite']}/{r['case']}/{r['provider']} L={r['length']}: {r['status']}"
              for r in records if r.get("kind") == "bench"
              and not str(r.get("status", "")).startswith(("ok", "unavailable"))]  # fmt: skip
    left = sorted({f"{r['suite']}/{r['provider']}: {r['status']}" for r in records
                   if r.get("kind") == "bench" and str(r.get("status")).startswith("unavailable")})  # fmt: skip
    if notes or left:
        lines += ["## Skipped, cut or failed", ""] + [f"- {n}" for n in notes + left] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.gpu_session", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--budget", type=float, default=480.0, help="seconds for all phases")
    p.add_argument("--staging", type=Path, default=None, help="phase scratch (default: temp)")
    p.add_argument("--only", default=None, help="comma-separated phase names")
    args = p.parse_args(argv)
    phases = default_phases()
    if args.only:
        wanted = args.only.split(",")
        unknown = [w for w in wanted if w not in {ph.name for ph in phases}]
        if unknown:
            p.error(f"--only: unknown phases {unknown}")
        phases = [ph for ph in phases if ph.name in wanted]
    import tempfile

    staging = args.staging or Path(tempfile.mkdtemp(prefix="gpu_session_"))
    try:
        session = Session(phases, args.out, staging, args.budget)
    except ValueError as e:
        p.error(str(e))
    results = session.run()
    print((args.out / "summary.md").read_text())
    bad = [r for r in results if r.status.startswith(("failed", "cut"))]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
