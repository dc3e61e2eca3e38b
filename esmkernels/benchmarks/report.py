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
    """A markdown table: one row per record, one ratio column per peer. When records carry a
    memory-model prediction (the `memory` suite), the predicted peak and predicted / measured
    stand beside the measured peak ("peak MB")."""
    rel = ratios(records, peers)
    predicted = any(r.get("meta", {}).get("predicted_mb") is not None for r in records)
    head = ["suite", "case", "mode", "L", "provider", "time (ms)", "throughput", "peak MB"]
    head += ["predicted MB", "predicted / measured"] if predicted else []
    head += [f"vs {p}" for p in peers]
    rows = []
    for r in records:
        ms = f"{r['ms']:.4g}" if r["status"] == "ok" else _status(r)
        peak = f"{r['peak_mb']:.4g}" if r["peak_mb"] is not None else "-"
        cells = [r["suite"], r["case"], r["mode"], str(r["length"]), _provider_label(r), ms,
                 throughput(r), peak]  # fmt: skip
        if predicted:
            meta = r.get("meta", {})
            guess, ratio = meta.get("predicted_mb"), meta.get("predicted_over_measured")
            cells.append("-" if guess is None else f"{guess:.4g}")
            cells.append("-" if ratio is None else f"{ratio:.2f}")
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


def tick_label(value: float) -> str:
    """A plain axis label: 3 significant digits, never scientific notation ("0.005", "1.5",
    "20", "1000", "20,000"), so a log axis reads like a ruler.

    Example:
        >>> [tick_label(v) for v in (0.005, 0.0123, 1.0, 20.0, 1234.5, 20000.0)]
        ['0.005', '0.0123', '1', '20', '1230', '20,000']
    """
    import numpy as np

    text = np.format_float_positional(value, precision=3, fractional=False, trim="-")
    if abs(value) >= 10_000 and "." not in text:
        text = f"{int(text):,}"
    return text


def _provider_label(r: dict) -> str:
    if r["provider"] == "triton" and r["device"] == "cpu" and r["status"] == "ok":
        return "triton (interpreted)"  # a correctness tool, not a kernel speed
    return r["provider"]


def panels(records: Sequence[dict], descriptions: dict[str, str] | None = None) -> list[dict]:
    """What `plot` draws, one dict per panel, only panels that have data to show.

    Per (suite, case, mode): a time panel (ms per call against L, one line per provider), and a
    peak-memory panel only where peak memory was measured (CUDA); the memory suite instead gets
    measured and predicted peak memory side by side (solid and dashed, one colour per provider)
    and their ratio, since its times include the tracker's overhead. Each panel: `title`,
    `ylabel`, `log_y`, `reference_line` (a y value to mark, or None) and `lines`, each
    `{"label", "provider", "xs", "ys", "dashed"}` with xs sorted. `descriptions` ({case: what
    one call computes}) becomes a second line of the panel titles.
    """
    ok = [r for r in records if r["status"] == "ok"]
    groups: dict[tuple, list[dict]] = {}
    for r in ok:
        groups.setdefault((r["suite"], r["case"], r["mode"]), []).append(r)
    out = []

    def series(rows, value, label_suffix="", dashed=False):
        lines = []
        for provider in dict.fromkeys(r["provider"] for r in rows):
            mine = sorted((r for r in rows if r["provider"] == provider), key=lambda r: r["length"])
            points = [(r["length"], value(r)) for r in mine if value(r) is not None]
            if points:
                xs, ys = zip(*points)
                label = _provider_label(mine[0]) + label_suffix
                lines.append(dict(label=label, provider=provider, xs=list(xs), ys=list(ys),
                                  dashed=dashed))  # fmt: skip
        return lines

    for (suite, case, mode), rows in groups.items():
        name = f"{case} {mode}" if suite == "kernels" else case
        if descriptions and descriptions.get(case):
            name += f" ({descriptions[case]})"
        if suite == "memory":
            predicted = lambda r: r["meta"].get("predicted_mb")
            measured = series(rows, lambda r: r["peak_mb"], " measured")
            guessed = series(rows, predicted, " predicted", dashed=True)
            if measured or guessed:
                out.append(dict(title=f"{name}\npeak memory, measured vs predicted",
                                ylabel="MB (tensors allocated by one fold)", log_y=False,
                                reference_line=None, lines=measured + guessed))  # fmt: skip
            ratio = series(rows, lambda r: r["meta"].get("predicted_over_measured"))
            if ratio:
                out.append(dict(title=f"{name}\npredicted / measured peak", log_y=False,
                                ylabel="ratio (1 = exact; above 1 over-predicts)",
                                reference_line=1.0, lines=ratio))  # fmt: skip
            continue
        out.append(dict(title=f"{name}\ntime per call", ylabel="ms (lower is better)",
                        log_y=True, reference_line=None,
                        lines=series(rows, lambda r: r["ms"])))  # fmt: skip
        memory = series(rows, lambda r: r["peak_mb"])
        if memory:
            out.append(dict(title=f"{name}\npeak memory", ylabel="MB (lower is better)",
                            log_y=False, reference_line=None, lines=memory))  # fmt: skip
    return out


def _style_axes(ax, panel: dict) -> None:
    """Plain-number ticks: x at the measured lengths (log2 spacing), y log only when the values
    span more than a factor of 10 (ticks at 1, 2, 5 x 10^k), else linear from 0."""
    from matplotlib import ticker

    plain = ticker.FuncFormatter(lambda v, _: tick_label(v))
    xs = sorted({x for line in panel["lines"] for x in line["xs"]})
    ys = [y for line in panel["lines"] for y in line["ys"] if y is not None and y > 0]
    if len(xs) > 1:
        ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(ticker.FixedLocator(xs))
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.xaxis.set_major_formatter(plain)
    if panel["log_y"] and ys and max(ys) / min(ys) > 10:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_minor_locator(ticker.NullLocator())
    else:  # from 0, so that a flat curve looks flat and not like noise magnified
        ax.set_ylim(bottom=0, top=max(ys, default=1.0) * 1.08)
        ax.yaxis.set_major_locator(ticker.MaxNLocator(nbins=6))
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def plot(
    records: Sequence[dict],
    path: str | os.PathLike,
    title: str,
    *,
    descriptions: dict[str, str] | None = None,
    notes: Sequence[str] = (),
) -> Path | None:
    """The `panels` of `records` in a grid of two columns under `title` (constrained layout:
    the title never overlaps a panel), with `notes` (what was left out and why) under them.
    Returns None (nothing written) without matplotlib or without a panel to draw."""
    if not has("matplotlib"):
        return None
    drawn = panels(records, descriptions)
    if not drawn:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 1 if len(drawn) == 1 else 2
    rows = -(-len(drawn) // cols)
    width = max(5.2 * cols, 8.0)
    fig, axes = plt.subplots(rows, cols, figsize=(width, 3.6 * rows + 0.5 + 0.2 * len(notes)),
                             squeeze=False, layout="constrained")  # fmt: skip
    flat = list(axes.flat)
    for ax in flat[len(drawn) :]:
        ax.remove()
    for ax, panel in zip(flat, drawn):
        for line in panel["lines"]:
            ax.plot(line["xs"], line["ys"], marker="x" if line["dashed"] else "o",
                    label=line["label"],
                    color=COLORS.get(line["provider"]),
                    linestyle="--" if line["dashed"] else "-")  # fmt: skip
        if panel["reference_line"] is not None:
            ax.axhline(panel["reference_line"], color="0.5", linewidth=0.8)
        ax.set(title=panel["title"], xlabel="sequence length L", ylabel=panel["ylabel"])
        ax.title.set_fontsize(10)
        _style_axes(ax, panel)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    if notes:
        import textwrap

        wrapped = [textwrap.fill(n, int(width * 14), subsequent_indent="    ") for n in notes]
        fig.supxlabel("\n".join(wrapped), fontsize=8, ha="left", x=0.01, color="0.3")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
