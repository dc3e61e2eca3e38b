"""The memory model against measured tensor peaks at esmfold_v1's trunk width, on CPU.

    python -m bench.fold_long_cpu [--lengths 1024 1536 2048] [--dtypes float32 bfloat16]
                                  [--outputs lean full] [--chunk auto|N]

The `wide` size of `esmkernels.benchmarks.fold` (c_s 1024, c_z 128, 32-wide heads, 2 trunk
blocks, ESMFold's structure module, an ESM-2 8M-shaped stem), torch backend, one pass
(num_recycles=0). Each case runs in its own subprocess; it reports the measured peak of live
tensor bytes (`fold_memory.track_peak_bytes`), the peak RSS growth of the fold, the memory
model's prediction for the chunk used, their ratio and the time. Results (with `uptime` before
and after, the commit and versions) go to `bench/results/fold-long-cpu-<date>-<commit>.json`.
A benchmark, not a test: a 2-core shared machine takes minutes per case at L >= 1,024.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def one_case(length: int, dtype_name: str, outputs: str, chunk: str) -> dict:
    """Run one fold in this process; return its measurements."""
    import torch

    from esmkernels.benchmarks.fold import build_model, sequence
    from esmkernels.models import fold_memory as fm

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    dtype = getattr(torch, dtype_name)
    model = build_model("torch", "wide", "cpu", dtype)
    model.set_chunk_size("auto" if chunk == "auto" else int(chunk))
    ids, _mask = sequence(length, "cpu")
    with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM to the current RSS
        fh.write("5")
    rss0 = _rss_kib("VmRSS")
    start = time.perf_counter()
    with torch.no_grad(), fm.track_peak_bytes() as tracker:
        model(ids, num_recycles=0, outputs=outputs)
    seconds = time.perf_counter() - start
    used = model.last_chunk_size
    predicted = fm.predict_fold_peak_bytes(
        model.config, length, dtype=dtype, backend="torch", chunk_size=used, outputs=outputs
    )
    return {
        "length": length,
        "dtype": dtype_name,
        "outputs": outputs,
        "chunk_size": used,
        "measured_tensor_peak": tracker.peak,
        "predicted_peak": predicted,
        "ratio_predicted_over_measured": round(predicted / tracker.peak, 4),
        "rss_growth_bytes": (_rss_kib("VmHWM") - rss0) * 1024,
        "seconds": round(seconds, 1),
    }


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 1536, 2048])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--outputs", nargs="+", default=["lean"])
    p.add_argument("--chunk", default="auto")
    p.add_argument(
        "--one", nargs=4, metavar=("L", "DTYPE", "OUTPUTS", "CHUNK"), help=argparse.SUPPRESS
    )
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one_case(int(args.one[0]), args.one[1], args.one[2], args.one[3])))
        return 0
    commit = subprocess.run(
        ["git", "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    run = {"machine": f"{platform.machine()}, {os.cpu_count()} cpus", "commit": commit,
           "uptime_before": _uptime(), "cases": []}  # fmt: skip
    for length in args.lengths:
        for dtype in args.dtypes:
            for outputs in args.outputs:
                cmd = [sys.executable, "-m", "bench.fold_long_cpu", "--one", str(length), dtype,
                       outputs, args.chunk]  # fmt: skip
                done = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
                if done.returncode != 0:
                    case = {"length": length, "dtype": dtype, "outputs": outputs,
                            "error": done.stderr.strip().splitlines()[-1:]}  # fmt: skip
                else:
                    case = json.loads(done.stdout.strip().splitlines()[-1])
                print(json.dumps(case), flush=True)
                run["cases"].append(case)
    run["uptime_after"] = _uptime()
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    out = HERE / "results" / f"fold-long-cpu-{stamp}-{commit}.json"
    out.write_text(json.dumps(run, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
