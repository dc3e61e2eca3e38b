"""Tables, JSON and plots of benchmark records (see `esmkernels.benchmarks.runner`)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from esmkernels.benchmarks.peers import has

JSON_NAME = "bench.json"
COLORS = {"reference": "C0", "torch": "C1", "triton": "C2", "hf": "C3"}  # same in every panel


def _key(r: dict) -> tuple:
    return (r["suite"], r["case"], r["mode"], r["length"])


def throughput(r: dict) -> str:
    """TB/s for LayerNorm (bandwidth-bound), TFLOP/s for attention and trunk kernels,
    tokens (residues) per second for whole models."""
    if r["status"] != "ok":
        return ""
    if r["suite"] == "kernels" and r["case"] == "layer_norm" and r["tbps"] is not None:
        return f"{r['tbps']:.3g} TB/s"
    if r["suite"] == "kernels" and r["tflops"] is not None:
        return f"{r['tflops']:.3g} TFLOP/s"
    if r["tokens_per_s"] is not None:
        return f"{r['tokens_per_s']:.4g} tok/s"
    return ""


def ratios(records: Sequence[dict], peers: Sequence[str]) -> dict[int, dict[str, float]]:
    """{id(record): {peer: peer_ms / record_ms}} among records of the same case, mode and L:
    above 1, the record's provider is that many times faster than the peer."""
    by_key: dict[tuple, dict[str, dict]] = {}
    for r in records:
        if r["status"] == "ok":
            by_key.setdefault(_key(r), {})[r["provider"]] = r
    out = {}
    for r in records:
        row = {}
        if r["status"] == "ok":
            for peer in peers:
                other = by_key.get(_key(r), {}).get(peer)
                if peer != r["provider"] and other is not None:
                    row[peer] = other["ms"] / r["ms"]
        out[id(r)] = row
    return out


def _status(r: dict) -> str:
    s = r["status"]
    return s if s in ("ok", "oom") else s.split(":", 1)[0]


def table(records: Sequence[dict], peers: Sequence[str]) -> str:
    """A markdown table: one row per record, one ratio column per peer."""
    rel = ratios(records, peers)
    head = ["suite", "case", "mode", "L", "provider", "time (ms)", "throughput", "peak MB"]
    head += [f"vs {p}" for p in peers]
    rows = []
    for r in records:
        ms = f"{r['ms']:.4g}" if r["status"] == "ok" else _status(r)
        peak = f"{r['peak_mb']:.4g}" if r["peak_mb"] is not None else "-"
        provider = r["provider"]
        if provider == "triton" and r["device"] == "cpu":
            provider += " (interpreted)"  # a correctness tool, not a kernel speed
        cells = [r["suite"], r["case"], r["mode"], str(r["length"]), provider, ms,
                 throughput(r), peak]  # fmt: skip
        for p in peers:
            value = rel[id(r)].get(p)
            cells.append("" if p == r["provider"] else (f"{value:.2f}x" if value else "-"))
        rows.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep, *(line(c) for c in rows)])


def left_out(records: Sequence[dict]) -> list[str]:
    """One line per distinct reason something did not run (provider: reason)."""
    seen: dict[str, None] = {}
    for r in records:
        if r["status"].startswith(("unavailable", "not run")):
            seen[f"{r['suite']}/{r['provider']}: {r['status']}"] = None
    return list(seen)


def write_json(path: str | os.PathLike, payload: dict) -> Path:
    """Atomic write (temporary file + rename): a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)
    return path


def plot(records: Sequence[dict], path: str | os.PathLike, title: str) -> Path | None:
    """Time and peak memory vs length, one line per provider, one row per (case, mode).
    Returns None (nothing written) without matplotlib or without a finished record."""
    if not has("matplotlib"):
        return None
    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple, list[dict]] = {}
    for r in ok:
        groups.setdefault((r["suite"], r["case"], r["mode"]), []).append(r)
    fig, axes = plt.subplots(len(groups), 2, figsize=(10, 3.2 * len(groups)), squeeze=False)
    for (suite, case, mode), (ax_t, ax_m) in zip(groups, axes):
        rows = groups[(suite, case, mode)]
        for provider in dict.fromkeys(r["provider"] for r in rows):
            mine = sorted((r for r in rows if r["provider"] == provider), key=lambda r: r["length"])
            xs = [r["length"] for r in mine]
            style = dict(marker="o", label=provider, color=COLORS.get(provider))
            ax_t.plot(xs, [r["ms"] for r in mine], **style)
            mem = [(r["length"], r["peak_mb"]) for r in mine if r["peak_mb"] is not None]
            if mem:
                ax_m.plot(*zip(*mem), **style)
        ax_t.set(title=f"{case} {mode}: time", xlabel="length", ylabel="ms", yscale="log")
        ax_m.set(title=f"{case} {mode}: peak memory", xlabel="length", ylabel="MB")
        if not ax_m.lines:
            ax_m.text(0.5, 0.5, f"not measured on {rows[0]['device']}", ha="center",
                      va="center", transform=ax_m.transAxes)  # fmt: skip
        for ax in (ax_t, ax_m):
            if len({r["length"] for r in rows}) > 1:
                ax.set_xscale("log", base=2)
            if ax.lines:
                ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
