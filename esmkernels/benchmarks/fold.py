"""ESMFold structure prediction, esmkernels vs the reference and transformers.

`real` is the full-size model (ESM-2 3B stem, 48 trunk blocks, c_s 1024, c_z 128) with random
weights; `tiny` the tests' toy model. One sequence of L random residues per call,
`num_recycles` recycles (default 0: one trunk pass), the trunk chunked as its config says
(128 rows for the full size, as transformers' esmfold_v1) unless `chunk_size` is given. Each
provider builds its own model from the same seed (timing does not depend on the weights' values; transformers' init differs).

Providers: `reference` (esmkernels.reference), `torch` (the fast model's torch backend),
`triton` (fast model, kernels), `hf` (transformers' EsmForProteinFolding).

`longest_fold` probes upward in length until a fold runs out of memory or time. `user_model`,
`LONG_LENGTHS` and `CPU_MEMORY_CASES` are the cases of bench/test_bench_fold.py and
bench/fold_memory_cpu.py (each side at the precision and chunking its users run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from esmkernels.benchmarks.kernels import check_triton
from esmkernels.benchmarks.lm import config_kwargs
from esmkernels.benchmarks.peers import transformers_module
from esmkernels.benchmarks.workloads import Unavailable, Workload
from esmkernels.core.memory import free_memory, is_oom

PROVIDERS = ("reference", "torch", "triton", "hf")
CASES = ("fold",)


@dataclass(frozen=True)
class Sizes:
    stem: str  # an `lm.SHAPES` name
    trunk: dict  # trunk config keywords ({}: esmfold_v1's)
    lengths: tuple[int, ...]
    esmfold: dict = field(default_factory=dict)  # other esmfold_config keywords


def _cpu_trunk(c_s: int, c_z: int) -> dict:
    return dict(num_blocks=2, sequence_state_dim=c_s, pairwise_state_dim=c_z,
                sequence_head_width=32, pairwise_head_width=32, max_recycles=4, chunk_size=128)  # fmt: skip


_TINY_TRUNK = dict(
    num_blocks=1, sequence_state_dim=32, pairwise_state_dim=16, sequence_head_width=8,
    pairwise_head_width=8, position_bins=4, max_recycles=2, chunk_size=None,
    structure_module=dict(sequence_dim=16, pairwise_dim=8, ipa_dim=8, resnet_dim=8,
                          num_heads_ipa=2, num_qk_points=2, num_v_points=2, num_blocks=2,
                          dropout_rate=0.0),
)  # fmt: skip
# real: esmfold_v1's architecture (ESM-2 3B stem, 48 blocks); tiny: the tests' toy model;
# cpu: what `esmkernels bench` runs on a CPU;
# small / wide: CPU comparisons with an ESM-2 8M-shaped stem and 2 trunk blocks, at a small and
# at esmfold_v1's trunk width (fp32 stem: transformers would cast an fp16_esm stem to fp16).
SIZES = {
    "real": Sizes("esm2_3B", {}, (256, 1024)),
    "tiny": Sizes("tiny", _TINY_TRUNK, (8, 16)),
    # A CPU run that shows a trend in about a minute: the `small` model at L 32..128.
    "cpu": Sizes("esm2_8M", _cpu_trunk(128, 64), (32, 64, 128), {"fp16_esm": False}),
    "small": Sizes("esm2_8M", _cpu_trunk(128, 64), (128, 384), {"fp16_esm": False}),
    "wide": Sizes("esm2_8M", _cpu_trunk(1024, 128), (1024,), {"fp16_esm": False}),
}
# The long-sequence GPU comparison (bench/test_bench_fold.py): esmfold_v1's architecture with
# 4 recycles, each side as its users run it (`user_model`).
LONG_LENGTHS = (256, 512, 1024, 2048, 4096)
LONG_RECYCLES = 4
# The CPU peak-RSS comparison (bench/fold_memory_cpu.py): size, length, transformers' chunk.
CPU_MEMORY_CASES = {
    "small": dict(size="small", length=384, hf_chunk="default"),
    "wide": dict(size="wide", length=1024, hf_chunk=64),
}


def fold_config_kwargs(size: str) -> dict:
    """Keywords of an ESMFold EsmConfig (ours or transformers')."""
    s = SIZES[size]
    stem = {**config_kwargs(s.stem), "max_position_embeddings": 4098}
    fold = {"trunk": dict(s.trunk)} if s.trunk else {}
    fold.update(s.esmfold)
    if size == "tiny":
        fold["lddt_head_hid_dim"] = 16
    from esmkernels.core.configuration import ESM_VOCAB

    return {**stem, "is_folding_model": True, "esmfold_config": fold, "vocab_list": list(ESM_VOCAB)}


def build_model(provider: str, size: str, device, dtype, chunk_size: int | None = None):
    torch.manual_seed(0)
    if provider == "hf":
        transformers = transformers_module()
        esmfold = transformers_module("transformers.models.esm.modeling_esmfold")
        model = esmfold.EsmForProteinFolding(transformers.EsmConfig(**fold_config_kwargs(size)))
        model = model.to(device)
        if dtype != torch.float32:
            model.to(dtype)
        if chunk_size is not None:
            model.trunk.set_chunk_size(chunk_size)
        return model.eval()
    from esmkernels.core.configuration import EsmConfig

    config = EsmConfig(**fold_config_kwargs(size))
    if provider == "reference":
        from esmkernels.reference.esmfold.modeling import EsmForProteinFolding

        model = EsmForProteinFolding(config)
    else:
        from esmkernels.models.esmfold import EsmForProteinFolding

        if provider == "triton":
            check_triton(torch.device(device))
        model = EsmForProteinFolding(config, backend=provider)
    model = model.to_device_dtype(device=device, dtype=None if dtype == torch.float32 else dtype)
    if chunk_size is not None:  # else the config's, as transformers' model (128 for esmfold_v1)
        model.set_chunk_size(chunk_size)
    return model.eval()


def user_model(provider: str, size: str, device, chunk_size: int | str | None = "default"):
    """A model as its users run it (random weights, seed 0): "esmkernels", the fast ESMFold
    (bfloat16 on CUDA, float32 on a CPU; backend "auto"; chunk_size "auto"), or "hf",
    transformers' (its own precision: an fp16 stem when `fp16_esm`, an fp32 trunk).
    `chunk_size` other than "default" is set on the trunk (None: unchunked)."""
    device = torch.device(device)
    torch.manual_seed(0)
    if provider == "hf":
        transformers = transformers_module()
        model = transformers.EsmForProteinFolding(
            transformers.EsmConfig(**fold_config_kwargs(size))
        )
        model = model.eval().to(device)
        if chunk_size != "default":
            model.trunk.set_chunk_size(chunk_size)
        return model
    if provider != "esmkernels":
        raise ValueError(f"unknown provider {provider!r}; choose from ('esmkernels', 'hf')")
    from esmkernels.core.configuration import EsmConfig
    from esmkernels.models.esmfold import EsmForProteinFolding

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = EsmForProteinFolding(EsmConfig(**fold_config_kwargs(size))).eval()
    model = model.to(device=device, dtype=dtype)
    if chunk_size != "default":
        model.set_chunk_size(chunk_size)
    return model


class Models:
    """One fold model at a time (two full-size ones would double the memory)."""

    def __init__(self, size: str, device, dtype, chunk_size: int | None = None):
        self.size, self.device, self.dtype, self.chunk_size = size, device, dtype, chunk_size
        self._current = None

    def get(self, provider: str):
        if self._current is not None and self._current[0] == provider:
            return self._current[1]
        self._current = None
        free_memory(self.device)
        with torch.device(self.device):  # initialised where it runs: fast on a GPU
            model = build_model(provider, self.size, self.device, self.dtype, self.chunk_size)
        self._current = (provider, model)
        return model


def sequence(length: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 20, (1, length), generator=g).to(device)
    return ids, torch.ones_like(ids)


def build(
    case: str,
    provider: str,
    length: int,
    *,
    models: Models,
    num_recycles: int = 0,
    outputs: str | None = None,
) -> Workload:
    """One fold of `length` random residues; `outputs` ("full" / "lean", esmkernels providers
    only; None: the model's default) is passed to the forward."""
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; choose from {PROVIDERS}")
    model = models.get(provider)
    ids, mask = sequence(length, models.device)
    extra = {} if outputs is None else {"outputs": outputs}

    def forward():
        return model(ids, attention_mask=mask, num_recycles=num_recycles, **extra).positions

    chunk = getattr(getattr(model, "trunk", None), "chunk_size", models.chunk_size)
    meta = {"num_recycles": num_recycles, "chunk_size": chunk, "size": models.size}
    return Workload(forward, tokens=length, meta=meta)


def longest_fold(
    provider: str,
    lengths,
    *,
    models: Models,
    deadline: float,
    num_recycles: int = 0,
    outputs: str | None = None,
    on_result=None,
) -> list[dict]:
    """Fold at each length in increasing order until one runs out of memory, fails, or the
    next would pass `deadline` (time.monotonic(); the estimate scales the last fold by the
    cube of the length ratio, the trunk's cost). One call per length, no warm-up.

    Each row: length, status, seconds, the chunk (and offload) the fold used; on CUDA
    `peak_mb`, the fold's own `max_memory_allocated` above what was allocated before it (the
    weights), beside `predicted_mb`, the memory model's device peak for that chunk, output mode
    and offload (esmkernels models)."""
    results, last = [], None
    for L in sorted(lengths):
        if last is not None:
            estimate = last["seconds"] * (L / last["length"]) ** 3
            if time.monotonic() + estimate > deadline:
                results.append(
                    {"length": L, "status": f"not tried: ~{estimate:.0f} s left no time"}
                )
                break
        elif time.monotonic() >= deadline:
            break
        try:
            work = build(
                "fold", provider, L, models=models, num_recycles=num_recycles, outputs=outputs
            )
            device = torch.device(models.device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            t0 = time.monotonic()
            with torch.no_grad():
                work.forward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            row = {"length": L, "status": "ok", "seconds": time.monotonic() - t0}
            row.update(_used(models.get(provider), L, work.meta["chunk_size"], outputs))
            if device.type == "cuda":
                row["peak_mb"] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        except Unavailable:
            raise
        except Exception as e:  # noqa: BLE001 - the probe records how each length ended
            free_memory(torch.device(models.device))
            row = {"length": L, "status": "oom" if is_oom(e) else f"error: {type(e).__name__}: {e}"}
        results.append(row)
        if on_result is not None:
            on_result(row)
        if row["status"] != "ok":
            break
        last = row
    return results


def _used(model, length: int, chunk, outputs: str | None) -> dict:
    """The chunk and offload a fold ran with and, for an esmkernels model, the memory model's
    predicted device peak (MiB) for them."""
    if not hasattr(model, "last_offload"):
        return {"chunk_size": chunk}
    from esmkernels.models import fold_memory
    from esmkernels.ops._dispatch import resolve

    chunk, offload = model.last_chunk_size, model.last_offload
    predicted = fold_memory.predict_fold_peak_bytes(
        model.config, length, dtype=model.esm_s_combine.dtype,
        backend=resolve(model.backend, model.esm_s_combine), chunk_size=chunk,
        outputs=outputs or "full", offload=offload,
    )  # fmt: skip
    return {"chunk_size": chunk, "offload": offload, "predicted_mb": predicted / 2**20}
