"""Recorded autotune winners (`esmkernels.ops._recorded_configs`) and their hook in `tuning()`.

A launch on a GPU whose name and autotune key are recorded runs the recorded config without
autotuning; any other GPU, key, or a config the kernel no longer lists falls back to the
kernel's whole list. The GPU name of a launch is faked (no CUDA here) through `launch_gpu`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types

import pytest
import torch
import triton
import triton.language as tl

from esmkernels.ops import _recorded_configs as rc
from esmkernels.ops import _tuning

GPU = "Test GPU 80GB"
LOWP = [(16, 16, 1, 1), (32, 16, 2, 1), (16, 32, 4, 2)]
FP32 = [(32, 32, 4, 1), (16, 16, 2, 1)]


@triton.jit
def _copy_kernel(x_ptr, y_ptr, n, N_KEY, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    o = tl.arange(0, BLOCK_M * BLOCK_N)
    m = o < n
    tl.store(y_ptr + o, tl.load(x_ptr + o, mask=m), mask=m)


@pytest.fixture
def fake_gpu(monkeypatch):
    """Launches on any device count as running on GPU; a tuned kernel registered in a fake
    esmkernels.ops module (where `autotuners()` looks)."""
    monkeypatch.setattr(rc, "launch_gpu", lambda tensor: GPU)
    monkeypatch.setattr(_tuning, "interpreting", lambda: False)  # the GPU branch of tuning()
    kwargs = _tuning.tuning(lowp=LOWP, fp32=FP32)
    tuner = triton.autotune(key=["N_KEY"], **kwargs)(_copy_kernel)
    module = types.ModuleType("esmkernels.ops._fake_tuned")
    module.kernel = tuner
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return tuner


def _write(tmp_path, monkeypatch, rows, gpu=GPU, kernel="_copy_kernel"):
    table = rc.merge(rc.empty_table(), gpu, {kernel: rows}, {"commit": "test"})
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps(table))
    monkeypatch.setenv(rc.ENV_VAR, str(path))
    return path


def _row(key, block_m, block_n, warps, stages):
    config = {"kwargs": {"BLOCK_M": block_m, "BLOCK_N": block_n}}
    return {"key": list(key), "config": {**config, "num_warps": warps, "num_stages": stages}}


def _prune(tuner, x, n_key):
    named = {"x_ptr": x, "y_ptr": x, "n": x.numel(), "N_KEY": n_key}
    return tuner.early_config_prune(tuner.configs, named)


def _blocks(configs):
    return [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in configs]


BF16_KEY = (64, "torch.bfloat16", "torch.bfloat16")


def test_recorded_config_is_the_only_one_left_on_its_gpu_and_key(fake_gpu, tmp_path, monkeypatch):
    _write(tmp_path, monkeypatch, [_row(BF16_KEY, 32, 16, 2, 1)])
    x = torch.zeros(8, dtype=torch.bfloat16)
    assert _blocks(_prune(fake_gpu, x, 64)) == [(32, 16, 2, 1)]
    # the object is the kernel's own config (one of its spill-checked list), not a new one
    assert any(c is _prune(fake_gpu, x, 64)[0] for c in fake_gpu.configs)


def test_falls_back_to_the_whole_list_elsewhere(fake_gpu, tmp_path, monkeypatch):
    _write(tmp_path, monkeypatch, [_row(BF16_KEY, 32, 16, 2, 1)])
    x = torch.zeros(8, dtype=torch.bfloat16)
    assert _blocks(_prune(fake_gpu, x, 128)) == LOWP  # shape bucket not recorded
    assert _blocks(_prune(fake_gpu, x.float(), 64)) == FP32  # dtype: another key
    monkeypatch.setattr(rc, "launch_gpu", lambda tensor: "Another GPU")
    assert _blocks(_prune(fake_gpu, x, 64)) == LOWP  # GPU not recorded
    monkeypatch.setattr(rc, "launch_gpu", lambda tensor: None)
    assert _blocks(_prune(fake_gpu, x, 64)) == LOWP  # not on CUDA


def test_a_config_the_kernel_no_longer_lists_is_not_used(fake_gpu, tmp_path, monkeypatch):
    _write(tmp_path, monkeypatch, [_row(BF16_KEY, 64, 64, 8, 3)])
    assert _blocks(_prune(fake_gpu, torch.zeros(8, dtype=torch.bfloat16), 64)) == LOWP


def test_switched_off_by_the_environment(fake_gpu, tmp_path, monkeypatch):
    _write(tmp_path, monkeypatch, [_row(BF16_KEY, 32, 16, 2, 1)])
    monkeypatch.setenv(rc.ENV_VAR, "off")
    assert _blocks(_prune(fake_gpu, torch.zeros(8, dtype=torch.bfloat16), 64)) == LOWP


def test_launch_uses_triton_key_and_benchmarks_per_triton_release(fake_gpu, tmp_path, monkeypatch):
    """A real launch (interpreted): Triton's own autotune key finds the recorded row and the
    single recorded config is cached; Triton >= 3.8 does so without a benchmark, older releases
    benchmark that one config alone, once (`rc.SKIPS_SINGLE_CONFIG_BENCHMARK_FROM`); `snapshot`
    writes it back."""
    key = (16, "torch.float32", "torch.float32")  # Triton's rule: key values, tensor dtypes
    _write(tmp_path, monkeypatch, [_row(key, 16, 16, 2, 1)])
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))  # older releases write there
    benched = []

    def bench(*args, config, **kwargs):
        benched.append(config)
        return [1.0, 1.0, 1.0]

    monkeypatch.setattr(fake_gpu, "_bench", bench)
    x = torch.arange(10, dtype=torch.float32)
    y = torch.zeros_like(x)
    fake_gpu[(1,)](x, y, x.numel(), 16)
    assert torch.equal(x, y)
    if rc.skips_single_config_benchmark():
        assert benched == [], "benchmarked although a recorded config was given"
    else:
        assert _blocks(benched) == [(16, 16, 2, 1)], "not the recorded config alone, once"
    assert list(fake_gpu.cache) == [key]
    assert _blocks([fake_gpu.cache[key]]) == [(16, 16, 2, 1)]
    assert rc.snapshot()["_copy_kernel"] == [_row(key, 16, 16, 2, 1)]


def test_merge_and_load_round_trip(tmp_path, monkeypatch):
    first = rc.merge(rc.empty_table(), GPU, {"k": [_row((16, "a"), 16, 16, 1, 1)]}, {"c": "1"})
    both = rc.merge(
        first, GPU, {"k": [_row((16, "a"), 32, 16, 2, 1), _row((32, "a"), 16, 32, 4, 2)]}, {}
    )
    path = tmp_path / "t.json"
    path.write_text(json.dumps(both))
    table = rc.load_table(path)
    assert rc.lookup(GPU, "k", (16, "a"), table)["kwargs"] == {"BLOCK_M": 32, "BLOCK_N": 16}
    assert rc.lookup(GPU, "k", (32, "a"), table)["num_stages"] == 2
    assert rc.lookup(GPU, "k", (64, "a"), table) is None
    assert rc.lookup("Other", "k", (16, "a"), table) is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "invalid JSON"),
        ('{"format": 2, "gpus": {}}', "format 1"),
        ('{"format": 1, "gpus": {"G": {"kernels": {"k": [{"key": 1}]}}}}', "needs 'key'"),
    ],
)
def test_bad_table_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        rc.load_table(path)
    assert str(path) in str(err.value)


def test_missing_table_named_by_environment_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(rc.ENV_VAR, str(tmp_path / "absent.json"))
    with pytest.raises(ValueError, match="absent.json"):
        rc.load_table()


def test_shipped_table_names_real_kernels_and_listed_configs():
    """Every recorded row of the shipped file names an autotuned kernel of esmkernels.ops and
    a config that kernel lists on a GPU (else it would silently never be used)."""
    table = json.loads(rc.DEFAULT_PATH.read_text())
    rc.load_table(rc.DEFAULT_PATH)  # validates
    code = textwrap.dedent(
        """
        import json, sys
        import esmkernels.ops
        from esmkernels.ops import _recorded_configs as rc
        out = {name: [rc.config_dict(c) for c in t.configs] for name, t in rc.autotuners().items()}
        print(json.dumps(out))
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**__import__("os").environ, "TRITON_INTERPRET": "0"},
    )
    listed = json.loads(run.stdout)
    assert len(listed) >= 8, sorted(listed)  # the attention and triangle kernels are found
    for gpu, entry in table["gpus"].items():
        for kernel, rows in entry["kernels"].items():
            assert kernel in listed, f"{gpu}: {kernel} is not an autotuned kernel"
            for row in rows:
                assert row["config"] in listed[kernel], f"{gpu}: {kernel} {row} not listed"


@pytest.mark.gpu
def test_gpu_autotune_winner_is_kept_on_disk(tmp_path):
    """Triton's `cache_results` (set by tuning()) writes the winner under TRITON_CACHE_DIR,
    and a second process finds it there."""
    code = textwrap.dedent(
        """
        import torch, triton
        from esmkernels.ops import rotary_attention
        hits = []
        knobs = getattr(triton, "knobs", None)
        if knobs is not None and hasattr(knobs.autotuning, "listener"):
            knobs.autotuning.listener = lambda **kw: hits.append(kw["cache_hit"])
        q = torch.randn(2, 200, 4, 64, device="cuda", dtype=torch.bfloat16)
        inv = 1.0 / 10000 ** (torch.arange(0, 64, 2, device="cuda").float() / 64)
        rotary_attention(q, q, q, inv_freq=inv, backend="triton")
        torch.cuda.synchronize()
        print("HITS", hits)
        """
    )
    env = {
        **__import__("os").environ,
        "TRITON_CACHE_DIR": str(tmp_path),
        "TRITON_INTERPRET": "0",
        rc.ENV_VAR: "off",
    }
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert list(tmp_path.rglob("*.autotune.json")), "no autotune result on disk"
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    if "HITS []" not in second.stdout:  # listener available: every lookup hit the disk cache
        assert "False" not in second.stdout.split("HITS", 1)[1], second.stdout


@pytest.mark.parametrize(
    "version, skips", [("3.6.0", False), ("3.7.1", False), ("3.8.0", True), ("3.9.0", True)]
)
def test_single_config_benchmark_rule_per_release(version, skips):
    assert rc.skips_single_config_benchmark(version) is skips
