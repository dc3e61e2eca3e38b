"""The lm suite's CPU inference table alone (transformers fp32 / ours fp32 / bf16 / int8; issue
20), written as JSON and markdown under bench/results/. The table is
`esmkernels.benchmarks.lm_cpu` (its docstring says how it is measured); `esmkernels bench
--suite lm` on a CPU prints the same table after the suite's records.

    .venv/bin/python -m bench.lm_cpu [--size cpu|real|tiny] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from esmkernels.benchmarks import environment, lm_cpu, report
from esmkernels.jobs.threads import add_option as add_threads_option
from esmkernels.jobs.threads import set_threads


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="cpu", choices=tuple(lm_cpu.CASES))
    p.add_argument("--repeats", type=int, default=3)
    add_threads_option(p)
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    args = p.parse_args(argv)
    set_threads(args.threads)
    table = lm_cpu.run_table(
        args.size,
        repeats=args.repeats,
        on_row=lambda r: print(r["shape"], r["case"], r["L"], r["status"]),
    )
    env = environment.environment("cpu")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    base = args.out / f"lm-cpu-{stamp}-{env['commit'][:10]}"
    report.write_json(base.with_suffix(".json"), {"environment": env, **table})
    lm_cpu.write_markdown(table, base.with_suffix(".md"))
    print(lm_cpu.markdown(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
