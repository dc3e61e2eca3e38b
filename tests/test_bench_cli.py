"""`esmkernels bench` on CPU at test sizes: table, JSON, PNG; optional peers left out cleanly.

The kernels run interpreted here (TRITON_INTERPRET=1), so the numbers are not speeds; what is
tested is that every requested (case, provider) is measured or says why not, that the ratios
printed are the recorded times' ratios, and that the files are written.
"""

from __future__ import annotations

import json
import re

import pytest

from esmkernels.benchmarks import peers, report
from esmkernels.cli import main

CASES = "layer_norm,rotary_attention_varlen,trimul_out"
FAST = ["--lengths", "8", "--max-time", "0.01", "--cases", CASES, "--size", "tiny"]


def _run(capsys, tmp_path, *extra):
    code = main(["bench", "--suite", "kernels", "--out", str(tmp_path), *FAST, *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_kernels_suite_writes_json_png_and_table(capsys, tmp_path):
    code, out, err = _run(capsys, tmp_path, "--compare", "reference,torch,triton,hf")
    assert code == 0, out + err
    payload = json.loads((tmp_path / "bench.json").read_text())
    env = payload["environment"]
    assert env["device_type"] == "cpu" and env["torch"] and env["triton"] and env["commit"]
    assert "transformers" in env and payload["size"] == "tiny"
    records = {(r["case"], r["provider"]): r for r in payload["records"]}
    assert len(payload["records"]) == 12  # 3 cases x 4 providers, one mode, one length
    for case in CASES.split(","):
        for provider in ("reference", "triton"):
            r = records[(case, provider)]
            assert r["status"] == "ok" and r["ms"] > 0 and r["reps"] >= 1, r
            assert r["length"] == 8 and r["dtype"] == "float32" and r["tokens"] > 0
    # The peers that cannot run here say why (not silently dropped):
    assert records[("trimul_out", "torch")]["status"].startswith("unavailable: ")
    assert "torch.compile" in records[("trimul_out", "torch")]["status"]
    assert records[("layer_norm", "hf")]["status"].startswith("unavailable: ")
    if peers.has("transformers"):  # the peer extra: transformers' module, same weights
        assert records[("trimul_out", "hf")]["status"] == "ok"
    assert any("torch.compile" in line for line in payload["left_out"])
    png = tmp_path / "kernels.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png}" in out
    # The printed ratio of triton vs reference is the recorded times' ratio.
    row = next(line for line in out.splitlines() if "| layer_norm" in line and "| triton" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    header = next(line for line in out.splitlines() if line.startswith("| suite"))
    names = [c.strip() for c in header.strip("|").split("|")]
    shown = float(cells[names.index("vs reference")].rstrip("x"))
    want = records[("layer_norm", "reference")]["ms"] / records[("layer_norm", "triton")]["ms"]
    assert shown == pytest.approx(want, rel=0.01, abs=0.006)
    assert "triton (interpreted)" in row


def test_without_matplotlib_and_transformers_the_table_still_prints(capsys, tmp_path, monkeypatch):
    real_has = peers.has
    absent = lambda name: False if name in ("matplotlib", "transformers") else real_has(name)
    monkeypatch.setattr(peers, "has", absent)
    monkeypatch.setattr(report, "has", absent)
    code, out, _ = _run(capsys, tmp_path, "--compare", "reference,hf", "--cases", "trimul_out")
    assert code == 0
    assert not list(tmp_path.glob("*.png"))
    assert "left out: plots: matplotlib is not installed" in out
    assert re.search(r"left out: kernels/hf: unavailable: transformers is not installed", out)
    records = json.loads((tmp_path / "bench.json").read_text())["records"]
    assert [(r["provider"], r["status"]) for r in records][0] == ("reference", "ok")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--compare", "reference,cuda"], "'cuda'"),
        (["--cases", "softmax"], "'softmax'"),
        (["--modes", "backward"], "'backward'"),
        (["--max-time", "0"], "--max-time 0"),
        (["--threads", "0"], "--threads 0"),
    ],
)
def test_bad_options_are_usage_errors(capsys, tmp_path, argv, message):
    code = main(["bench", "--out", str(tmp_path), *argv])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bench.json").exists()  # nothing ran


def test_bad_length_is_a_usage_error(capsys):
    assert main(["bench", "--lengths", "8,0"]) == 2
    assert "--lengths: 0 must be >= 1" in capsys.readouterr().err


def test_memory_suite_without_the_memory_model_says_so(capsys, tmp_path, monkeypatch):
    from esmkernels.benchmarks import memory

    monkeypatch.setattr(memory, "has", lambda name: False)
    code = main(["bench", "--suite", "memory", "--lengths", "8", "--out", str(tmp_path),
                 "--compare", "torch", "--no-plot", "--size", "tiny"])  # fmt: skip
    assert code == 0
    assert "the fold memory model) is not available" in capsys.readouterr().out


def test_memory_suite_compares_prediction_and_measurement(capsys, tmp_path):
    fold_memory = pytest.importorskip("esmkernels.models.fold_memory")
    code = main(["bench", "--suite", "memory", "--lengths", "8", "--out", str(tmp_path),
                 "--compare", "torch", "--max-time", "0.01", "--no-plot", "--size", "tiny"])  # fmt: skip
    assert code == 0, capsys.readouterr()
    (record,) = json.loads((tmp_path / "bench.json").read_text())["records"]
    assert record["status"] == "ok" and record["peak_mb"] > 0
    from esmkernels.benchmarks.fold import fold_config_kwargs
    from esmkernels.core.configuration import EsmConfig

    want = fold_memory.predict_fold_peak_bytes(EsmConfig(**fold_config_kwargs("tiny")), 8)
    assert record["meta"]["predicted_mb"] == pytest.approx(want / 2**20)
    ratio = record["meta"]["predicted_over_measured"]
    assert ratio == pytest.approx(record["meta"]["predicted_mb"] / record["peak_mb"])


def test_bench_files_take_their_cases_from_esmkernels_benchmarks():
    """`esmkernels.benchmarks` is the one definition of cases: no pytest-benchmark file of
    bench/ (nor its conftest and run.py) keeps its own list of cases, providers, modes, sizes or
    lengths (module-level assignments)."""
    import ast
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench"
    own = re.compile(r"^(CASES|PROVIDERS|MODES|SIZES|SHAPES|[A-Z_]*LENGTHS)$")
    found = []
    paths = [*bench.glob("test_bench_*.py"), bench / "conftest.py", bench / "run.py"]
    assert len(paths) > 4
    for path in sorted(paths):
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AnnAssign):
                targets = [node.target]
            found += [
                f"{path.name}:{node.lineno} {t.id}"
                for t in targets
                if isinstance(t, ast.Name) and own.match(t.id)
            ]
    assert not found, f"second lists of benchmark cases: {found}"


# ---------------------------------------------------------------------------------------------
# Plots and tables a reader decides from (issue 18, item 7)
# ---------------------------------------------------------------------------------------------


def _rec(provider, length, ms, suite="lm", case="uniform", peak=None, **meta):
    return {"suite": suite, "case": case, "mode": "fwd", "provider": provider, "length": length,
            "device": "cpu", "status": "ok", "ms": ms, "peak_mb": peak, "tokens": None,
            "tokens_per_s": None, "tflops": None, "tbps": None, "meta": meta}  # fmt: skip


def test_cpu_defaults_show_a_trend():
    from esmkernels.benchmarks import runner

    assert runner.default_size("cpu") == "cpu" and runner.default_size("cuda") == "real"
    assert max(runner.default_lengths("lm", "uniform", "cpu")) >= 512
    for suite in runner.SUITES:
        for case in runner.suite_cases(suite):
            assert len(runner.default_lengths(suite, case, "cpu")) >= 3, (suite, case)


def test_tick_labels_are_plain_numbers():
    labels = [report.tick_label(v) for v in (0.005, 0.0123, 0.115, 1.0, 1.14, 20.0, 500.0)]
    assert labels == ["0.005", "0.0123", "0.115", "1", "1.14", "20", "500"]
    assert report.tick_label(1000.0) == "1000" and report.tick_label(20000.0) == "20,000"
    assert report.tick_label(1e-5) == "0.00001"


def test_no_panel_without_data():
    cpu = [_rec(p, L, ms) for p in ("reference", "hf") for L, ms in ((32, 1.0), (64, 30.0))]
    cpu.append({**_rec("triton", 32, None), "status": "unavailable: needs CUDA"})
    only_time = report.panels(cpu)
    assert [p["title"] for p in only_time] == ["uniform\ntime per call"]  # no memory panel
    assert [line["label"] for line in only_time[0]["lines"]] == ["reference", "hf"]
    gpu = [{**r, "device": "cuda", "peak_mb": 10.0} for r in cpu if r["status"] == "ok"]
    assert [p["title"].split("\n")[1] for p in report.panels(gpu)] == [
        "time per call",
        "peak memory",
    ]
    assert report.panels([cpu[-1]]) == []  # nothing measured: nothing to draw


def test_memory_suite_plots_and_tabulates_predicted_beside_measured():
    rows = [
        _rec("torch", 32, 250.0, "memory", "fold_peak", peak=4.0, predicted_mb=5.0,
             predicted_over_measured=1.25),
        _rec("torch", 64, 700.0, "memory", "fold_peak", peak=10.0, predicted_mb=12.0,
             predicted_over_measured=1.2),
    ]  # fmt: skip
    drawn = report.panels(rows, {"fold_peak": "1 sequence, 0 recycles"})
    assert [p["title"] for p in drawn] == [
        "fold_peak (1 sequence, 0 recycles)\npeak memory, measured vs predicted",
        "fold_peak (1 sequence, 0 recycles)\npredicted / measured peak",
    ]
    measured, predicted = drawn[0]["lines"]
    assert measured["ys"] == [4.0, 10.0] and not measured["dashed"]
    assert predicted["ys"] == [5.0, 12.0] and predicted["dashed"]
    assert drawn[1]["lines"][0]["ys"] == [1.25, 1.2] and drawn[1]["reference_line"] == 1.0
    head, _, first, _ = report.table(rows, ["torch"]).splitlines()
    names = [c.strip() for c in head.strip("|").split("|")]
    cells = dict(zip(names, (c.strip() for c in first.strip("|").split("|"))))
    assert names.index("predicted MB") == names.index("peak MB") + 1  # side by side
    assert (cells["peak MB"], cells["predicted MB"], cells["predicted / measured"]) == (
        "4",
        "5",
        "1.25",
    )
    # other suites' tables keep their columns
    assert "predicted MB" not in report.table([_rec("torch", 32, 1.0)], ["torch"])


def test_only_a_triton_row_that_ran_on_a_cpu_says_interpreted():
    ran = _rec("triton", 32, 5.0)
    skipped = {**_rec("triton", 64, None), "status": "unavailable: triton needs CUDA here"}
    lines = report.table([ran, skipped], []).splitlines()[2:]
    assert "triton (interpreted)" in lines[0] and "interpreted" not in lines[1]


def test_rendered_figure_reads_plainly(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    records = [_rec(p, L, ms * (1 + (p == "hf"))) for p in ("reference", "hf")
               for L, ms in ((32, 0.5), (128, 8.0), (512, 300.0))]  # fmt: skip
    records += [_rec(p, L, 1.0 + L / 1e3, case="skewed") for p in ("reference", "hf")
                for L in (32, 128, 512)]  # fmt: skip
    path = report.plot(records, tmp_path / "lm.png", "a long title\nsecond line",
                       notes=["not shown: lm/triton: unavailable"])  # fmt: skip
    assert path.read_bytes()[:4] == b"\x89PNG"
    (fig,) = figures
    fig.canvas.draw()
    axes = fig.get_axes()
    assert len(axes) == 2  # two time panels; no empty memory panel on a CPU
    renderer = fig.canvas.get_renderer()
    top = max(ax.get_tightbbox(renderer).y1 for ax in axes)
    assert fig._suptitle.get_window_extent(renderer).y0 >= top  # the title clears the panels
    for ax in axes:
        labels = [t.get_text() for t in ax.get_yticklabels() + ax.get_xticklabels()]
        labels = [t for t in labels if t]
        assert labels and not any("$" in t or "10^" in t or "e+" in t for t in labels), labels
        assert {"32", "128", "512"} <= {t.get_text() for t in ax.get_xticklabels()}
    assert axes[0].get_yscale() == "log" and axes[1].get_yscale() == "linear"
    assert axes[1].get_ylim()[0] == 0  # a flat linear curve is drawn from 0, not magnified
    plt.close(fig)
