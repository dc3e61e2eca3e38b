"""Run a suite: every (case, length, provider, mode) timed the same way, one record each.

A record is a plain dict (JSON-ready): suite, case, provider, mode, length, dtype, device,
status ("ok" | "oom" | "unavailable: why" | "error: ..." | "not run: time budget"), ms, reps,
peak_mb, flops, bytes, tflops, tbps, tokens, tokens_per_s, meta. `on_record` sees each record
as soon as it exists (the GPU session writes its files from it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from esmkernels.benchmarks import environment, fold, kernels, lm, lm_cpu, memory, report
from esmkernels.benchmarks.timing import measure
from esmkernels.benchmarks.workloads import MODES, Unavailable
from esmkernels.core.memory import free_memory, is_oom

SUITES = ("kernels", "lm", "fold", "memory")
SIZE_NAMES = ("real", "cpu", "tiny")  # every suite has these; fold and memory also small, wide
PROVIDERS = ("reference", "torch", "triton", "hf")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_MODULES = {"kernels": kernels, "lm": lm, "fold": fold, "memory": memory}


def suite_cases(suite: str) -> tuple[str, ...]:
    return _MODULES[suite].CASES


def suite_sizes(suite: str) -> dict:
    """The suite's sizes by name (memory folds at the fold suite's sizes)."""
    return {"kernels": kernels.SIZES, "lm": lm.SIZES}.get(suite, fold.SIZES)


def default_size(device: torch.device | str) -> str:
    """What `size="auto"` means: the models' real sizes on CUDA; on a CPU "cpu", sizes chosen
    to show how time grows with L within about a minute per suite ("tiny" is for tests)."""
    return "real" if torch.device(device).type == "cuda" else "cpu"


def describe_size(suite: str, size: str) -> str:
    """A short line naming the shapes a suite runs at `size` (the plot titles say it)."""
    if suite == "kernels":
        s = kernels.SIZES[size]
        return (f"hidden {s.hidden}, {s.heads}x{s.head_dim} heads; trunk c_z {s.c_z}, "
                f"{s.tri_heads}x{s.tri_head_dim} heads")  # fmt: skip
    if suite == "lm":
        s = lm.SIZES[size]
        hidden, layers, _, _ = lm.SHAPES[s.shape]
        return f"{_model_name(s.shape)} (hidden {hidden}, {layers} layers), random weights"
    s = fold.SIZES[size]
    blocks = s.trunk.get("num_blocks", 48)
    c_z = s.trunk.get("pairwise_state_dim", 128)
    return f"ESMFold, {_model_name(s.stem)} stem, {blocks} trunk blocks, c_z {c_z}, random weights"


def _model_name(shape: str) -> str:
    return shape.replace("esm2_", "ESM-2 ") if shape.startswith("esm2_") else f"{shape} ESM-2"


def case_descriptions(suite: str, size: str, num_recycles: int = 0) -> dict[str, str]:
    """{case: what one timed call computes}, for the plots' panel titles."""
    if suite == "kernels":
        k = kernels.SIZES[size]
        # describe() starts with the case's name, which the panel title already shows
        out = {case: kernels.describe(case, size).split(" ", 1)[-1] for case in kernels.CASES}
        out["layer_norm"] = f"{k.ln_tokens} x {k.hidden} per call, whatever L"
        out["rotary_attention"] = f"{k.heads}x{k.head_dim} heads, {k.attn_tokens}/L sequences of L"
        out["rotary_attention_varlen"] = f"{k.varlen_seqs} of up to L: kernel packed, peers padded"
        for case in ("trimul_out", "trimul_in"):
            out[case] = f"z [1, L, L, {k.c_z}]"
        for case in ("tri_att_start", "tri_att_end"):
            out[case] = f"z [1, L, L, {k.c_z}], {k.tri_heads}x{k.tri_head_dim} heads"
        return out
    if suite == "lm":
        s = lm.SIZES[size]
        return {
            "uniform": f"{s.tokens} tokens: {s.tokens}/L sequences of L",
            "skewed": f"{s.skewed_seqs} sequences of up to L residues, padded to L",
        }
    what = f"1 sequence, {num_recycles} recycles"
    return {"fold": what, "fold_peak": what}


def default_lengths(suite: str, case: str, size: str) -> tuple[int, ...]:
    if suite == "kernels":
        return kernels.default_lengths(case, size)
    if suite == "lm":
        return lm.SIZES[size].lengths
    return fold.SIZES[size].lengths


def _record(suite, case, provider, mode, length, dtype, device) -> dict:
    return {
        "suite": suite, "case": case, "provider": provider, "mode": mode, "length": length,
        "dtype": str(dtype).removeprefix("torch."), "device": device.type, "status": None,
        "ms": None, "reps": 0, "peak_mb": None, "flops": None, "bytes": None, "tflops": None,
        "tbps": None, "tokens": None, "tokens_per_s": None, "meta": {},
    }  # fmt: skip


def _fill(record: dict, work, mode: str, timing) -> None:
    flops, nbytes = work.work(mode)
    record.update(status=timing.status, ms=timing.ms, reps=timing.reps, peak_mb=timing.peak_mb)
    record.update(flops=flops, bytes=nbytes, tokens=work.tokens, meta=dict(work.meta))
    if timing.ms:
        seconds = timing.ms / 1e3
        record["tflops"] = None if flops is None else flops / seconds / 1e12
        record["tbps"] = None if nbytes is None else nbytes / seconds / 1e12
        record["tokens_per_s"] = None if work.tokens is None else work.tokens / seconds
    if "tracked_peak_mb" in work.meta:  # the memory suite: activations, comparable to the model
        record["peak_mb"] = work.meta["tracked_peak_mb"]
        if record["peak_mb"]:
            record["meta"]["predicted_over_measured"] = (
                work.meta["predicted_mb"] / record["peak_mb"]
            )


def check_arguments(suite, providers, cases, modes, size) -> None:
    """ValueError naming the first unknown suite, provider, case, mode or size."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose from {SUITES}")
    bad = [p for p in providers if p not in PROVIDERS]
    if bad:
        raise ValueError(f"unknown providers {bad}; choose from {PROVIDERS}")
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"unknown modes {bad}; choose from {MODES}")
    if size not in suite_sizes(suite):
        raise ValueError(f"unknown {suite} size {size!r}; choose from {tuple(suite_sizes(suite))}")
    bad = [c for c in cases or () if c not in suite_cases(suite)]
    if bad:
        raise ValueError(f"unknown {suite} cases {bad}; choose from {suite_cases(suite)}")


def run_suite(
    suite: str,
    *,
    providers: Sequence[str] = PROVIDERS,
    lengths: Sequence[int] | None = None,
    cases: Sequence[str] | None = None,
    modes: Sequence[str] = ("fwd",),
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    size: str = "tiny",
    max_time: float = 1.0,
    num_recycles: int = 0,
    chunk_size: int | None = None,
    deadline: float | None = None,
    on_record: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Records of one suite (see the module docstring). `deadline`: time.monotonic() after
    which nothing new starts (the rest is recorded as not run)."""
    check_arguments(suite, providers, cases, modes, size)
    cases = tuple(suite_cases(suite) if cases is None else cases)
    if suite != "kernels":
        modes = ("fwd",)  # whole models: inference
    device = torch.device(device)
    records: list[dict] = []

    def emit(record: dict) -> None:
        records.append(record)
        if on_record is not None:
            on_record(record)

    if suite in ("lm",):
        models = lm.Models(lm.SIZES[size].shape, device, dtype)
    elif suite in ("fold", "memory"):
        models = fold.Models(size, device, dtype, chunk_size)
    else:
        models = None

    def plan():
        if models is None:  # kernels: inputs per length, cheap to rebuild
            for case in cases:
                for length in lengths or default_lengths(suite, case, size):
                    for provider in providers:
                        yield case, provider, length
        else:  # one model per provider, built once
            for provider in providers:
                for case in cases:
                    for length in lengths or default_lengths(suite, case, size):
                        yield case, provider, length

    for case, provider, length in plan():
        work = None
        for mode in modes:
            record = _record(suite, case, provider, mode, length, dtype, device)
            if deadline is not None and time.monotonic() >= deadline:
                record["status"] = "not run: time budget"
                emit(record)
                continue
            try:
                if work is None:
                    work = _build(suite, case, provider, length, models, size, device, dtype,
                                  num_recycles)  # fmt: skip
                # At least 3 timed calls: one call's time on a busy CPU is a scheduler slice.
                # The memory suite needs one tracked call after the warm-up (its times
                # include the tracker's overhead and are not read).
                reps = dict(max_reps=1) if suite == "memory" else dict(min_reps=3)
                timing = measure(work.callable_for(mode), device, max_time=max_time, **reps)
                _fill(record, work, mode, timing)
            except Unavailable as e:
                record["status"] = f"unavailable: {e}"
                work = None
            except Exception as e:  # noqa: BLE001 - one broken case must not end the run
                record["status"] = (
                    "oom" if is_oom(e) else f"error: {type(e).__name__}: {str(e)[:300]}"
                )
                free_memory(device)
            emit(record)
            if record["status"].startswith("unavailable"):
                # the same reason holds for the other modes
                for other in modes[modes.index(mode) + 1 :]:
                    emit({**record, "mode": other})
                break
        del work
    free_memory(device)
    return records


def _build(suite, case, provider, length, models, size, device, dtype, num_recycles):
    if suite == "kernels":
        return kernels.build(case, provider, length, size=size, device=device, dtype=dtype)
    if suite == "lm":
        return lm.build(case, provider, length, models=models, size=size)
    if suite == "fold":
        return fold.build(case, provider, length, models=models, num_recycles=num_recycles)
    return memory.build(case, provider, length, models=models, num_recycles=num_recycles)


# ---------------------------------------------------------------------------------------------
# A benchmark run: suites, plots, JSON (what `esmkernels bench` calls)
# ---------------------------------------------------------------------------------------------


def suite_dtype(suite: str, device: torch.device, name: str = "auto") -> torch.dtype:
    """`name` ("bfloat16", ...) or, for "auto", bfloat16 for kernels and lm on CUDA, else
    float32 (fold's trunk runs in float32, as ESMFold's)."""
    if name != "auto":
        return DTYPES[name]
    return torch.bfloat16 if device.type == "cuda" and suite in ("kernels", "lm") else torch.float32


@dataclass
class BenchRun:
    """What `run_benchmarks` did: the records, the environment, what was left out and why,
    the lm suite's CPU inference table (`lm_cpu.run_table`, on a CPU only), and the files
    written (bench.json first, then one PNG per suite and the table's markdown)."""

    environment: dict
    size: str
    records: list[dict]
    left_out: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    cpu_table: dict | None = None

    @property
    def failed(self) -> list[dict]:
        """Records that failed, and the CPU table's failed cases in the same form."""
        out = [r for r in self.records if r["status"].startswith("error")]
        for row in (self.cpu_table or {}).get("rows", ()):
            if row["status"].startswith("error"):
                case = f"cpu table {row['shape']} {row['case']} x {row['batch']}"
                out.append({"suite": "lm", "case": case, "provider": "all",
                            "length": row["L"], "status": row["status"]})  # fmt: skip
        return out

    def lines(self, peers: Sequence[str]) -> list[str]:
        """The report a terminal shows: environment, table, what was left out, files, errors."""
        env = self.environment
        out = [
            f"device: {env['device']} | torch {env['torch']} | triton {env['triton']} | "
            f"transformers {env['transformers']} | commit {env['commit'][:10]} | size {self.size}",
            report.table(self.records, peers),
        ]
        if self.cpu_table is not None:
            out += ["", lm_cpu.markdown(self.cpu_table), ""]
        out += [f"left out: {line}" for line in self.left_out]
        out += [f"wrote {path}" for path in self.written]
        for r in self.failed:
            where = f"{r['suite']}/{r['case']}/{r['provider']} L={r['length']}"
            out.append(f"error: {where}: {r['status']}")
        return out


def _cpu_table(size: str, providers: Sequence[str], kwargs: dict, notes: list[str]) -> dict:
    """The lm suite's CPU inference table at `size`, kept to the run's lengths and cases."""
    table = lm_cpu.run_table(
        size,
        lengths=kwargs.get("lengths"),
        cases=kwargs.get("cases"),
        with_hf="hf" in providers,
        deadline=kwargs.get("deadline"),
    )
    if table["meta"]["transformers_missing"]:
        notes.append(f"lm CPU table: {table['meta']['transformers_missing']}")
    if not table["rows"]:
        notes.append(f"lm CPU table: no {size} case at the lengths / cases asked for")
    return table


def run_benchmarks(
    suites: Sequence[str],
    *,
    out: str | Path,
    device: torch.device | str,
    providers: Sequence[str] = PROVIDERS,
    size: str = "auto",
    dtype: str = "auto",
    plot: bool = True,
    arguments: dict | None = None,
    **kwargs,
) -> BenchRun:
    """Run `suites` in order into `out`: every record (`run_suite`, with `kwargs`: lengths,
    cases, modes, max_time, num_recycles, chunk_size), one PNG per suite when `plot` and
    matplotlib allow, and `bench.json` (environment, size, `arguments`, records, left out). On
    a CPU the lm suite adds its inference table (`lm_cpu.run_table` at `size`, narrowed by the
    lengths and cases; `lm_cpu.md`, and `lm_cpu` in bench.json).

    Args:
        size: "real", "cpu", "tiny" or "auto" (`default_size`: real on CUDA, cpu on a CPU).
        dtype: "auto" (see `suite_dtype`) or a name of `DTYPES`.

    Raises:
        ValueError: an unknown suite, provider, case, mode or size, before anything runs.
    """
    device = torch.device(device)
    out = Path(out)
    size = size if size != "auto" else default_size(device)
    for suite in suites:
        check_arguments(suite, providers, kwargs.get("cases"), kwargs.get("modes", ()), size)
    env = {**environment.environment(device), "torch_threads": torch.get_num_threads()}
    run = BenchRun(env, size, [])
    notes: list[str] = []
    for suite in suites:
        found = run_suite(
            suite,
            providers=providers,
            dtype=suite_dtype(suite, device, dtype),
            device=device,
            size=size,
            **kwargs,
        )
        run.records += found
        if suite == "lm" and device.type == "cpu":
            run.cpu_table = _cpu_table(size, providers, kwargs, notes)
            run.written.append(lm_cpu.write_markdown(run.cpu_table, out / lm_cpu.MARKDOWN_NAME))
        if not plot:
            continue
        threads = env["torch_threads"]
        title = (
            f"esmkernels bench {suite}: {describe_size(suite, size)}\n{env['device']}, "
            f"{threads} torch thread{'s' * (threads != 1)}, commit {env['commit'][:10]}"
        )
        png = report.plot(
            found,
            out / f"{suite}.png",
            title,
            descriptions=case_descriptions(suite, size, kwargs.get("num_recycles", 0)),
            notes=[f"not shown: {line}" for line in report.left_out(found)],
        )
        if png is not None:
            run.written.append(png)
        elif not report.has("matplotlib"):
            notes.append("plots: matplotlib is not installed (pip install 'esmkernels[plot]')")
        else:
            notes.append(f"plots: {suite}: nothing finished to plot")
    run.left_out = report.left_out(run.records) + notes
    payload = {
        "environment": env,
        "size": size,
        "arguments": arguments or {},
        "records": run.records,
        "left_out": run.left_out,
    }
    if run.cpu_table is not None:
        payload["lm_cpu"] = run.cpu_table
    run.written.insert(0, report.write_json(out / report.JSON_NAME, payload))
    return run
