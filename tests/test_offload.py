"""Host offload of the triangle multiplication's contraction (`offload=True`): the same bits as
on the device, about one pair tensor less on the device (measured), the host bytes the memory
model predicts, and the plan that turns it on only where a fold fits no other way (a GPU)."""

from __future__ import annotations

import pytest
import torch

from esmkernels.core.tracking import track_peak_bytes
from esmkernels.models import fold_memory as fm
from esmkernels.models.esmfold import KernelTrunkOps
from esmkernels.ops import triangle_multiplicative_update
from tests.test_fold_memory import fold_model
from tests.test_trimul_add_into import _case
from tests.tolerances import FP32, MODEL_FP32


def _update(z, mask, p, *, offload, **kw):
    acc = z.clone()
    with torch.no_grad(), track_peak_bytes() as tracker:
        triangle_multiplicative_update(z, mask, **p, **kw, add_into=acc, offload=offload)
    return acc, tracker


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize(
    ("L", "chunk", "outgoing", "dtype"),
    [(12, 4, True, torch.float32), (11, 3, False, torch.float32), (10, 4, True, torch.bfloat16),
     (9, None, False, torch.float32)],
)  # fmt: skip
def test_offload_gives_the_same_result(backend, L, chunk, outgoing, dtype):
    z, mask, p = _case(L, dtype=dtype, seed=L)
    kw = dict(outgoing=outgoing, chunk_size=chunk, backend=backend)
    want, _ = _update(z, mask, p, offload=False, **kw)
    got, tracker = _update(z, mask, p, offload=True, **kw)
    # The same math on the same blocks; only where x's rows sit in memory differs, which can
    # move a GEMM's last bit on some CPUs: fp32 within FP32, bf16 within one rounding step.
    tol = FP32 if dtype == torch.float32 else {"atol": 2e-2, "rtol": 1e-2}
    torch.testing.assert_close(got, want, **tol)
    assert tracker.host_peak == z.numel() * z.element_size()  # x [1, L, L, Ch], Ch = C here


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_offload_takes_the_contraction_off_the_device(backend):
    """Measured: the device peak falls by most of x's bytes, which are on the host instead."""
    L, chunk = 48, 8
    z, mask, p = _case(L)
    kw = dict(outgoing=True, chunk_size=chunk, backend=backend)
    _, on_device = _update(z, mask, p, offload=False, **kw)
    _, offloaded = _update(z, mask, p, offload=True, **kw)
    x_bytes = z.numel() * 4
    assert on_device.host_peak == 0 and offloaded.host_peak == x_bytes
    assert offloaded.peak < on_device.peak - 0.6 * x_bytes, (offloaded.peak, on_device.peak)


def test_offload_needs_inference_into_add_into():
    z, mask, p = _case(6)
    with pytest.raises(ValueError, match="offload"):
        triangle_multiplicative_update(z, mask, **p, outgoing=True, offload=True)
    z.requires_grad_(True)
    with pytest.raises(ValueError, match="offload"):
        triangle_multiplicative_update(
            z, mask, **p, outgoing=True, offload=True, add_into=z.detach().clone()
        )


def test_namespace_offloads_only_in_place_calls():
    """The fast trunk's op namespace adds offload=True to in-place calls only (an update that
    is returned needs x on the device)."""
    z, mask, p = _case(6)
    hosts = []
    for ops, add_into in ((KernelTrunkOps("torch", offload=True), None),
                          (KernelTrunkOps("torch", offload=True), z.clone()),
                          (KernelTrunkOps("torch"), z.clone())):  # fmt: skip
        with torch.no_grad(), track_peak_bytes() as tracker:
            ops.triangle_multiplicative_update(z, mask, **p, outgoing=True, add_into=add_into)
        hosts.append(tracker.host_peak)
    assert hosts == [0, z.numel() * 4, 0]


def test_fold_with_offload_is_the_same_fold():
    """A whole fold with offload on: the same positions and confidences, bit for bit; the
    triangle phase's device peak as the memory model predicts it, and x on the host."""
    model = fold_model(128, 64, torch.float32)
    L, chunk = 64, 16
    ids = torch.randint(0, 20, (1, L), generator=torch.Generator().manual_seed(7))
    model.set_chunk_size(chunk)
    outs, phase, host = {}, {}, {}
    block = model.trunk.blocks[0].tri_mul_out
    for offload in (False, True):
        model.set_offload(offload)
        with torch.no_grad(), track_peak_bytes() as tracker:

            def pre(mod, args):
                tracker.peak = tracker.current

            def post(mod, args, out, offload=offload):
                phase[offload] = tracker.peak

            hooks = [block.register_forward_pre_hook(pre), block.register_forward_hook(post)]
            outs[offload] = model(ids, num_recycles=0, outputs="lean")
            for h in hooks:
                h.remove()
        host[offload] = tracker.host_peak
        assert model.last_offload is offload
    model.set_offload("auto")
    for key in ("positions", "plddt", "ptm", "predicted_aligned_error"):
        torch.testing.assert_close(outs[True][key], outs[False][key], **MODEL_FP32)
    cfg = model.config
    for offload in (False, True):
        want = fm.predict_fold_memory(cfg, L, chunk_size=chunk, outputs="lean", offload=offload)
        assert 0.85 <= want["tri_mul"] / phase[offload] <= 1.15, (offload, want, phase)
    assert host[False] == 0
    assert host[True] == fm.predict_host_bytes(cfg, L) == L * L * 64 * 4
    assert phase[True] < phase[False] - 0.5 * host[True]


def test_auto_plan_offloads_only_where_it_must_and_can():
    cfg = fm.esmfold_v1_config()
    L, bf16 = 10_000, torch.bfloat16
    kw = dict(dtype=bf16, backend="triton", outputs="lean", host_free_bytes=2**40)
    weights = fm.model_weight_bytes(cfg, bf16)
    gib = 2**30
    # A 48 GB card (the weights loaded): only with offload; a 141 GB one: without.
    chunk, offload = fm.auto_fold_plan(cfg, L, free_bytes=int(44.7 * gib) - weights, **kw)
    assert offload and chunk is not None
    peak = fm.predict_fold_peak_bytes(cfg, L, dtype=bf16, backend="triton", chunk_size=chunk,
                                      outputs="lean", offload=True, include_weights=True)  # fmt: skip
    assert peak <= 40 * gib
    assert fm.auto_fold_plan(cfg, L, free_bytes=131 * gib - weights, **kw)[1] is False
    # Never on a CPU, where host and device are one memory: it refuses instead.
    with pytest.raises(MemoryError, match="L=10000"):
        fm.auto_fold_plan(cfg, L, device="cpu", free_bytes=40 * gib, **kw)
    # Not without room on the host for the contraction.
    with pytest.raises(MemoryError, match="host memory"):
        fm.auto_fold_plan(cfg, L, free_bytes=40 * gib, **{**kw, "host_free_bytes": 8 * gib})
    # offload=False keeps auto_chunk_size's refusal; a given chunk is kept, offload chosen.
    with pytest.raises(MemoryError):
        fm.auto_fold_plan(cfg, L, free_bytes=40 * gib, **{**kw, "offload": False})
    assert fm.auto_fold_plan(cfg, L, free_bytes=40 * gib, chunk_size=64, **kw) == (64, True)
    assert fm.auto_fold_plan(cfg, 100, free_bytes=40 * gib, chunk_size=64, **kw) == (64, False)


def test_set_offload_values():
    model = fold_model(128, 64, torch.float32)
    with pytest.raises(ValueError, match="offload"):
        model.set_offload("yes")
    model.set_offload(True)
    assert model.offload is True
    model.set_offload("auto")
