"""The per-Triton spill table (esmkernels.ops._spills) that keeps every autotune space spill-free.

- Every row names a tuned kernel, one of its lists and a config of that list, for a supported
  Triton release; under every supported release every list keeps at least one config.
- The rows of the running Triton still spill when compiled for sm_90 (slow): a row that no
  longer spills is stale, and its config goes back into the space by deleting the row. The op
  tests' compile checks prove the other half (every config left in a space is spill-free).
  `make test` runs this under Triton 3.9, `make compat` under 3.6.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
import triton

from esmkernels.ops import _compat, _spills, _tuning
from esmkernels.ops._recorded_configs import autotuners
from tests._sm90 import Job, compile_report
from tests.test_ops_rotary_attention import _aligned_args

MODULES = (
    "esmkernels.ops.rotary.forward",
    "esmkernels.ops.rotary.backward",
    "esmkernels.ops.trimul.forward",
    "esmkernels.ops.axial.forward",
    "esmkernels.ops.axial.backward",
)
RELEASES = sorted({env["triton"] for env in _compat.SUPPORTED_ENVIRONMENTS.values()})


def _import_kernels() -> None:
    for name in MODULES:
        importlib.import_module(name)


def test_every_tuned_kernel_registers_its_space_under_its_own_name():
    _import_kernels()
    assert sorted(_tuning.SPACES) == sorted(autotuners())


def test_rows_name_a_kernel_list_and_supported_release():
    _import_kernels()
    seen = set()
    for row in _spills.SPILLS:
        assert row.kernel in _tuning.SPACES, row
        lowp, fp32, _ = _tuning.SPACES[row.kernel]
        spec = {"lowp": lowp, "fp32": fp32}[row.dtype]
        assert row.max_d in (spec if isinstance(spec, dict) else {None: spec}), row
        assert row.triton in RELEASES, row
        assert row.spill_bytes > 0 and row.num_warps > 0 and row.num_stages > 0, row
        key = (row.triton, row.kernel, row.dtype, row.max_d, json.dumps(row.blocks, sort_keys=True),
               row.num_warps, row.num_stages)  # fmt: skip
        assert key not in seen, f"duplicate row {row}"
        seen.add(key)


def test_every_list_keeps_a_config_under_every_supported_release():
    """Built as on a GPU (TRITON_INTERPRET=0, so `make` gives the real tiles): for each release,
    `drop_spilling` finds every row's config in its list and leaves at least one."""
    code = textwrap.dedent(
        f"""
        import importlib, json
        for name in {list(MODULES)!r}:
            importlib.import_module(name)
        from esmkernels.ops import _tuning
        kept = {{}}
        for kernel, (lowp, fp32, make) in sorted(_tuning.SPACES.items()):
            for dtype, spec in (("lowp", lowp), ("fp32", fp32)):
                for d, choices in (spec if isinstance(spec, dict) else {{None: spec}}).items():
                    for release in {RELEASES!r}:
                        left = _tuning.drop_spilling(make(choices), kernel, dtype, d, release)
                        kept[f"{{kernel}} {{dtype}} {{d}} {{release}}"] = [len(choices), len(left)]
        print(json.dumps(kept))
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    kept = json.loads(run.stdout.splitlines()[-1])
    assert len(kept) >= 10 * 2 * len(RELEASES), kept  # 10 tuned kernels, 2 dtypes or more
    for row in _spills.SPILLS:
        name = f"{row.kernel} {row.dtype} {row.max_d} {row.triton}"
        listed, left = kept[name]
        assert left < listed, f"{row}: not left out"


def test_a_row_naming_no_listed_config_or_emptying_a_list_is_an_error(monkeypatch):
    config = triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=8, num_stages=2)
    row = _spills.Spill((3, 9), "_k", "fp32", 128, {"BLOCK_M": 16, "BLOCK_N": 16}, 8, 2, 36)
    monkeypatch.setattr(_spills, "SPILLS", (row,))
    with pytest.raises(ValueError, match="every fp32 config for D <= 128 spills on Triton"):
        _tuning.drop_spilling([config], "_k", "fp32", 128, (3, 9))
    other = triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=8, num_stages=2)
    assert _tuning.drop_spilling([config, other], "_k", "fp32", 128, (3, 9)) == [other]
    assert _tuning.drop_spilling([config], "_k", "fp32", 128, (3, 6)) == [config]
    with pytest.raises(ValueError, match="names a config its fp32 list does not have"):
        _tuning.drop_spilling([other], "_k", "fp32", 128, (3, 9))


# The launch each kernel's rows were measured at (as in the op tests' compile checks).
def _job(row: _spills.Spill) -> Job:
    dtype = "fp32" if row.dtype == "fp32" else "bf16"
    if row.kernel.startswith("_rotary_attention"):
        module = "esmkernels.ops.rotary." + ("forward" if "fwd" in row.kernel else "backward")
        constexprs = dict(D=row.max_d, ROTARY=True, HAS_POS=False, HAS_MASK=True, IS_VARLEN=False,
                          DOT_PRECISION="tf32x3" if dtype == "fp32" else "tf32", pos_ptr=None,
                          cu_ptr=None)  # fmt: skip
        args = getattr(importlib.import_module(module), row.kernel).fn.arg_names
        aligned = _aligned_args(args, constexprs)
    elif row.kernel.startswith("_trimul"):
        module, aligned = "esmkernels.ops.trimul.forward", None
        constexprs = {"BLOCK_C": 128, "BLOCK_CH": 128}
        if row.kernel == "_trimul_proj_kernel":
            constexprs.update(HAS_MASK=True, BLOCK_K=32)
    else:
        raise AssertionError(f"{row.kernel}: no compile job known for its rows; add one here")
    return Job(module, row.kernel, {**constexprs, **row.blocks}, dtype, aligned=aligned,
               num_warps=row.num_warps, num_stages=row.num_stages)  # fmt: skip


@pytest.mark.slow
def test_rows_of_the_running_triton_still_spill():
    release = _compat.parse_version(triton.__version__)
    rows = [row for row in _spills.SPILLS if row.triton == release]
    if not rows:
        pytest.skip(f"no spill rows for Triton {triton.__version__}")
    report = compile_report([_job(row) for row in rows])
    assert len(report) == len(rows)
    measured = {name: value["spill"] for name, value in report.items()}
    stale = {name: b for name, b in measured.items() if b == 0}
    assert not stale, f"no longer spill on Triton {triton.__version__} (delete the rows): {stale}"
