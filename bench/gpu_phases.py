"""The GPU session's phases (one process each; see bench/gpu_session.py).

    python -m bench.gpu_phases PHASE --records FILE --deadline UNIX_TIME

Every phase appends JSON records to FILE the moment they exist (a phase cut at its cap keeps
what it wrote), and plans its own work to end before `deadline`:

- `env`: device, memory, driver, torch / triton / transformers versions, commit, which optional
  packages are present, and the supported version set they match (esmkernels.ops._compat);
- `compile_checks`: the sm_90 compile checks (register spills, int64 offsets) under this
  machine's Triton, before anything is timed (on a CPU the layer norm's only, as a smoke test);
- `gpu_tests`: the `gpu`-marked tests (real shapes: ESM-2 650M / 3B heads, trunk c_z = 128 up to
  L = 2048, L = 4096 attention), compiled; one record per test as it finishes;
- `property_tests`: the kernels' hypothesis property tests on the `device` fixture (compiled on a
  GPU; on a CPU one file, interpreted, as a smoke test);
- `kernels`, `lm`, `fold`: `esmkernels.benchmarks` at the targets' shapes first (L = 1024), then
  more lengths while time is left; the autotune winners after each step;
- `fold_probe`: the longest sequence the fast ESMFold folds within the remaining time.

On a CPU the benchmarks run the `tiny` sizes (kernels interpreted) and the GPU-only phases say
they were skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OP_TEST_FILES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_ops_*.py"))
GPU_TEST_FILES = [*OP_TEST_FILES, "tests/test_models_esm.py", "tests/test_recorded_configs.py"]
MARGIN_S = 3.0


class Phase:
    def __init__(self, records: Path, deadline: float):
        self.records = records
        # the runner's wall-clock deadline as a monotonic one, less a margin to write out
        self.deadline = time.monotonic() + (deadline - time.time()) - MARGIN_S

    def emit(self, record: dict) -> None:
        with open(self.records, "a") as f:
            f.write(json.dumps(record, default=str) + "\n")
            f.flush()

    def status(self, text: str) -> None:
        self.emit({"kind": "phase_status", "status": text})

    def left(self) -> float:
        return self.deadline - time.monotonic()


def cuda() -> bool:
    import torch

    return torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")


def _has(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# ------------------------------------------------------------------------------------------------
# env
# ------------------------------------------------------------------------------------------------


def phase_env(ph: Phase) -> int:
    from esmkernels.benchmarks.environment import default_device, environment, package_version

    env = environment(default_device())
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        )  # fmt: skip
        env["driver"] = smi.stdout.strip().split(", ")[1] if ", " in smi.stdout else smi.stdout
        env["nvidia_smi"] = smi.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        env["driver"] = "no nvidia-smi"
    names = ("pytest", "hypothesis", "matplotlib", "transformers", "pytest-benchmark")
    env["packages"] = {name: package_version(name) for name in names}
    env["hypothesis_profile"] = os.environ.get("HYPOTHESIS_PROFILE")
    from esmkernels.ops._compat import environment_line

    env["supported_environment"] = environment_line()
    print(json.dumps(env, indent=1))
    ph.emit({"kind": "env", **env})
    return 0


# ------------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------------


class _Reporter:
    """pytest plugin: one record per test outcome, written as each test ends."""

    def __init__(self, ph: Phase, run: str):
        self.ph, self.run = ph, run

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or (report.when == "setup" and not report.passed):
            outcome = "error" if report.when == "setup" and report.failed else report.outcome
            self.ph.emit({"kind": "test", "run": self.run, "nodeid": report.nodeid,
                          "outcome": outcome, "seconds": round(report.duration, 2)})  # fmt: skip


def _pytest(ph: Phase, run: str, args: list[str], profile: str) -> int:
    missing = [name for name in ("pytest", "hypothesis") if not _has(name)]
    if missing:
        ph.status(f"skipped: {', '.join(missing)} not installed on this machine")
        return 0
    import pytest

    os.environ["HYPOTHESIS_PROFILE"] = profile
    code = pytest.main(
        ["-q", "-p", "no:cacheprovider", "-o", "addopts=--strict-markers", *args],
        plugins=[_Reporter(ph, run)],
    )
    print(f"pytest exit code {int(code)}")
    return 0  # failures are results (records), not a broken phase


def phase_compile_checks(ph: Phase) -> int:
    """The sm_90 compile checks (no spills, int64 offsets) under this machine's Triton, before
    anything is timed: the spill expectations hold per Triton version (docs/COMPATIBILITY.md).
    On a CPU only the layer norm's, as a smoke test (all of them take minutes on 2 cores)."""
    args = ["-m", "slow", *OP_TEST_FILES]
    if not cuda():
        args[2:2] = ["-k", "layer_norm"]
    elif _has("xdist"):  # a GPU machine's cores compile the variants in parallel
        args += ["-n", str(min(8, os.cpu_count() or 1))]
    return _pytest(ph, "compile", args, "ci")


def phase_gpu_tests(ph: Phase) -> int:
    if not cuda():
        ph.status("gpu_tests skipped: no CUDA device (the gpu-marked tests need one)")
        return 0
    return _pytest(ph, "gpu", ["-m", "gpu", *GPU_TEST_FILES], "gpu")


def phase_property_tests(ph: Phase) -> int:
    if cuda():  # compiled: the `device` fixture puts the tensors on the GPU
        return _pytest(ph, "properties", ["-m", "not slow and not gpu", *OP_TEST_FILES], "dev")
    # CPU: a few interpreted property tests, a smoke test of the harness end to end
    smoke = ["-m", "not slow and not gpu", "-k", "fully_masked or batch_invariance", *OP_TEST_FILES]
    return _pytest(ph, "properties (cpu smoke)", smoke, "ci")


# ------------------------------------------------------------------------------------------------
# benchmarks
# ------------------------------------------------------------------------------------------------


def _bench_setup():
    import torch

    from esmkernels.benchmarks.environment import device_name

    on_gpu = cuda()
    device = torch.device("cuda" if on_gpu else "cpu")
    return on_gpu, device, device_name(device), "real" if on_gpu else "tiny"


def _snapshot(ph: Phase, on_gpu: bool) -> None:
    if on_gpu:
        from esmkernels.ops import _recorded_configs

        ph.emit({"kind": "autotune", "kernels": _recorded_configs.snapshot()})


def _suite(ph: Phase, suite: str, steps, *, dtype, max_time: float, **kwargs) -> None:
    """Run `steps` [(cases, providers, lengths, modes)] in order until the deadline."""
    from esmkernels.benchmarks.runner import run_suite

    on_gpu, device, name, size = _bench_setup()
    emit = lambda r: ph.emit({"kind": "bench", "device_name": name, **r})
    if not on_gpu:  # a CPU smoke run: the targets' step only, at tiny sizes
        steps = steps[:2]
    for cases, providers, lengths, modes in steps:
        if ph.left() <= 0:
            break
        if not on_gpu:  # tiny sizes: the targets' L = 1024 becomes 8, other lengths 16
            lengths = sorted({8 if L == 1024 else 16 for L in lengths})
        run_suite(suite, providers=providers, lengths=lengths, cases=cases, modes=modes,
                  dtype=dtype, device=device, size=size, max_time=max_time,
                  deadline=ph.deadline, on_record=emit, **kwargs)  # fmt: skip
        _snapshot(ph, on_gpu)


def phase_kernels(ph: Phase) -> int:
    import torch

    on_gpu = cuda()
    lm_peers, trunk_peers = ["triton", "torch"], ["triton", "hf", "reference"]
    fwd = ["fwd"]
    steps = [  # the targets first (L = 1024, fwd), then wider coverage while time is left
        (["layer_norm", "rotary_attention", "rotary_attention_varlen"], lm_peers, [1024], fwd),
        (["trimul_out", "tri_att_start"], trunk_peers, [1024], fwd),
        (["rotary_attention", "layer_norm"], lm_peers, [256, 512, 2048, 4096], fwd),
        (["trimul_out", "tri_att_start"], trunk_peers, [256, 512, 2048], fwd),
        (["trimul_in", "tri_att_end"], trunk_peers, [1024], fwd),
        (["rotary_attention", "layer_norm"], lm_peers, [1024], ["bwd"]),
        (["trimul_out", "tri_att_start"], ["triton", "reference"], [1024], ["bwd"]),
    ]
    dtype = torch.bfloat16 if on_gpu else torch.float32
    _suite(ph, "kernels", steps, dtype=dtype, max_time=0.5 if on_gpu else 0.05)
    return 0


def phase_lm(ph: Phase) -> int:
    import torch

    on_gpu = cuda()
    steps = [(["uniform", "skewed"], ["triton", "hf", "torch"], [1024], ["fwd"])]
    dtype = torch.bfloat16 if on_gpu else torch.float32
    _suite(ph, "lm", steps, dtype=dtype, max_time=1.0 if on_gpu else 0.05)
    return 0


def phase_fold(ph: Phase) -> int:
    import torch

    on_gpu = cuda()
    steps = [(["fold"], ["triton", "hf"], [256, 1024], ["fwd"])]
    _suite(ph, "fold", steps, dtype=torch.float32, max_time=2.0 if on_gpu else 0.05)
    return 0


def phase_fold_probe(ph: Phase) -> int:
    import torch

    from esmkernels.benchmarks import fold

    on_gpu, device, name, _size = _bench_setup()
    # esmfold_v1's trunk width with 2 blocks (the peak is one block's; time scales with the
    # blocks), bf16, lean outputs, chunk and offload chosen by the memory model.
    size, dtype = ("wide", torch.bfloat16) if on_gpu else ("tiny", torch.float32)
    lengths = [1024, 2048, 4096, 6144, 8192, 10240, 12288, 14336, 16384] if on_gpu else [8, 16]
    models = fold.Models(size, device, dtype, chunk_size="auto")
    emit = lambda row: ph.emit({"kind": "probe", "device_name": name, "provider": "triton", **row})
    fold.longest_fold(
        "triton", lengths, models=models, deadline=ph.deadline, outputs="lean", on_result=emit
    )
    _snapshot(ph, on_gpu)
    return 0


PHASES = {
    "env": phase_env,
    "compile_checks": phase_compile_checks,
    "gpu_tests": phase_gpu_tests,
    "property_tests": phase_property_tests,
    "kernels": phase_kernels,
    "lm": phase_lm,
    "fold": phase_fold,
    "fold_probe": phase_fold_probe,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.gpu_phases")
    p.add_argument("phase", choices=sorted(PHASES))
    p.add_argument("--records", type=Path, required=True)
    p.add_argument("--deadline", type=float, required=True, help="unix time to end by")
    args = p.parse_args(argv)
    ph = Phase(args.records, args.deadline)
    try:
        return PHASES[args.phase](ph)
    except Exception as e:  # the runner reports the phase as failed; keep the reason
        traceback.print_exc()
        ph.emit({"kind": "error", "phase": args.phase, "error": f"{type(e).__name__}: {e}"})
        return 1


if __name__ == "__main__":
    sys.exit(main())
