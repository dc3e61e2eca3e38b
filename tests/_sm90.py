"""Compile Triton kernels for sm_90 on a machine without a GPU (shared by the op tests).

Triton ships the CUDA backend and ptxas, so `triton.compile(ASTSource(...),
target=GPUTarget("cuda", 90, 32))` runs the real front end, the Hopper lowering and ptxas on
every kernel variant, which the interpreter never does (it happily reads non-constexpr globals,
for one). The compile runs in a subprocess because the interpreter flag is fixed when Triton is
first imported, and the test session imports it with TRITON_INTERPRET=1.

Two modes, one script:

- "ttir": every stride typed i32, no launch specialisation; returns the type of every
  `tt.addptr` offset per job. `assert_all_offsets_int64` then proves that index arithmetic is
  widened explicitly (ESMFold's pair tensors pass 2^31 elements).
- "cubin": each job specialised as a launch would be (pointers and strides 16-divisible, unit
  strides constexpr 1), compiled with Triton's own ptxas invocation (cache bypassed, its log
  captured: Triton passes flags such as --regAllocOptLevel=2 that change the spill count, so a
  separate plain `ptxas -v` would measure another binary); returns registers / spill bytes /
  shared memory per kernel variant, one variant per launch shape or per autotune config the
  kernel's early prune keeps for the dtype.

A compile error fails the calling test, and so does a job that produced no variant.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent(
    r"""
    import contextlib, importlib, io, json, re, sys
    import torch
    import triton
    import triton.runtime.autotuner
    from triton.backends import backends
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton._C.libtriton import ir

    # Default argument types, by name; everything else is a `dtype` pointer or an i32.
    FLOATS = {"qk_scale", "scale", "eps"}
    PTR_TYPES = {"mask_ptr": "*u8", "pos_ptr": "*i64", "cu_ptr": "*i32"}
    PTR_TYPES.update({p: "*fp32" for p in (
        "lse_ptr", "delta_ptr", "dbias_ptr", "freq_ptr", "mean_ptr", "rstd_ptr", "dw_part_ptr",
        "db_part_ptr")})
    # Strides that are 1 for the usual layouts: Triton specializes an int argument equal to 1.
    UNIT = {"stride_qd", "stride_kd", "stride_vd", "stride_gd", "stride_od", "stride_ud",
            "stride_dod", "stride_dkd", "stride_dvd", "stride_dqd", "stride_dd", "stride_dgd",
            "stride_biask", "stride_maskn", "stride_ptk", "stride_zc", "stride_mj", "stride_oc"}
    TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    target = GPUTarget("cuda", 90, 32)
    mode, jobs = sys.argv[1], json.loads(sys.argv[2])

    def source(fn, job, constexprs, launch):
        constexprs = dict(constexprs)
        if launch:
            constexprs.update({n: 1 for n in fn.arg_names if n in UNIT and n not in constexprs})
        sig = {}
        for name in fn.arg_names:
            if name in constexprs:
                sig[name] = "constexpr"
            elif name in job["types"]:
                sig[name] = job["types"][name]
            elif name.endswith("_ptr"):
                sig[name] = PTR_TYPES.get(name, "*" + job["dtype"])
            else:
                sig[name] = "fp32" if name in FLOATS else "i32"
        aligned = job["aligned"]
        if aligned is None:  # as at launch for model shapes: pointers and strides
            aligned = [n for n in fn.arg_names if n.endswith("_ptr") or n.startswith("stride_")]
        # The launch-time specialisation of 16-divisible pointers / ints (enables cp.async).
        attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
                 if launch and n in aligned and n not in constexprs}
        return ASTSource(fn, signature=sig, constexprs=constexprs, attrs=attrs)

    def launch_configs(kernel, job):
        if job["num_warps"] is not None:
            return [triton.Config({}, num_warps=job["num_warps"], num_stages=job["num_stages"])]
        if not isinstance(kernel, triton.runtime.autotuner.Autotuner):
            return [triton.Config({}, num_warps=4)]
        configs = kernel.configs
        if kernel.early_config_prune is not None:  # the list a launch at this dtype / D keeps
            probe = torch.empty(0, dtype=TORCH_DTYPES[job["dtype"]])
            configs = kernel.early_config_prune(configs, {"first": probe, **job["constexprs"]})
        return configs

    entries = []
    for index, job in enumerate(jobs):
        kernel = getattr(importlib.import_module(job["module"]), job["kernel"])
        fn = kernel.fn if isinstance(kernel, triton.runtime.autotuner.Autotuner) else kernel
        name = f'{job["kernel"]} {job["dtype"]} {json.dumps(job["constexprs"], sort_keys=True)}'
        if job["types"]:
            name += f' types={json.dumps(job["types"], sort_keys=True)}'
        if mode == "ttir":
            backend = backends["nvidia"].compiler(target)
            opts = backend.parse_options({})
            ctx = ir.context(); ir.load_dialects(ctx); backend.load_dialects(ctx)
            mod = source(fn, job, job["constexprs"], False).make_ir(
                target, opts, backend.get_codegen_implementation(opts), backend.get_module_map(),
                ctx)
            offsets = re.findall(r"tt\.addptr [^:]*: [^,]*, (\S+?)(?: loc|$)", str(mod), flags=re.M)
            entries.append((index, name, offsets))
            continue
        for cfg in launch_configs(kernel, job):
            log = io.StringIO()
            with contextlib.redirect_stdout(log):  # TRITON_DUMP_PTXAS_LOG prints ptxas -v
                k = triton.compile(
                    source(fn, job, {**job["constexprs"], **cfg.kwargs}, True), target=target,
                    options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
            log = log.getvalue()
            regs = [int(x) for x in re.findall(r"Used (\d+) registers", log)]
            assert regs, f"no ptxas report for {name} {cfg}:\n{log}"
            spill = sum(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", log))
            report = {"regs": max(regs), "spill": spill, "shared": k.metadata.shared}
            entries.append((index, f"{name} {cfg}", report))
    print("SM90_REPORT " + json.dumps(entries))
    """
)


@dataclasses.dataclass
class Job:
    """One kernel to compile for sm_90.

    module, kernel: where the `@triton.jit` (optionally `@triton.autotune`d) kernel lives.
    constexprs: constexpr values; a pointer argument set to None is absent (its flag off).
    dtype: "bf16" | "fp16" | "fp32", the element type of the data pointers. Statistics, masks,
        positions and cu_seqlens get their fixed types by name, scalars named like a scale or eps
        are fp32, other arguments i32; `types` ({arg: triton type}) overrides any of these.
    aligned: arguments carrying the launch's 16-divisibility hint (cubin mode); None means every
        pointer and stride, [] compiles unhinted (the path an odd-strided view takes).
    num_warps, num_stages: compile this launch shape only. Without them: every autotune config
        the kernel's early prune keeps for `dtype` (and a `D` constexpr), or 4 warps for a
        plain jit kernel.
    """

    module: str
    kernel: str
    constexprs: dict = dataclasses.field(default_factory=dict)
    dtype: str = "bf16"
    types: dict = dataclasses.field(default_factory=dict)
    aligned: list[str] | None = None
    num_warps: int | None = None
    num_stages: int = 3


def compile_report(jobs: list[Job], mode: str = "cubin", timeout: int = 900) -> dict:
    """Compile `jobs` for sm_90 in an interpreter-free subprocess.

    Returns {variant: [offset types]} in mode "ttir" and {variant: {"regs", "spill",
    "shared"}} in mode "cubin" (spill: bytes of spill stores + loads); a variant names the
    kernel, dtype, constexprs and (cubin) launch config. Asserts that the subprocess succeeded
    (no compile error) and that every job produced at least one variant.

    Example: `compile_report([Job("esmkernels.ops.layernorm.forward", "_layer_norm_fwd_kernel",
    {...}, num_warps=4, num_stages=1)])`.
    """
    if mode not in ("ttir", "cubin"):
        raise ValueError(f"mode must be 'ttir' or 'cubin', got {mode!r}")
    payload = json.dumps([dataclasses.asdict(j) for j in jobs])
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    # The cache would skip ptxas, and with it the register report.
    env.update(TRITON_ALWAYS_COMPILE="1", TRITON_DUMP_PTXAS_LOG="1")
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode, payload],
        capture_output=True, text=True, env=env, timeout=timeout, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    line = next(s for s in proc.stdout.splitlines()[::-1] if s.startswith("SM90_REPORT "))
    entries = json.loads(line.removeprefix("SM90_REPORT "))
    missing = sorted(set(range(len(jobs))) - {index for index, _, _ in entries})
    assert not missing, f"jobs that produced no variant: {[jobs[i] for i in missing]}"
    report = {name: value for _, name, value in entries}
    assert len(report) == len(entries), "two jobs compiled the same variant"
    return report


def addptr_offset_types(jobs: list[Job]) -> dict[str, list[str]]:
    """The type of every pointer offset per job, every stride an i32 ("ttir" mode)."""
    return compile_report(jobs, "ttir", timeout=300)


def assert_all_offsets_int64(report: dict[str, list[str]]) -> None:
    for kernel, offsets in report.items():
        assert offsets, f"{kernel}: no tt.addptr found (the check would be vacuous)"
        narrow = [o for o in offsets if not o.endswith("i64>") and o != "i64"]
        assert not narrow, f"{kernel}: 32-bit pointer offsets {narrow}"


def assert_no_spills(report: dict[str, dict], known: tuple[str, ...] = ()) -> None:
    """Fail on any variant that spills registers. `known`: regexes naming variants known to
    spill; when only those spill, the test is marked xfail (visibly, with the byte counts)
    after every other variant has been checked, and it passes once they stop spilling."""
    assert report, "no kernel compiled"
    spilling = {k: v["spill"] for k, v in report.items() if v["spill"] > 0}
    unknown = {k: b for k, b in spilling.items() if not any(re.search(p, k) for p in known)}
    assert not unknown, f"register spills (bytes): {unknown}"
    if spilling:
        pytest.xfail(f"known register spills on sm_90 (bytes): {spilling}")


def assert_tile_row_offsets_int64(report: dict[str, list[str]], scalars: bool = True) -> None:
    """For kernels that widen the row index only (the rotary kernels): the column index of a
    tile (`+ tl.arange(0, D)[None, :]`, bounded by the head dim) and the index within one
    sequence may stay 32-bit, but every tile's row offsets (the `[BLOCK, 1]` offsets that
    carry batch * stride_b and the packed start) must be int64, and with `scalars` so must
    every scalar offset (the per-(batch, head) statistics bases)."""
    for kernel, offsets in report.items():
        rows = [o for o in offsets if re.fullmatch(r"tensor<\d+x1xi\d+>", o)]
        assert rows, f"{kernel}: no [BLOCK, 1] tile row offset found (the check would be vacuous)"
        narrow = [o for o in rows if not o.endswith("i64>")]
        if scalars:
            narrow += [o for o in offsets if o == "i32"]
        assert not narrow, f"{kernel}: 32-bit row / batch offsets {narrow}"
