"""Recorded autotune winners, per (GPU name, kernel, autotune key), shipped with the package.

A cold autotune compiles every listed config of every kernel at every new shape bucket: minutes
of a short GPU window. So the winners of a GPU run are recorded in `ops/data/tuned_configs.json`
(`bench/gpu_session.sh` writes them; `bench/collect_gpu_run.py` merges them in), and:

- on a GPU whose name is recorded, a launch whose autotune key is recorded runs that config
  directly: `tuning()`'s early prune returns just it, so Triton compiles only that one. What
  the autotuner does with a single config left depends on the Triton release
  (`SKIPS_SINGLE_CONFIG_BENCHMARK_FROM`): Triton >= 3.8 skips benchmarking it; Triton 3.6 and 3.7
  (the GPU image has 3.6) benchmark it alone, once per key (one `do_bench`, a fraction of a
  second), and keep the result in the disk cache below like any autotune result, never
  sweeping the kernel's list;
- elsewhere (another GPU, a shape bucket not recorded, or a recorded config that is no longer in
  the kernel's list) the kernel autotunes as usual, once per process, and Triton stores the
  winner on disk (`cache_results`, Triton >= 3.3: `<fn>.autotune.json` in the Triton cache,
  `TRITON_CACHE_DIR`, default `~/.triton/cache`, keyed on Triton, the GPU target, the kernel
  source, the key and the config list), so later processes skip the sweep too.

Layout of the JSON:

    {"format": 1,
     "gpus": {"NVIDIA H100 80GB HBM3": {
        "recorded": {"commit": ..., "triton": ..., "torch": ..., "date": ...},
        "kernels": {"_rotary_attention_fwd_kernel": [
            {"key": [1024, 64, true, false, "torch.bfloat16", ...],
             "config": {"kwargs": {"BLOCK_M": 128, "BLOCK_N": 64},
                        "num_warps": 4, "num_stages": 3}}]}}}}

`key` is Triton's autotune cache key: the values of the kernel's `key` arguments, then the dtype
of every tensor argument (shape buckets are the rounded key arguments, e.g. `SEQ_BUCKET`).

Environment: `ESMKERNELS_TUNED_CONFIGS=/path.json` reads another file of this layout;
`ESMKERNELS_TUNED_CONFIGS=off` ignores recorded configs (always autotune; the GPU session uses
it to re-measure). Nothing here touches CUDA at import: the GPU name is read at the first launch
that misses Triton's in-memory cache.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from esmkernels.ops._compat import parse_version

ENV_VAR = "ESMKERNELS_TUNED_CONFIGS"
# The first Triton release whose autotuner runs a launch with one config left after the prune
# without benchmarking it (checked in Triton's `Autotuner.run`: 3.8.0 added the check, 3.7.1
# and 3.6.0 lack it; tests/test_recorded_configs.py checks the installed release's behaviour).
SKIPS_SINGLE_CONFIG_BENCHMARK_FROM = (3, 8)
FORMAT = 1
DEFAULT_PATH = Path(__file__).resolve().parent / "data" / "tuned_configs.json"
_OFF = ("0", "off", "false", "no", "none")


def skips_single_config_benchmark(triton_version: str | None = None) -> bool:
    """Whether Triton `triton_version` (default: the installed one) runs a single remaining
    autotune config without benchmarking it."""
    if triton_version is None:
        import triton

        triton_version = triton.__version__
    return parse_version(triton_version) >= SKIPS_SINGLE_CONFIG_BENCHMARK_FROM


def table_path() -> Path | None:
    """The recorded-config file in effect, or None when recorded configs are switched off."""
    value = os.environ.get(ENV_VAR, "").strip()
    if value.lower() in _OFF:
        return None
    return Path(value) if value else DEFAULT_PATH


def _check_table(table: Any, where: str) -> dict:
    if not isinstance(table, dict) or table.get("format") != FORMAT:
        raise ValueError(f"{where}: not a tuned-config table of format {FORMAT}")
    gpus = table.get("gpus")
    if not isinstance(gpus, dict):
        raise ValueError(f"{where}: 'gpus' must be an object of GPU name -> entry")
    for gpu, entry in gpus.items():
        kernels = entry.get("kernels") if isinstance(entry, dict) else None
        if not isinstance(kernels, dict):
            raise ValueError(f"{where}: gpus[{gpu!r}] has no 'kernels' object")
        for kernel, rows in kernels.items():
            for i, row in enumerate(rows):
                ok = (
                    isinstance(row, dict)
                    and isinstance(row.get("key"), list)
                    and isinstance(row.get("config"), dict)
                    and isinstance(row["config"].get("kwargs"), dict)
                )
                if not ok:
                    raise ValueError(
                        f"{where}: gpus[{gpu!r}].kernels[{kernel!r}][{i}] needs 'key' (list) and "
                        f"'config' ({{'kwargs', 'num_warps', 'num_stages'}})"
                    )
    return table


def empty_table() -> dict:
    return {"format": FORMAT, "gpus": {}}


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int) -> dict:
    try:
        table = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None
    return _index(_check_table(table, path))


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, list | tuple) else value


def _index(table: dict) -> dict:
    """{gpu: {kernel: {key tuple: config dict}}} for lookups."""
    return {
        gpu: {
            kernel: {_freeze(row["key"]): row["config"] for row in rows}
            for kernel, rows in entry["kernels"].items()
        }
        for gpu, entry in table["gpus"].items()
    }


def load_table(path: str | os.PathLike | None = None) -> dict:
    """The indexed table {gpu: {kernel: {key: config}}} of `path` (default: `table_path()`);
    empty when switched off or when the default file is absent. A given path must exist."""
    if path is None:
        path = table_path()
        if path is None or (path == DEFAULT_PATH and not path.exists()):
            return {}
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{ENV_VAR}: {path} does not exist")
    return _load_cached(str(path), path.stat().st_mtime_ns)


def lookup(gpu: str, kernel: str, key: tuple, table: dict | None = None) -> dict | None:
    """The recorded config dict for (gpu, kernel, key), or None."""
    table = load_table() if table is None else table
    return table.get(gpu, {}).get(kernel, {}).get(_freeze(list(key)))


def config_dict(config) -> dict:
    """JSON form of a triton.Config."""
    return {
        "kwargs": dict(config.kwargs),
        "num_warps": config.num_warps,
        "num_stages": config.num_stages,
    }


def match_config(configs, recorded: dict):
    """The config in `configs` equal to the recorded one (block sizes, warps, stages), or None:
    a recorded config that the kernel no longer lists is not used."""
    for c in configs:
        if (
            dict(c.kwargs) == recorded["kwargs"]
            and c.num_warps == recorded.get("num_warps", c.num_warps)
            and c.num_stages == recorded.get("num_stages", c.num_stages)
        ):
            return c
    return None


def autotune_key(autotuner, named_args: dict, kwargs: dict) -> tuple:
    """Triton's autotune cache key for a launch (the `Autotuner.run` rule): the key arguments'
    values, then the dtype of every tensor argument, in argument order."""
    args = {k: v for k, v in {**named_args, **kwargs}.items() if k in autotuner.arg_names}
    key = [args[k] for k in autotuner.keys if k in args]
    key += [str(v.dtype) for v in args.values() if hasattr(v, "dtype")]
    return tuple(key)


def autotuners() -> dict[str, Any]:
    """{kernel name: Autotuner} of every autotuned kernel in the imported esmkernels.ops modules."""
    from triton.runtime.autotuner import Autotuner

    found = {}
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("esmkernels.ops"):
            continue
        for obj in list(vars(module).values()):
            if isinstance(obj, Autotuner):
                found[obj.base_fn.__name__] = obj
    return found


def _owner(configs) -> Any | None:
    """The Autotuner whose config list is `configs` (Triton keeps the list it was given)."""
    owners = [a for a in autotuners().values() if a.configs is configs]
    return owners[0] if len(owners) == 1 else None


@functools.lru_cache(maxsize=16)
def _cuda_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def launch_gpu(tensor: torch.Tensor) -> str | None:
    """Name of the GPU a launch runs on (as `torch.cuda.get_device_name`), None off CUDA."""
    if tensor.device.type != "cuda":
        return None
    return _cuda_name(tensor.device.index if tensor.device.index is not None else 0)


def recorded_choice(configs, named_args: dict, kwargs: dict, kept: list) -> list:
    """Early-prune hook of `tuning()`: [the recorded config] when this GPU and launch key are
    recorded and the config is among `kept` (the dtype's list); otherwise `kept` unchanged."""
    first = next((v for v in named_args.values() if isinstance(v, torch.Tensor)), None)
    gpu = None if first is None else launch_gpu(first)
    if gpu is None:
        return kept
    table = load_table()
    if not table:
        return kept
    per_gpu = table.get(gpu)
    if not per_gpu:
        return kept
    owner = _owner(configs)
    if owner is None or owner.base_fn.__name__ not in per_gpu:
        return kept
    recorded = per_gpu[owner.base_fn.__name__].get(autotune_key(owner, named_args, kwargs))
    chosen = match_config(kept, recorded) if recorded is not None else None
    return kept if chosen is None else [chosen]


def snapshot() -> dict[str, list]:
    """The winners Triton's autotuners hold in this process: {kernel: [{key, config}]} (sorted,
    for stable files), for `merge`."""
    kernels = {}
    for name, tuner in sorted(autotuners().items()):
        rows = [
            {"key": list(key), "config": config_dict(config)} for key, config in tuner.cache.items()
        ]
        if rows:
            kernels[name] = sorted(rows, key=lambda r: json.dumps(r["key"]))
    return kernels


def merge(table: dict, gpu: str, kernels: dict[str, list], recorded: dict) -> dict:
    """A new table: `table` with `kernels` rows for `gpu` added (a new row for an existing key
    replaces it). `recorded` (commit, versions, date) describes the run."""
    table = _check_table(json.loads(json.dumps(table)), "table")
    entry = table["gpus"].setdefault(gpu, {"recorded": {}, "kernels": {}})
    entry["recorded"] = dict(recorded)
    for kernel, rows in kernels.items():
        by_key = {json.dumps(r["key"]): r for r in entry["kernels"].get(kernel, [])}
        by_key.update({json.dumps(r["key"]): r for r in rows})
        entry["kernels"][kernel] = [by_key[k] for k in sorted(by_key)]
    table["gpus"] = dict(sorted(table["gpus"].items()))
    return table


def _disk_cache_args() -> dict:
    """`cache_results=True` where this Triton's autotune takes it (>= 3.3), else nothing."""
    import inspect

    import triton

    return (
        {"cache_results": True}
        if "cache_results" in inspect.signature(triton.autotune).parameters
        else {}
    )


# Extra `triton.autotune` arguments of every `tuning()` table: keep autotune winners on disk.
AUTOTUNE_DISK_CACHE = _disk_cache_args()
