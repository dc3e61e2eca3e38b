"""The fold memory model (`esmkernels.models.fold_memory`) against measured peaks, and "auto".

Measured = the peak of live tensor bytes a fold allocates (`track_peak_bytes`, which counts every
new storage until it is freed), on CPU with the torch backend, for a grid of lengths, chunk
sizes, widths (including the esmfold_v1 trunk width c_s = 1024, c_z = 128, 32-wide heads, one
block) and dtypes. The model is written from the code's allocations; it must be within 15%.
"""

from __future__ import annotations

import pytest
import torch

from esmkernels.core.configuration import EsmConfig, StructureModuleConfig
from esmkernels.models import fold_memory as fm
from esmkernels.models.esmfold import EsmForProteinFolding
from tests.test_esmfold_model import STEM

# The structure module and heads at ESMFold's own widths (2 of its 8 blocks): their [L, L]
# temporaries are part of the peak.
SM = StructureModuleConfig(
    sequence_dim=384, pairwise_dim=128, ipa_dim=16, resnet_dim=128, num_heads_ipa=12,
    num_qk_points=4, num_v_points=8, num_blocks=2, dropout_rate=0.0,
)  # fmt: skip


def fold_config(c_s: int, c_z: int, num_blocks: int = 1) -> EsmConfig:
    trunk = dict(
        num_blocks=num_blocks,
        sequence_state_dim=c_s,
        pairwise_state_dim=c_z,
        sequence_head_width=32,
        pairwise_head_width=32,
        max_recycles=1,
        chunk_size=None,
        structure_module=SM.to_dict(),
    )
    return EsmConfig(
        **STEM, is_folding_model=True, esmfold_config=dict(fp16_esm=False, trunk=trunk)
    )


_MODELS: dict[tuple, EsmForProteinFolding] = {}


def fold_model(c_s: int, c_z: int, dtype: torch.dtype) -> EsmForProteinFolding:
    key = (c_s, c_z, dtype)
    if key not in _MODELS:
        torch.manual_seed(0)
        _MODELS[key] = EsmForProteinFolding(fold_config(c_s, c_z), backend="torch").eval().to(dtype)
    return _MODELS[key]


def measured_peak(
    model: EsmForProteinFolding, length: int, chunk, batch: int = 1, outputs: str = "full"
) -> int:
    model.set_chunk_size(chunk)
    ids = torch.randint(0, 20, (batch, length), generator=torch.Generator().manual_seed(length))
    with torch.no_grad(), fm.track_peak_bytes() as tracker:
        model(ids, num_recycles=0, outputs=outputs)
    return tracker.peak


GRID = [  # c_s, c_z, L, chunk, dtype
    (1024, 128, 64, None, torch.float32),
    (1024, 128, 64, 8, torch.float32),
    (1024, 128, 80, 16, torch.bfloat16),
    (128, 64, 96, None, torch.bfloat16),
    (128, 64, 96, 16, torch.float32),
    (256, 32, 120, 32, torch.float32),
]


@pytest.mark.parametrize("c_s, c_z, length, chunk, dtype", GRID)
def test_prediction_within_15_percent_of_measured(c_s, c_z, length, chunk, dtype):
    model = fold_model(c_s, c_z, dtype)
    got = measured_peak(model, length, chunk)
    want = fm.predict_fold_peak_bytes(
        model.config, length, dtype=dtype, backend="torch", chunk_size=chunk
    )
    assert 0.85 <= want / got <= 1.15, f"predicted {want} vs measured {got} bytes"


LEAN_GRID = [  # c_s, c_z, L, chunk, dtype: lean outputs; c_z 32 makes the heads the peak
    (1024, 128, 64, None, torch.float32),
    (128, 64, 96, 16, torch.bfloat16),
    (64, 32, 200, 16, torch.float32),
    (64, 32, 160, None, torch.float32),
]


@pytest.mark.parametrize("c_s, c_z, length, chunk, dtype", LEAN_GRID)
def test_lean_prediction_within_15_percent_of_measured(c_s, c_z, length, chunk, dtype):
    model = fold_model(c_s, c_z, dtype)
    got = measured_peak(model, length, chunk, outputs="lean")
    want = fm.predict_fold_peak_bytes(
        model.config, length, dtype=dtype, chunk_size=chunk, outputs="lean"
    )
    assert 0.85 <= want / got <= 1.15, f"predicted {want} vs measured {got} bytes"
    full = fm.predict_fold_memory(model.config, length, dtype=dtype, chunk_size=chunk)
    lean = fm.predict_fold_memory(
        model.config, length, dtype=dtype, chunk_size=chunk, outputs="lean"
    )
    assert lean["heads"] < full["heads"]
    assert {k: v for k, v in lean.items() if k != "heads"} == {
        k: v for k, v in full.items() if k != "heads"
    }


@pytest.mark.parametrize("outputs", ["full", "lean"])
@pytest.mark.parametrize(("length", "chunk"), [(200, 16), (120, None)])
def test_heads_phase_within_15_percent(outputs, length, chunk):
    """The heads alone (the running peak reset when the trunk returns), in both modes."""
    model = fold_model(64, 32, torch.float32)
    model.set_chunk_size(chunk)
    with torch.no_grad(), fm.track_peak_bytes() as tracker:
        hook = model.trunk.register_forward_hook(
            lambda *a: setattr(tracker, "peak", tracker.current)
        )
        model(torch.randint(0, 20, (1, length)), num_recycles=0, outputs=outputs)
        hook.remove()
    want = fm.predict_fold_memory(model.config, length, chunk_size=chunk, outputs=outputs)
    assert 0.85 <= want["heads"] / tracker.peak <= 1.15, (want["heads"], tracker.peak)


def test_lean_outputs_lower_the_measured_peak_where_heads_dominate():
    model = fold_model(64, 32, torch.float32)
    full, lean = (measured_peak(model, 200, 16, outputs=o) for o in ("full", "lean"))
    assert lean < 0.8 * full


def test_each_phase_within_15_percent():
    """Phase by phase (forward hooks reset the running peak), so that no term of the model can
    hide behind another phase's: a narrow pair state (c_z 32) makes the heads' outputs dominate."""
    model = fold_model(64, 32, torch.float32)
    model.set_chunk_size(16)
    L = 200
    blocks = model.trunk.blocks[0]
    modules = {
        "tri_mul": blocks.tri_mul_out,
        "tri_att": blocks.tri_att_start,
        "pair_mlp": blocks.mlp_pair,
        "structure": model.trunk.structure_module,
    }
    got: dict[str, int] = {}
    with torch.no_grad(), fm.track_peak_bytes() as tracker:
        hooks = []
        for name, module in modules.items():

            def pre(mod, args):
                tracker.peak = tracker.current  # the phase's own high-water mark from here

            def post(mod, args, out, name=name):
                got[name] = max(got.get(name, 0), tracker.peak)

            hooks += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        hooks.append(model.trunk.register_forward_hook(lambda *a: pre(None, None)))
        model(torch.randint(0, 20, (1, L)), num_recycles=0)
        got["heads"] = tracker.peak
        for h in hooks:
            h.remove()
    want = fm.predict_fold_memory(model.config, L, chunk_size=16)
    for name, measured in got.items():
        assert 0.85 <= want[name] / measured <= 1.15, f"{name}: {want[name]} vs {measured}"


def test_chunking_lowers_the_measured_peak():
    """Chunking happened: the measured peak falls with the chunk, as the model says."""
    model = fold_model(128, 64, torch.float32)
    peaks = [measured_peak(model, 96, chunk) for chunk in (None, 32, 8)]
    assert peaks[0] > peaks[1] > peaks[2] and peaks[0] > 2 * peaks[2]


def test_auto_chunk_respects_the_budget(monkeypatch):
    """The model's "auto" picks the chunk from the free memory, and the fold stays within it."""
    model = fold_model(128, 64, torch.float32)
    L = 96
    cfg = model.config
    floor = fm.predict_fold_peak_bytes(cfg, L, chunk_size=1)
    unchunked = fm.predict_fold_peak_bytes(cfg, L, chunk_size=None)
    for budget in (int(floor * 1.2), int(floor * 1.6), 2 * unchunked):
        monkeypatch.setattr(fm, "free_memory_bytes", lambda device=None, b=budget: b)
        want = fm.auto_chunk_size(cfg, L, free_bytes=budget)
        model.set_chunk_size("auto")
        ids = torch.randint(0, 20, (1, L))
        with torch.no_grad(), fm.track_peak_bytes() as tracker:
            model(ids, num_recycles=0)
        assert model.chunk_size == "auto" and model.last_chunk_size == want
        assert tracker.peak <= budget * (1 - fm.SAFETY_MARGIN) * 1.15
        predicted = fm.predict_fold_peak_bytes(cfg, L, chunk_size=want)
        assert predicted <= budget * (1 - fm.SAFETY_MARGIN)


def test_auto_prefers_speed_when_memory_is_plentiful():
    """Plenty of memory: unchunked up to 64 rows and on the Triton path, at least 64 rows per
    block on the PyTorch path; tight memory: the lean pick, within LEAN_SLACK of the floor."""
    cfg = fold_config(128, 64)
    plenty = 10**12
    assert fm.auto_chunk_size(cfg, 64, free_bytes=plenty) is None
    assert fm.auto_chunk_size(cfg, 40, free_bytes=plenty) is None
    assert fm.auto_chunk_size(cfg, 96, free_bytes=plenty) == 64
    assert fm.auto_chunk_size(cfg, 1000, free_bytes=plenty) >= fm.MIN_FAST_ROWS
    assert fm.auto_chunk_size(cfg, 1000, free_bytes=plenty, backend="triton") is None
    # Comfortable means within COMFORT of the budget: just above the unchunked peak / COMFORT
    # the GPU path runs unchunked, just below it takes a chunk.
    unchunked = fm.predict_fold_peak_bytes(cfg, 1000, backend="triton")
    roomy = int(unchunked / fm.COMFORT / (1 - fm.SAFETY_MARGIN)) + 10
    assert fm.auto_chunk_size(cfg, 1000, free_bytes=roomy, backend="triton") is None
    assert fm.auto_chunk_size(cfg, 1000, free_bytes=roomy - 10**6, backend="triton") is not None
    # Tight: the memory-lean choice, never above LEAN_SLACK times the floor.
    floor = fm.predict_fold_peak_bytes(cfg, 1000, chunk_size=1)
    tight = int(floor * 1.3 / (1 - fm.SAFETY_MARGIN))
    for backend in fm.BACKENDS:
        chunk = fm.auto_chunk_size(cfg, 1000, free_bytes=tight, backend=backend)
        peak = fm.predict_fold_peak_bytes(cfg, 1000, chunk_size=chunk, backend=backend)
        assert chunk is not None and peak <= tight * (1 - fm.SAFETY_MARGIN)
        assert peak <= fm.LEAN_SLACK * fm.predict_fold_peak_bytes(
            cfg, 1000, chunk_size=1, backend=backend
        )


def test_auto_chunk_refuses_what_cannot_fit():
    cfg = fold_config(1024, 128)
    floor = fm.predict_fold_peak_bytes(cfg, 300, chunk_size=1)
    with pytest.raises(MemoryError, match=rf"L=300 .*{floor} bytes.*\(1000 bytes\) are free"):
        fm.auto_chunk_size(cfg, 300, free_bytes=1000)


def test_prediction_is_monotone_and_scales_like_a_pair_tensor():
    cfg = fm.esmfold_v1_config()
    for backend in fm.BACKENDS:
        peaks = [
            fm.predict_fold_peak_bytes(
                cfg, 2048, dtype=torch.bfloat16, backend=backend, chunk_size=c
            )
            for c in (16, 64, 256, None)
        ]
        assert peaks == sorted(peaks)
        pair = 2048**2 * 128 * 2
        # Lean: a chunked trunk at L=2,048 stays within a few pair tensors (heads included).
        assert peaks[1] <= 3.5 * pair
    assert fm.model_weight_bytes(cfg, torch.bfloat16) > 6 * 2**30  # the 3B stem and trunk


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(length=0), "length=0"),
        (dict(length=10, chunk_size=0), "chunk_size=0"),
        (dict(length=10, backend="cuda"), "backend='cuda'"),
        (dict(length=10, batch=True), "batch=True"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fm.predict_fold_peak_bytes(fold_config(64, 32), **kwargs)
    with pytest.raises(TypeError, match="dtype"):
        fm.predict_fold_peak_bytes(fold_config(64, 32), 8, dtype=torch.int8)


def test_set_chunk_size_values():
    model = fold_model(128, 64, torch.float32)
    for value in ("auto", 5, None):
        model.set_chunk_size(value)
        assert model.chunk_size == value
    for bad in (0, -1, "big", 2.5):
        with pytest.raises(ValueError, match="chunk_size"):
            model.set_chunk_size(bad)


@pytest.mark.gpu
def test_prediction_matches_cuda_peak_at_trunk_width(device):
    """Real trunk width on the GPU: torch.cuda.max_memory_allocated vs the model, Triton path."""
    torch.manual_seed(0)
    model = EsmForProteinFolding(fold_config(1024, 128, num_blocks=2)).eval()
    model = model.to(device=device, dtype=torch.bfloat16)
    for length, chunk in ((512, None), (1024, 64)):
        model.set_chunk_size(chunk)
        ids = torch.randint(0, 20, (1, length), device=device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.no_grad():
            model(ids, num_recycles=0)
        got = torch.cuda.max_memory_allocated() - base
        want = fm.predict_fold_peak_bytes(
            model.config, length, dtype=torch.bfloat16, backend="triton", chunk_size=chunk
        )
        assert 0.85 <= want / got <= 1.15, (length, chunk, want, got)
