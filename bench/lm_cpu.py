"""CPU language-model inference, side by side in one process: transformers fp32 (SDPA) / ours
fp32 / ours bf16 / ours int8, at the ESM-2 35M and 150M shapes (issue 20).

    .venv/bin/python -m bench.lm_cpu [--repeats 3] [--threads 1] [--quick]

Cases reuse `esmkernels.benchmarks.lm` (`config_kwargs`, `make_batch`) and
`esmkernels.benchmarks.kernels.skewed_lengths`: `skewed` is a batch of 8 sequences of 50..L-2
residues (the first L-2) padded to L; `uniform` is B sequences of L-2 residues. Every provider
has the same random weights (seeded). Timing: inference mode, the providers of a case run
alternately, one forward each per round, `--repeats` rounds after a warm-up; the median is
reported, with the load average before and after, since the machine is shared.

Columns: time ratio to transformers fp32 (and, for bf16, to transformers bf16), residues / s,
and beside int8 its quality against ours fp32 on the same batch: the lowest per-sequence cosine
of mean embeddings and the masked-LM argmax agreement over real tokens (random weights: see
tests/test_quantize.py for the gates on a trained-like model). The table is written as JSON and
markdown under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from esmkernels.benchmarks.kernels import skewed_lengths
from esmkernels.benchmarks.lm import config_kwargs, make_batch

# ESM-2 35M (esm2_t12_35M_UR50D) and 150M (esm2_t30_150M_UR50D): hidden, layers, heads, ffn.
SHAPES = {"35M": (480, 12, 20, 1920), "150M": (640, 30, 20, 2560)}
# (shape, case, L, batch); uniform batches hold ~1,024 tokens so that the run stays minutes.
CASES = [
    ("35M", "skewed", 256, 8),
    ("35M", "skewed", 512, 8),
    ("35M", "skewed", 1024, 8),
    ("35M", "uniform", 256, 4),
    ("35M", "uniform", 1024, 1),
    ("150M", "skewed", 256, 8),
    ("150M", "skewed", 512, 8),
    ("150M", "uniform", 256, 4),
]
QUICK = [("35M", "skewed", 256, 8), ("35M", "uniform", 256, 4)]
PROVIDERS = ("hf_fp32", "hf_bf16", "ours_fp32", "ours_bf16", "ours_int8")


def kwargs(shape: str) -> dict:
    hidden, layers, heads, inter = SHAPES[shape]
    return dict(
        config_kwargs("esm2_8M"),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
    )


def build(shape: str) -> dict[str, torch.nn.Module]:
    import transformers

    from esmkernels import EsmConfig
    from esmkernels.models.esm import EsmForMaskedLM

    torch.manual_seed(0)
    ours = EsmForMaskedLM(EsmConfig(**kwargs(shape)), backend="torch").eval()
    state = ours.state_dict()
    models: dict[str, torch.nn.Module] = {"ours_fp32": ours}
    for dtype, name in ((torch.float32, "hf_fp32"), (torch.bfloat16, "hf_bf16")):
        cfg = transformers.EsmConfig(**kwargs(shape))
        cfg._attn_implementation = "sdpa"
        hf = transformers.EsmForMaskedLM(cfg).eval()
        hf.load_state_dict(state, strict=False)
        models[name] = hf.to(dtype)
    bf16 = EsmForMaskedLM(EsmConfig(**kwargs(shape)), backend="torch").eval()
    bf16.load_state_dict(state)
    models["ours_bf16"] = bf16.to_device_dtype(dtype=torch.bfloat16)
    int8 = EsmForMaskedLM(EsmConfig(**kwargs(shape)), backend="torch").eval()
    int8.load_state_dict(state)
    models["ours_int8"] = int8.quantize_for_inference("int8")
    return models


def forward(name: str, model, tokens, mask):
    if name.startswith("hf"):
        return model(input_ids=tokens, attention_mask=mask)
    return model(tokens, attention_mask=mask)


def quality(models, tokens, mask) -> dict[str, float]:
    """int8 against ours fp32 on the batch: min per-sequence mean-embedding cosine, argmax
    agreement of the logits over real tokens."""
    keep = mask.bool()
    w = keep[..., None].float()
    out = {}
    h = {
        n: models[n].esm(tokens, attention_mask=mask).last_hidden_state
        for n in ("ours_fp32", "ours_int8")
    }
    e32 = (h["ours_fp32"] * w).sum(1) / w.sum(1)
    e8 = (h["ours_int8"] * w).sum(1) / w.sum(1)
    out["cos_min"] = float(torch.nn.functional.cosine_similarity(e32, e8, dim=-1).min())
    l32 = models["ours_fp32"](tokens, attention_mask=mask).logits[keep].argmax(-1)
    l8 = models["ours_int8"](tokens, attention_mask=mask).logits[keep].argmax(-1)
    out["argmax_agree"] = float((l32 == l8).float().mean())
    return out


def run_case(models, shape, case, L, batch, repeats) -> dict:
    lengths = skewed_lengths(batch, L - 2) if case == "skewed" else [L - 2] * batch
    tokens, mask = make_batch(lengths, L, "cpu")
    times: dict[str, list[float]] = {n: [] for n in PROVIDERS}
    with torch.inference_mode():
        for n in PROVIDERS:
            forward(n, models[n], tokens, mask)
        for _ in range(repeats):
            for n in PROVIDERS:
                t0 = time.perf_counter()
                forward(n, models[n], tokens, mask)
                times[n].append(time.perf_counter() - t0)
        q = quality(models, tokens, mask)
    med = {n: statistics.median(v) for n, v in times.items()}
    residues = sum(lengths)
    return {
        "shape": shape,
        "case": case,
        "L": L,
        "batch": batch,
        "residues": residues,
        "padded_tokens": tokens.numel(),
        "seconds": med,
        "ratio_to_hf_fp32": {n: med[n] / med["hf_fp32"] for n in PROVIDERS},
        "ours_bf16_to_hf_bf16": med["ours_bf16"] / med["hf_bf16"],
        "residues_per_s": {n: residues / med[n] for n in PROVIDERS},
        "int8_quality": q,
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| shape | case | L | B | residues | hf fp32 s | ours fp32 | ours bf16 | ours int8 "
        "| bf16/hf bf16 | res/s hf fp32 / ours fp32 / bf16 / int8 | int8 cos min, argmax |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        x, s, q = r["ratio_to_hf_fp32"], r["residues_per_s"], r["int8_quality"]
        lines.append(
            f"| {r['shape']} | {r['case']} | {r['L']} | {r['batch']} | {r['residues']} "
            f"| {r['seconds']['hf_fp32']:.2f} | {x['ours_fp32']:.2f} | {x['ours_bf16']:.2f} "
            f"| {x['ours_int8']:.2f} | {r['ours_bf16_to_hf_bf16']:.2f} "
            f"| {s['hf_fp32']:.0f} / {s['ours_fp32']:.0f} / {s['ours_bf16']:.0f} / "
            f"{s['ours_int8']:.0f} | {q['cos_min']:.4f}, {q['argmax_agree']:.3f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="two 35M cases only")
    p.add_argument("--out", default="bench/results")
    args = p.parse_args(argv)
    if args.repeats < 1:
        raise SystemExit(f"--repeats {args.repeats}: must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows, models, current = [], None, None
    for shape, case, L, batch in QUICK if args.quick else CASES:
        if shape != current:
            models, current = None, shape
            models = build(shape)
        rows.append(run_case(models, shape, case, L, batch, args.repeats))
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "commit": commit,
    }
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = out / f"lm-cpu-{stamp}-{commit}"
    base.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    table = markdown(rows)
    base.with_suffix(".md").write_text(f"{json.dumps(meta)}\n\n{table}\n")
    print(table)
    print(meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
