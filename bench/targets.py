"""The GPU targets of the issues, read off benchmark records (standard library only).

Each target names the record it reads (suite, case, provider, mode, length), the metric, the
rule, and the peer measured in the same run. `ratio` is always peer time / our time (above 1:
we are faster). A target without its record is "not measured" with the record's status (a CPU
run, an out-of-memory, a phase cut before it), never a pass.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str
    suite: str
    case: str
    length: int
    metric: str  # "tbps" | "tflops" | "ms" | "tokens_per_s"
    rule: str  # "at least" | "at most" | "faster than peer" | "half of peer"
    threshold: float | None = None
    peers: tuple[str, ...] = ("torch",)
    provider: str = "triton"
    mode: str = "fwd"


TARGETS = (
    Target("LayerNorm D=1280 fwd >= 2.5 TB/s", "kernels", "layer_norm", 1024, "tbps", "at least", 2.5),
    Target("rotary attention fwd hd64 L=1024 >= 300 TFLOP/s", "kernels", "rotary_attention", 1024, "tflops", "at least", 300.0),
    Target("rotary attention fwd hd64 L=1024 >= SDPA + separate rotary", "kernels", "rotary_attention", 1024, "ms", "faster than peer"),
    Target("varlen skewed batch <= 1/2 padded SDPA", "kernels", "rotary_attention_varlen", 1024, "ms", "half of peer"),
    Target("tri-mul (outgoing) L=1024 c_z=128 <= 6 ms", "kernels", "trimul_out", 1024, "ms", "at most", 6.0, ("hf", "reference")),
    Target("tri-attention (starting) L=1024 4x32 heads <= 6 ms", "kernels", "tri_att_start", 1024, "ms", "at most", 6.0, ("hf", "reference")),
    Target("ESM-2 650M uniform B=8 L=1024 faster than transformers SDPA", "lm", "uniform", 1024, "tokens_per_s", "faster than peer", None, ("hf",)),
    Target("ESM-2 650M skewed 50-1022 faster than transformers SDPA", "lm", "skewed", 1024, "tokens_per_s", "faster than peer", None, ("hf",)),
    Target("ESMFold full size L=256 fold faster than transformers", "fold", "fold", 256, "ms", "faster than peer", None, ("hf",)),
    Target("ESMFold full size L=1024 fold faster than transformers", "fold", "fold", 1024, "ms", "faster than peer", None, ("hf",)),
)  # fmt: skip

UNITS = {"tbps": "TB/s", "tflops": "TFLOP/s", "ms": "ms", "tokens_per_s": "tok/s"}


def _find(records, suite, case, provider, mode, length) -> dict | None:
    found = [
        r
        for r in records
        if r.get("kind") == "bench"
        and (r["suite"], r["case"], r["provider"], r["mode"], r["length"])
        == (suite, case, provider, mode, length)
    ]
    ok = [r for r in found if r["status"] == "ok"]
    return (ok or found or [None])[-1]


def _fmt(value, metric: str) -> str:
    if value is None:
        return "-"
    return f"{value:.4g} {UNITS[metric]}"


def evaluate(target: Target, records: list[dict]) -> dict:
    """{target, measured, peer, ratio, verdict, peak_mb}; verdict is pass / short /
    'not measured: why'."""
    ours = _find(records, target.suite, target.case, target.provider, target.mode, target.length)
    peer = None
    for name in target.peers:
        peer = _find(records, target.suite, target.case, name, target.mode, target.length)
        if peer is not None and peer["status"] == "ok":
            break
    row = {"target": target.name, "measured": "-", "peer": "-", "ratio": None, "peak_mb": None}
    peer_ok = peer is not None and peer["status"] == "ok"
    if peer is not None:
        status = peer["status"] if not peer_ok else _fmt(peer.get(target.metric), target.metric)
        row["peer"] = f"{peer['provider']}: {status}"
    if ours is None:
        elsewhere = [r for r in records if r.get("kind") == "bench" and r["suite"] == target.suite
                     and r["case"] == target.case and r.get("device") != "cuda"]  # fmt: skip
        why = "no record"
        if elsewhere:
            why = f"a GPU target; this run was on {elsewhere[0]['device']} at test sizes"
        row["verdict"] = f"not measured: {why}"
        return row
    if ours["status"] != "ok":
        why = ours["status"]
        row["verdict"] = f"not measured: {why}"
        return row
    value = ours.get(target.metric)
    row["measured"] = _fmt(value, target.metric)
    row["peak_mb"] = ours.get("peak_mb")
    if peer_ok:
        row["ratio"] = peer["ms"] / ours["ms"]
    if ours.get("device") != "cuda":
        row["verdict"] = f"not measured: ran on {ours.get('device')} (a GPU target)"
        return row
    if value is None:
        row["verdict"] = f"not measured: the record has no {target.metric}"
        return row
    if target.rule == "at least":
        ok = value >= target.threshold
    elif target.rule == "at most":
        ok = value <= target.threshold
    elif row["ratio"] is None:
        row["verdict"] = "not measured: no peer result"
        return row
    else:
        ok = row["ratio"] >= (2.0 if target.rule == "half of peer" else 1.0)
    if target.rule in ("at least", "at most") and not peer_ok:
        row["verdict"] = ("pass" if ok else "short") + " (no peer result)"
    else:
        row["verdict"] = "pass" if ok else "short"
    return row


def longest_fold(records: list[dict]) -> dict:
    probes = [r for r in records if r.get("kind") == "probe"]
    ok = [r for r in probes if r["status"] == "ok"]
    best = max(ok, key=lambda r: r["length"]) if ok else None
    stop = next((r for r in probes if r["status"] != "ok"), None)
    measured = "-" if best is None else f"L={best['length']} in {best['seconds']:.1f} s"
    if best is not None and best.get("peak_mb") and best.get("predicted_mb"):
        measured += (
            f"; peak {best['peak_mb']:.0f} MB, predicted {best['predicted_mb']:.0f} MB "
            f"({best['predicted_mb'] / best['peak_mb']:.2f}x)"
        )
    note = (
        "not measured: no probe ran"
        if not probes
        else (f"info (next: L={stop['length']} {stop['status']})" if stop else "info")
    )
    return {"target": "longest L that folds (esmkernels, 1 sequence)", "measured": measured,
            "peer": "-", "ratio": None, "verdict": note,
            "peak_mb": None if best is None else best.get("peak_mb")}  # fmt: skip


def table(records: list[dict], device: str) -> list[str]:
    """Markdown lines: target | measured | peer | ratio | pass/short | peak MB | device."""
    lines = [
        "| target | measured | peer | ratio (peer time / ours) | pass/short | peak MB | device |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in [evaluate(t, records) for t in TARGETS] + [longest_fold(records)]:
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        peak = "-" if row["peak_mb"] is None else f"{row['peak_mb']:.0f}"
        lines.append(
            f"| {row['target']} | {row['measured']} | {row['peer']} | {ratio} | "
            f"{row['verdict']} | {peak} | {device} |"
        )
    return lines
