"""Run the benchmark suite and record the results under bench/results/.

    python -m bench.run [pytest args...]

Writes `bench/results/<device>-<date>-<commit>.json` (pytest-benchmark's full JSON, with device,
torch, triton, transformers versions and the git commit in machine_info) and prints a table.
On a CPU-only machine the benches use tiny shapes and report reference/torch timings; the
Triton providers run only on CUDA.
"""

from __future__ import annotations

import datetime as _dt
import re
import sys
from pathlib import Path

import pytest

from bench.conftest import device_name, git_commit

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device_name()).strip("-").lower()[:40]
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    out = results / f"{slug}-{stamp}-{git_commit()[:10]}.json"
    args = [
        str(HERE),
        "-q",
        "-p",
        "no:cacheprovider",
        "--benchmark-only",
        "--benchmark-min-rounds=3",
        "--benchmark-max-time=0.5",
        "--benchmark-warmup=on",
        f"--benchmark-json={out}",
        "--benchmark-columns=min,median,mean,rounds",
        "--benchmark-sort=name",
        "-o",
        "testpaths=bench",
        *argv,
    ]
    code = pytest.main(args)
    if out.exists():
        print(f"\nresults written to {out.relative_to(HERE.parent)}")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
