"""Bring a GPU session's output home: `bench/results/<date>-<gpu>-<commit>/` and the tuned configs.

    python -m bench.collect_gpu_run OUT_DIR [--results bench/results] [--no-configs]

Copies summary.md, results.json, session.log and tuned_configs.json from OUT_DIR (what the
device tool returned) into `bench/results/<date>-<gpu>-<commit>/`, draws the benchmark plots
there (`esmkernels.benchmarks.report.plot`, when matplotlib is installed), and merges the run's
autotune winners into `ops/data/tuned_configs.json`, the table the kernels ship with
(`esmkernels.ops._recorded_configs`). Commit the folder and the table together.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

from bench.gpu_session import OUT_FILES

ROOT = Path(__file__).resolve().parent.parent


def destination(results: Path, env: dict) -> Path:
    date = str(env.get("date", "unknown"))[:10].replace("-", "")
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", str(env.get("device", "unknown"))).strip("-").lower()
    commit = str(env.get("commit", "unknown"))[:10]
    return results / f"{date}-{gpu[:40]}-{commit}"


def collect(out: Path, results: Path, configs: Path | None) -> Path:
    payload = json.loads((out / "results.json").read_text())
    env = payload.get("environment") or {}
    if not env:
        raise ValueError(
            f"{out / 'results.json'}: no environment record (the env phase did not run)"
        )
    dest = destination(results, env)
    dest.mkdir(parents=True, exist_ok=True)
    for name in OUT_FILES:
        if (out / name).exists():
            shutil.copy2(out / name, dest / name)
    records = [r for p in payload["phases"] for r in p["records"] if r.get("kind") == "bench"]
    from esmkernels.benchmarks import report

    for suite in dict.fromkeys(r["suite"] for r in records):
        title = f"GPU session {suite} - {env.get('device')} - {str(env.get('commit'))[:10]}"
        report.plot([r for r in records if r["suite"] == suite], dest / f"{suite}.png", title)
    tuned = json.loads((out / "tuned_configs.json").read_text())
    if configs is not None and tuned.get("gpus"):
        from esmkernels.ops import _recorded_configs as rc

        table = json.loads(configs.read_text()) if configs.exists() else rc.empty_table()
        for gpu, entry in tuned["gpus"].items():
            table = rc.merge(table, gpu, entry["kernels"], entry.get("recorded", {}))
        configs.write_text(json.dumps(table, indent=1) + "\n")
        rc.load_table(configs)  # the written file is valid
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.collect_gpu_run", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the session's output folder ($OUT, as returned)")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--configs", type=Path, default=ROOT / "ops" / "data" / "tuned_configs.json")
    p.add_argument("--no-configs", action="store_true", help="leave the tuned-config table alone")
    args = p.parse_args(argv)
    if not (args.out / "results.json").exists():
        p.error(f"{args.out}: no results.json (not a GPU session's output folder)")
    try:
        dest = collect(args.out, args.results, None if args.no_configs else args.configs)
    except ValueError as e:
        p.error(str(e))
    print(f"copied to {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
