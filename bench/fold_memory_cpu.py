"""Peak RSS and time of one ESMFold fold on CPU: esmkernels vs transformers, side by side.

    python -m bench.fold_memory_cpu [--case small|wide|all] [--threads N]

Each fold runs in its own fresh subprocess (so one side's allocator state cannot help or hurt
the other) on the same random weights (transformers' model, saved with `save_pretrained`,
loaded by both) and the same residues. Reported per side: the peak RSS growth of the fold
(ru_maxrss after the fold minus the RSS before it, model loaded) and its wall time, plus the
ratios esmkernels / transformers and our memory model's prediction. Results go to
`bench/results/fold-memory-cpu-<date>-<commit>.json` with the machine, versions, commit and the
load average before and after (the CPU is shared; the ratios are what to read).

Cases (the issue's; `esmkernels.benchmarks.fold.CPU_MEMORY_CASES` and `SIZES`):
- small: ESM-2 8M-shaped stem, trunk 2 blocks, c_s 128, c_z 64, L = 384, 1 recycle, default
  settings on both sides (ours: chunk_size "auto"; transformers: its config's chunk size, 128);
- wide: the esmfold_v1 trunk width (c_s 1024, c_z 128, 32-wide heads), 2 blocks, the same
  small stem, L = 1,024, 1 recycle: ours at default settings, transformers with chunk_size 64.
It also prints the memory model's predicted peak of the full esmfold_v1 (3B stem in bf16, 48
blocks) at L = 1,024 ... 10,000.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from esmkernels.benchmarks.fold import CPU_MEMORY_CASES as CASES
from esmkernels.benchmarks.fold import fold_config_kwargs
from esmkernels.benchmarks.memory import predicted_esmfold_v1

HERE = Path(__file__).resolve().parent


def _rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def worker(side: str, model_dir: str, length: int, chunk: str, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    if side == "hf":
        from transformers import EsmForProteinFolding

        model = EsmForProteinFolding.from_pretrained(model_dir).eval()
        if chunk != "default":
            model.trunk.set_chunk_size(int(chunk))
        used = model.trunk.chunk_size
    else:
        from esmkernels import EsmForProteinFolding

        model = EsmForProteinFolding.from_pretrained(model_dir, backend="torch").eval()
        used = None
    ids = torch.randint(0, 20, (1, length), generator=torch.Generator().manual_seed(0))
    before = _rss_bytes()
    start = time.perf_counter()
    with torch.no_grad():
        out = model(ids, num_recycles=1)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if side == "ours":
        used = model.last_chunk_size
    return dict(
        side=side,
        seconds=seconds,
        peak_rss_growth_bytes=peak - before,
        rss_before_bytes=before,
        chunk_size=used,
        mean_plddt=float(out.plddt.mean()),
    )


def _run_worker(side, model_dir, length, chunk, threads) -> dict:
    cmd = [sys.executable, "-m", "bench.fold_memory_cpu", "--worker", side, "--model-dir",
           model_dir, "--length", str(length), "--chunk", str(chunk), "--threads", str(threads)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
    if proc.returncode != 0:
        return dict(side=side, error=proc.stderr[-2000:], returncode=proc.returncode)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=[*CASES, "all", "none"], default="small")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--worker", choices=["ours", "hf"])
    p.add_argument("--model-dir")
    p.add_argument("--length", type=int)
    p.add_argument("--chunk", default="default")
    args = p.parse_args(argv)
    if args.worker:
        print(
            json.dumps(worker(args.worker, args.model_dir, args.length, args.chunk, args.threads))
        )
        return 0

    print("Predicted peak of the full esmfold_v1 (ESM-2 3B stem, 48 blocks, bf16, Triton path):")
    print(
        f"{'L':>6} {'auto chunk':>10} {'fold GiB':>9} {'+weights GiB':>12} {'unchunked GiB':>13} {'pair GiB':>8}"
    )
    table = predicted_esmfold_v1()
    for r in table:
        print(f"{r['length']:>6} {r['auto_chunk']!s:>10} {r['fold_gib']:>9.1f} {r['total_gib']:>12.1f} "
              f"{r['unchunked_fold_gib']:>13.1f} {r['pair_gib']:>8.1f}")  # fmt: skip
    cases = list(CASES) if args.case == "all" else [] if args.case == "none" else [args.case]
    results = []
    for name in cases:
        case = CASES[name]
        import torch
        import transformers

        from esmkernels.models import fold_memory as fm

        torch.manual_seed(0)
        hf_config = transformers.EsmConfig(**fold_config_kwargs(case["size"]))
        with tempfile.TemporaryDirectory() as tmp:
            transformers.EsmForProteinFolding(hf_config).save_pretrained(tmp)
            load_before = os.getloadavg()
            sides = {s: _run_worker(s, tmp, case["length"], case["hf_chunk"] if s == "hf" else "auto", args.threads)
                     for s in ("hf", "ours")}  # fmt: skip
            load_after = os.getloadavg()
        ours, hf = sides["ours"], sides["hf"]
        row = dict(case=name, **case, ours=ours, transformers=hf, load_avg_before=load_before,
                   load_avg_after=load_after)  # fmt: skip
        if "error" not in ours and "error" not in hf:
            row["memory_ratio"] = ours["peak_rss_growth_bytes"] / hf["peak_rss_growth_bytes"]
            row["time_ratio"] = ours["seconds"] / hf["seconds"]
            from esmkernels.core.configuration import EsmConfig

            ours_cfg = EsmConfig(**fold_config_kwargs(case["size"]))
            row["ours_predicted_peak_bytes"] = fm.predict_fold_peak_bytes(
                ours_cfg, case["length"], chunk_size=ours["chunk_size"]
            )
            print(f"{name}: memory {row['memory_ratio']:.2f}x, time {row['time_ratio']:.2f}x "
                  f"(ours {ours['peak_rss_growth_bytes'] / 2**20:.0f} MiB {ours['seconds']:.1f} s chunk "
                  f"{ours['chunk_size']}, transformers {hf['peak_rss_growth_bytes'] / 2**20:.0f} MiB "
                  f"{hf['seconds']:.1f} s chunk {hf['chunk_size']}; load {load_before[0]:.1f}->{load_after[0]:.1f})")  # fmt: skip
        else:
            print(f"{name}: failed: {ours.get('error') or hf.get('error')}")
        results.append(row)
    if results:
        from bench.conftest import git_commit, versions

        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
        out = HERE / "results" / f"fold-memory-cpu-{stamp}-{git_commit()[:10]}.json"
        out.write_text(json.dumps(dict(
            machine=dict(platform=platform.platform(), processor=platform.processor(),
                         cpus=os.cpu_count(), threads=args.threads),
            versions=versions(), commit=git_commit(), results=results, predicted_esmfold_v1=table,
        ), indent=1))  # fmt: skip
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
