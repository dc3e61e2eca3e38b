"""`from_pretrained` wall time and peak RSS: esmkernels vs transformers, on the same files.

    python -m bench.load_time [--cases esm2_650m,esm2_650m_to_bf16,esmfold_v1] [--repeats 3]
                              [--keep DIR]

Not a test (it needs GBs of disk and memory and minutes); `make test` never runs it.

Checkpoints are built once, in a temporary directory (or `--keep DIR`), with random weights:
- `esm2_650m`: the ESM-2 650M shape (33 layers, hidden 1280, 20 heads, intermediate 5120), by
  transformers' `EsmForMaskedLM(config).save_pretrained` (float32, one safetensors file,
  2.6 GB); loaded as `EsmForMaskedLM` in float32 by both (case `esm2_650m`), and in
  bfloat16 (case `esm2_650m_to_bf16`: every tensor is converted, so the file is read).
- `esmfold_v1`: the esmfold_v1 architecture (ESM-2 3B stem, 48 trunk blocks, 3.5B
  parameters), in bfloat16 (7 GB; float32 would be 14 GB, too much for a shared 24 GiB
  machine), written shard by shard in transformers' sharded-safetensors layout with random
  values: building the whole model in memory to save it would not fit beside the
  measurements. `fp16_esm` is off so that both load every tensor in bfloat16. Loaded as
  `EsmForProteinFolding` in bfloat16 by both (case `esmfold_v1`).

Each measurement is one fresh subprocess that imports everything first, resets its peak RSS
(`/proc/self/clear_refs`), then times `from_pretrained` alone and reads VmHWM: the peak RSS
growth is VmHWM after the load minus VmRSS before it. The two sides alternate, `--repeats`
times each, and the median is reported, with the ratios ours / transformers, the weights' bytes
in the loaded dtype, the RSS after touching every parameter once (what the model costs once it
is used: the weights are memory-mapped views on both sides), and `os.getloadavg()` before and
after (the machine is shared). Targets (issue 20): time ratio <= 1.5, peak RSS growth <= 1.2x
the weights' bytes. Results go to
`bench/results/load-time-<date>-<device>-<commit>.json`.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIDES = ("transformers", "ours")
MODELS = ("esm2_650m", "esmfold_v1")
# case -> (checkpoint, dtype loaded in)
CASES = {
    "esm2_650m": ("esm2_650m", "float32"),
    "esm2_650m_to_bf16": ("esm2_650m", "bfloat16"),
    "esmfold_v1": ("esmfold_v1", "bfloat16"),
}
ESM2_650M = dict(
    vocab_size=33, pad_token_id=1, mask_token_id=32, hidden_size=1280, num_hidden_layers=33,
    num_attention_heads=20, intermediate_size=5120, max_position_embeddings=1026,
    position_embedding_type="rotary", token_dropout=True, emb_layer_norm_before=False,
    layer_norm_eps=1e-5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
)  # fmt: skip


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


# ---------------------------------------------------------------------------------------------
# Building the checkpoints
# ---------------------------------------------------------------------------------------------


def build_esm2_650m(directory: Path) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.EsmForMaskedLM(transformers.EsmConfig(**ESM2_650M))
    model.save_pretrained(directory)


def esmfold_v1_config():
    from esmkernels.core.configuration import ESM_VOCAB, EsmConfig
    from esmkernels.core.convert_esmfold import ESM2_3B_STEM

    return EsmConfig(
        **ESM2_3B_STEM,
        vocab_list=list(ESM_VOCAB),
        is_folding_model=True,
        esmfold_config=dict(fp16_esm=False),  # trunk / structure module: esmfold_v1 defaults
        architectures=["EsmForProteinFolding"],
        torch_dtype="bfloat16",
    )


def build_esmfold_v1(directory: Path, shard_bytes: int = 2 << 30) -> None:
    """Random bf16 weights in shards of about `shard_bytes`, keys and shapes from our model
    built on the meta device (they are transformers' keys); the index is transformers'."""
    import torch
    from safetensors.torch import save_file

    from esmkernels.core.materialize import empty_parameters
    from esmkernels.reference.esmfold.modeling import EsmForProteinFolding

    config = esmfold_v1_config()
    with empty_parameters():
        model = EsmForProteinFolding(config)
    state = model.state_dict()
    g = torch.Generator().manual_seed(0)
    directory.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, like in state.items():
        if like.is_meta:
            value = (torch.randn(like.shape, generator=g) * 0.02).to(torch.bfloat16)
        else:
            value = like.clone()  # buffers (af2_to_esm, inv_freq) as the constructor made them
        if size and size + value.numel() * value.element_size() > shard_bytes:
            _write_shard(directory, shards[-1], len(shards), save_file)
            shards.append({})
            size = 0
        shards[-1][key] = value
        size += value.numel() * value.element_size()
    _write_shard(directory, shards[-1], len(shards), save_file)
    n = len(shards)
    weight_map, total = {}, 0
    for i in range(1, n + 1):
        old = directory / f"part-{i}.safetensors"
        new = directory / f"model-{i:05d}-of-{n:05d}.safetensors"
        old.rename(new)
        from safetensors import safe_open

        with safe_open(str(new), "pt") as fh:
            for key in fh.keys():
                weight_map[key] = new.name
                t = fh.get_slice(key)
                numel = 1
                for d in t.get_shape():
                    numel *= d
                total += numel * 2
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    config.save_pretrained(directory)


def _write_shard(directory: Path, tensors: dict, number: int, save_file) -> None:
    save_file(tensors, str(directory / f"part-{number}.safetensors"), metadata={"format": "pt"})
    tensors.clear()


# ---------------------------------------------------------------------------------------------
# One measurement (runs in its own process)
# ---------------------------------------------------------------------------------------------


def measure(side: str, case: str, directory: str, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    model, dtype_name = CASES[case]
    dtype = getattr(torch, dtype_name)
    if side == "transformers":
        import transformers

        cls = (
            transformers.EsmForMaskedLM
            if model == "esm2_650m"
            else transformers.EsmForProteinFolding
        )
        kwargs = dict(dtype=dtype)
    else:
        import esmkernels

        cls = esmkernels.EsmForMaskedLM if model == "esm2_650m" else esmkernels.EsmForProteinFolding
        kwargs = dict(dtype=dtype)
    rss_before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    start = time.perf_counter()
    loaded = cls.from_pretrained(directory, **kwargs)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    params = list(loaded.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    dtypes = sorted({str(p.dtype) for p in params})
    with torch.no_grad():
        for p in params:  # touch every weight once: what the model costs once it is used
            p.float().sum()
    rss_touched = _status_kib("VmRSS")
    return dict(
        side=side,
        case=case,
        seconds=seconds,
        peak_rss_growth_bytes=(peak - rss_before) * 1024,
        rss_after_touching_weights_growth_bytes=(rss_touched - rss_before) * 1024,
        weight_bytes=weight_bytes,
        parameters=sum(p.numel() for p in params),
        param_dtypes=dtypes,
    )


def _run(side: str, case: str, directory: Path, threads: int) -> dict:
    cmd = [sys.executable, "-m", "bench.load_time", "--measure", side, "--cases", case,
           "--dir", str(directory), "--threads", str(threads)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
    if proc.returncode != 0:
        return dict(side=side, case=case, error=proc.stderr[-3000:], returncode=proc.returncode)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _build(model: str, directory: Path) -> None:
    cmd = [sys.executable, "-m", "bench.load_time", "--build", model, "--dir", str(directory)]
    subprocess.run(cmd, check=True, cwd=HERE.parent)  # its own process: its memory goes back


def run_case(case: str, root: Path, repeats: int, threads: int) -> dict:
    model, dtype = CASES[case]
    directory = root / model
    if not directory.is_dir():
        start = time.perf_counter()
        _build(model, directory)
        print(f"{model}: built in {time.perf_counter() - start:.0f} s at {directory}", flush=True)
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    for i in range(repeats):
        for side in SIDES if i % 2 == 0 else SIDES[::-1]:  # alternate who goes first
            result = _run(side, case, directory, threads)
            runs[side].append(result)
            shown = (
                f"{result['seconds']:.2f} s, peak +{result['peak_rss_growth_bytes'] / 2**20:.0f} MiB"
                if "error" not in result
                else "error: " + result["error"].strip().splitlines()[-1]
            )
            print(f"  {case} {side:>12} #{i + 1}: {shown}", flush=True)
    load_after = os.getloadavg()
    row: dict = dict(case=case, checkpoint=model, dtype=dtype, repeats=repeats, runs=runs,
                     load_avg_before=load_before, load_avg_after=load_after)  # fmt: skip
    ok = {side: [r for r in rs if "error" not in r] for side, rs in runs.items()}
    if all(ok.values()):
        for side in SIDES:
            row[side] = dict(
                seconds=statistics.median(r["seconds"] for r in ok[side]),
                peak_rss_growth_bytes=statistics.median(r["peak_rss_growth_bytes"] for r in ok[side]),
                rss_after_touching_weights_growth_bytes=statistics.median(
                    r["rss_after_touching_weights_growth_bytes"] for r in ok[side]
                ),
            )  # fmt: skip
        weights = ok["ours"][0]["weight_bytes"]
        row["weight_bytes"] = weights
        row["time_ratio"] = row["ours"]["seconds"] / row["transformers"]["seconds"]
        row["ours_peak_rss_growth_over_weights"] = row["ours"]["peak_rss_growth_bytes"] / weights
        row["transformers_peak_rss_growth_over_weights"] = (
            row["transformers"]["peak_rss_growth_bytes"] / weights
        )
        row["targets_met"] = dict(
            time_ratio_le_1_5=row["time_ratio"] <= 1.5,
            peak_rss_le_1_2x_weights=row["ours_peak_rss_growth_over_weights"] <= 1.2,
        )
    return row


def _table(rows: list[dict]) -> str:
    head = ("| case | dtype | weights | transformers s | ours s | time ratio | transformers peak RSS "
            "growth | ours peak RSS growth (x weights) | RSS once weights are touched, "
            "transformers / ours | load avg before -> after |")  # fmt: skip
    lines = [head, "|" + " --- |" * 10]
    gib = 2**30
    for r in rows:
        if "time_ratio" not in r:
            lines.append(f"| {r['case']} | {r['dtype']} | failed | | | | | | | |")
            continue
        t, o = r["transformers"], r["ours"]
        lines.append(
            f"| {r['case']} | {r['dtype']} | {r['weight_bytes'] / gib:.2f} GiB | "
            f"{t['seconds']:.2f} | {o['seconds']:.2f} | {r['time_ratio']:.2f} | "
            f"{t['peak_rss_growth_bytes'] / gib:.2f} GiB | {o['peak_rss_growth_bytes'] / gib:.2f} GiB "
            f"({r['ours_peak_rss_growth_over_weights']:.2f}x) | "
            f"{t['rss_after_touching_weights_growth_bytes'] / gib:.2f} / "
            f"{o['rss_after_touching_weights_growth_bytes'] / gib:.2f} GiB | "
            f"{r['load_avg_before'][0]:.2f} -> {r['load_avg_after'][0]:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--keep", help="build (or reuse) the checkpoints here instead of a temp dir")
    p.add_argument("--measure", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--build", choices=MODELS, help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        p.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    if args.build:
        (build_esm2_650m if args.build == "esm2_650m" else build_esmfold_v1)(Path(args.dir))
        return 0
    if args.measure:
        print(json.dumps(measure(args.measure, cases[0], args.dir, args.threads)))
        return 0

    from esmkernels.benchmarks.environment import device_slug, git_commit, versions

    with tempfile.TemporaryDirectory(prefix="esmkernels-load-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        rows = [run_case(c, root, args.repeats, args.threads) for c in cases]
    print(_table(rows))
    commit = git_commit()
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    out = HERE / "results" / f"load-time-{stamp}-{device_slug('cpu')}-{commit[:10]}.json"
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    out.write_text(json.dumps(dict(
        machine=dict(platform=platform.platform(), processor=platform.processor(),
                     cpus=os.cpu_count(), threads=args.threads, uptime_after=uptime),
        versions=versions(), commit=commit, date=stamp, results=rows, table=_table(rows),
    ), indent=1))  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
