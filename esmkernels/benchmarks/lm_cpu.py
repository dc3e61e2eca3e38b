"""CPU inference table of the ESM-2 language model (issue 20): transformers fp32 / ours fp32 /
ours bf16 / ours int8, side by side in one process.

`esmkernels bench --suite lm` on a CPU runs it after the lm suite's records (`runner`), and
`python -m bench.lm_cpu` runs it alone. Cases (`CASES[size]`): the ESM-2 35M and 150M shapes
(`lm.SHAPES`), on a length-skewed batch (`skewed`: 8 sequences of 50..L-2 residues, the first
L-2, padded to L; `kernels.skewed_lengths`) and a uniform one (`uniform`: B sequences of L-2
residues), L up to 1,024; `tiny` is a toy shape for tests.

Providers (`PROVIDERS`), all with the same random weights (`lm.Models`): transformers'
`EsmForMaskedLM` (SDPA) in fp32 and bf16, and our `EsmForMaskedLM` on the torch backend (the
packed CPU stack, `models/packed_cpu.py`) in fp32, bf16 and int8 (`quantize_for_inference`).
transformers is optional: without it the table holds our rows and says why the others are
missing.

Method: inference mode; per case one warm-up round, then `repeats` rounds in which every
provider runs one forward in turn (alternating, so that a load change on a shared machine hits
all providers alike); the median per provider is reported, with the torch threads and the load
average before and after. Columns: seconds, time ratio to transformers fp32 (bf16 rows also to
transformers bf16), residues / s, and beside the int8 row its quality against ours fp32 on the
same batch (lowest per-sequence cosine of mean embeddings; masked-LM argmax agreement over real
tokens). On random weights the logits are nearly flat, so the argmax agreement is lower than
on trained weights; the gates on a trained-like model are tests/test_quantize.py.

Example:
    >>> from esmkernels.benchmarks import lm_cpu  # doctest: +SKIP
    >>> table = lm_cpu.run_table("tiny", repeats=1)  # doctest: +SKIP
    >>> print(lm_cpu.markdown(table))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from esmkernels.benchmarks import lm
from esmkernels.benchmarks.kernels import skewed_lengths
from esmkernels.benchmarks.workloads import Unavailable

PROVIDERS = ("hf_fp32", "hf_bf16", "ours_fp32", "ours_bf16", "ours_int8")
LABELS = {
    "hf_fp32": "transformers fp32",
    "hf_bf16": "transformers bf16",
    "ours_fp32": "ours fp32",
    "ours_bf16": "ours bf16",
    "ours_int8": "ours int8",
}
MARKDOWN_NAME = "lm_cpu.md"


@dataclass(frozen=True)
class Case:
    shape: str  # a key of lm.SHAPES
    case: str  # "skewed" | "uniform"
    length: int  # L, tokens with <cls> / <eos>
    batch: int

    def lengths(self) -> list[int]:
        """Residues per sequence."""
        if self.case == "skewed":
            return skewed_lengths(self.batch, self.length - 2)
        return [self.length - 2] * self.batch


_CPU = (
    Case("esm2_35M", "skewed", 256, 8),
    Case("esm2_35M", "skewed", 512, 8),
    Case("esm2_35M", "skewed", 1024, 8),
    Case("esm2_35M", "uniform", 256, 4),  # uniform batches hold ~1,024 tokens: minutes, not hours
    Case("esm2_35M", "uniform", 1024, 1),
    Case("esm2_150M", "skewed", 256, 8),
    Case("esm2_150M", "skewed", 512, 8),
    Case("esm2_150M", "uniform", 256, 4),
)
CASES = {
    "cpu": _CPU,
    "real": _CPU + (Case("esm2_150M", "skewed", 1024, 8), Case("esm2_150M", "uniform", 1024, 1)),
    "tiny": (Case("tiny", "skewed", 24, 3), Case("tiny", "uniform", 16, 2)),
}


def select(size: str, lengths: Sequence[int] | None = None, cases: Sequence[str] | None = None):
    """The cases of `size`, kept to those at `lengths` and of kind `cases` when given."""
    if size not in CASES:
        raise ValueError(f"unknown size {size!r}; choose from {tuple(CASES)}")
    return [
        c
        for c in CASES[size]
        if (lengths is None or c.length in lengths) and (cases is None or c.case in cases)
    ]


def build_models(shape: str, with_hf: bool = True) -> tuple[dict[str, torch.nn.Module], str | None]:
    """({provider: model}, why transformers' providers are missing or None)."""
    source = lm.Models(shape, torch.device("cpu"), torch.float32)
    models = {
        "ours_fp32": source.build("torch"),
        "ours_bf16": source.build("torch", torch.bfloat16),
        "ours_int8": source.build("torch").quantize_for_inference("int8"),
    }
    missing = None if with_hf else "transformers (hf) not in --compare"
    if with_hf:
        try:
            models["hf_fp32"] = source.build("hf")
            models["hf_bf16"] = source.build("hf", torch.bfloat16)
        except Unavailable as e:
            missing = str(e)
    return {p: models[p] for p in PROVIDERS if p in models}, missing


def forward(provider: str, model, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits [B, L, V] of one provider."""
    if provider.startswith("hf"):
        return model(input_ids=tokens, attention_mask=mask).logits
    return model(tokens, attention_mask=mask).logits


def int8_quality(models: dict, tokens: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """ours int8 against ours fp32 on one batch: the lowest per-sequence cosine of mean
    embeddings over real tokens, and the argmax agreement of the logits over real tokens."""
    keep = mask.bool()
    weight = keep[..., None].float()
    fp32, int8 = models["ours_fp32"], models["ours_int8"]
    means = [
        (m.esm(tokens, attention_mask=mask).last_hidden_state * weight).sum(1) / weight.sum(1)
        for m in (fp32, int8)
    ]
    cos = torch.nn.functional.cosine_similarity(*means, dim=-1)
    top = [
        forward(p, m, tokens, mask)[keep].argmax(-1)
        for p, m in (("ours_fp32", fp32), ("ours_int8", int8))
    ]
    agree = top[0].eq(top[1])
    return {"cos_min": float(cos.min()), "argmax_agree": float(agree.float().mean())}


def time_case(models: dict, case: Case, repeats: int) -> dict:
    """One row of the table (see the module docstring): seconds, ratios, residues / s, int8
    quality, per provider present in `models`."""
    lengths = case.lengths()
    tokens, mask = lm.make_batch(lengths, case.length, "cpu")
    times: dict[str, list[float]] = {p: [] for p in models}
    with torch.inference_mode():
        for p, model in models.items():  # warm-up (caches, the fused QKV weight, allocator)
            forward(p, model, tokens, mask)
        for _ in range(repeats):
            for p, model in models.items():
                t0 = time.perf_counter()
                forward(p, model, tokens, mask)
                times[p].append(time.perf_counter() - t0)
        quality = int8_quality(models, tokens, mask)
    seconds = {p: statistics.median(v) for p, v in times.items()}
    residues = sum(lengths)

    def ratio(p: str, to: str) -> float | None:
        return seconds[p] / seconds[to] if to in seconds and p in seconds else None

    return {
        "shape": case.shape,
        "case": case.case,
        "L": case.length,
        "batch": case.batch,
        "residues": residues,
        "padded_tokens": tokens.numel(),
        "status": "ok",
        "seconds": seconds,
        "ratio_to_hf_fp32": {p: ratio(p, "hf_fp32") for p in seconds},
        "ratio_to_hf_bf16": {p: ratio(p, "hf_bf16") for p in ("hf_bf16", "ours_bf16")},
        "residues_per_s": {p: residues / s for p, s in seconds.items()},
        "int8_quality": quality,
    }


def run_table(
    size: str = "cpu",
    *,
    lengths: Sequence[int] | None = None,
    cases: Sequence[str] | None = None,
    with_hf: bool = True,
    repeats: int = 3,
    deadline: float | None = None,
    on_row: Callable[[dict], None] | None = None,
) -> dict:
    """The table: {"meta": threads, repeats, size, load averages, why transformers is missing;
    "rows": one dict per case (`time_case`), or {"status": "error: ..." | "not run: ..."}}.

    Raises:
        ValueError: an unknown size, or repeats < 1.
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: must be >= 1")
    chosen = select(size, lengths, cases)
    meta = {
        "size": size,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "load_average_before": list(os.getloadavg()),
        "transformers_missing": None,
    }
    rows: list[dict] = []
    models, current = None, None
    for case in chosen:
        head = {"shape": case.shape, "case": case.case, "L": case.length, "batch": case.batch}
        if deadline is not None and time.monotonic() >= deadline:
            row = {**head, "status": "not run: time budget"}
        else:
            try:
                if case.shape != current:
                    models, current = None, case.shape  # free the previous shape first
                    models, meta["transformers_missing"] = build_models(case.shape, with_hf)
                row = time_case(models, case, repeats)
            except Exception as e:  # noqa: BLE001 - one broken case must not end the run
                row = {**head, "status": f"error: {type(e).__name__}: {str(e)[:300]}"}
        rows.append(row)
        if on_row is not None:
            on_row(row)
    meta["load_average_after"] = list(os.getloadavg())
    meta["cases_selected"] = len(chosen)
    return {"meta": meta, "rows": rows}


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown(table: dict) -> str:
    """A markdown header line (threads, load average, what is missing) and one row per
    (case, provider)."""
    meta = table["meta"]
    before = ", ".join(f"{x:.2f}" for x in meta["load_average_before"])
    after = ", ".join(f"{x:.2f}" for x in meta.get("load_average_after", ()))
    lines = [
        f"CPU inference, {meta['threads']} torch thread(s), median of {meta['repeats']} "
        f"alternating rounds; load average {before} -> {after}",
    ]
    if meta["transformers_missing"]:
        lines.append(f"transformers rows missing: {meta['transformers_missing']}")
    lines += [
        "",
        "| shape | case | L x B | residues | provider | time (s) | / transformers fp32 "
        "| / transformers bf16 | residues/s | int8 quality (cos min, argmax agree) |",
        "|---|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    if not table["rows"]:
        lines.append("| (no case at these lengths / cases) |  |  |  |  |  |  |  |  |  |")
    for r in table["rows"]:
        where = f"| {r['shape']} | {r['case']} | {r['L']} x {r['batch']} |"
        if r["status"] != "ok":
            lines.append(f"{where} - | - | {r['status']} |  |  |  |  |")
            continue
        for p in PROVIDERS:
            if p not in r["seconds"]:
                continue
            q = r["int8_quality"]
            quality = f"{q['cos_min']:.4f}, {q['argmax_agree']:.3f}" if p == "ours_int8" else ""
            bf16 = r["ratio_to_hf_bf16"]
            to_bf16 = _num(bf16[p], ".2f") if p in bf16 else ""
            lines.append(
                f"{where} {r['residues']:,} | {LABELS[p]} | {r['seconds'][p]:.3g} "
                f"| {_num(r['ratio_to_hf_fp32'][p], '.2f')} | {to_bf16} "
                f"| {r['residues_per_s'][p]:,.0f} | {quality} |"
            )
    lines += [
        "",
        "int8 quality here is against ours fp32 on these random weights, whose masked-LM logits "
        "are nearly flat (argmax flips easily); the quality gates (cosine >= 0.99, argmax "
        "agreement >= 97 %, Spearman >= 0.98) run on a trained-like model in "
        "tests/test_quantize.py.",
    ]
    return "\n".join(lines)


def write_markdown(table: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(table) + "\n")
    return path
