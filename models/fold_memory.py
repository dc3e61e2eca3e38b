"""Memory model of one ESMFold fold, the automatic chunk size, and a tensor-byte tracker.

`predict_fold_peak_bytes` predicts the peak of the bytes of tensors a fold (`forward` in
inference) allocates on top of the loaded model, from the configuration, the length L, the
batch, the dtype, the backend and the chunk size. It is written from the code's allocations
(`esmkernels.reference.esmfold` with the ops of `esmkernels.models.esmfold`), not fitted to
measurements: each phase below lists the tensors alive at its high-water mark, and the peak is
the largest phase. Notation: b batch, e the activation element size, f = 4 (fp32), R the rows
per chunk (min(chunk_size, L), L when unchunked), "block(c)" = b * R * L * c elements, and the
pair tensor z = b * L^2 * c_z * e bytes.

- stem: the ESM-2 hidden states of every layer, twice (the stem's tuple and their stack), plus
  one layer's feed-forward and attention temporaries (flash attention: no [H, L, L] scores);
- pass input: z, the recycled distogram bins (int64) and three blocks of embeddings;
- per block, with z alive: the sequence attention (its [b, H_s, L, L] pair bias and two blocks of
  fp32 logits), sequence->pair (two blocks), both triangle multiplications (torch: x in the
  contraction dtype plus three channel slices [b, h, L, L]; Triton: x, a and b slices, then
  one block of output rows at a time, added into z; offloaded, x is on the host and one row
  block of it on the device), both triangle attentions (their [b, L, L, H] bias, q, k, v, gate
  and the output for R rows, the torch path's two [b, R, H, R, L] fp32 logits) and the pair
  transition (eight blocks: its 4 c_z hidden layer and ReLU);
- structure module: z, its own pair tensor (chunked: one block of its rows, made from z per
  block of queries), and one block of invariant point attention (fp32 point differences
  [b, R, L, H, P_qk, 3] and logits);
- heads, `outputs="full"`: z and the [b, L, L, 64] distogram, pTM logits and aligned-error
  probabilities (outputs of the API) plus one block of softmax temporaries; `outputs="lean"`:
  z, the [b, L, L] PAE and one block of pTM logits and their softmax (the heads' outputs are
  2.5 pair tensors at c_z = 128 in full mode, 0.01 in lean mode).

The floor (esmfold_v1, bf16, Triton path, the best chunk; `python -m bench.fold_long_table`):
at L = 10,000 one pair tensor z is 23.8 GiB. On the device alone the lean peak is 50.7 GiB
(2.1 pair tensors), the triangle multiplication: z, its contraction x [b, c, L, L] and a | b
channel slices (1/8 of a pair); its update is added into z a row block at a time. Every output
row depends on every input row and z is updated in place, so a pair-sized record of the
pre-update z must live beside z: 2 pair tensors is that phase's floor on the device. With
`offload=True` x lives in host memory (`predict_host_bytes`) and comes back a row block at a
time: the op holds z and 3/16 of a pair, and the peak moves to the sequence attention (z and
its [b, L, L, H_s] bias, 30.1 GiB): 36.6 GiB with the weights at 10k, 86.9 GiB at 16,384. The
structure module's own pair tensor is made one block of rows at a time from z in chunked
inference (`RowMap`), so no phase holds two pair tensors then. Full outputs add 1.5 pair
tensors of head outputs beside z (60.6 GiB).

`auto_chunk_size` picks the chunk for the call's output mode: among powers of two (and None,
"unchunked") whose predicted peak fits `free_bytes` (CUDA: free device memory; CPU: available
RAM) less a safety margin, memory when it must and speed when it can: the largest within
`LEAN_SLACK` of the smallest achievable peak, unless a faster one fits comfortably (within
`COMFORT` of the budget): the largest such on the Triton path, at least `MIN_FAST_ROWS` rows per
block on the PyTorch path (so short folds run unchunked). If even the smallest chunk does not
fit, it raises before any work starts, naming L and the predicted and free bytes. A fold that still runs out of memory is
retried by `infer`, alone at half the chunk size down to a floor, then raises naming L and the
chunk sizes tried (`esmkernels.reference.esmfold.inference`); so an API user gets it too.

`track_peak_bytes` measures what the model predicts: the peak of live tensor bytes allocated
under it (a `TorchDispatchMode` that counts each new storage until it is freed), on any device.

Example:
    >>> from esmkernels.core.configuration import EsmConfig
from esmkernels.core.tracking import TrackedBytes, track_peak_bytes
    >>> cfg = esmfold_v1_config()
    >>> predict_fold_peak_bytes(cfg, 1024, dtype=torch.bfloat16, chunk_size=64) > 0
    True
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from esmkernels.core.configuration import EsmConfig
from esmkernels.core.tracking import TrackedBytes, track_peak_bytes
from esmkernels.models.fold_cost import parameter_count
from esmkernels.ops._dispatch import RESOLVED as BACKENDS
from esmkernels.ops.trimul import channel_slice

# Auto chunk: keep the predicted peak within this factor of the smallest achievable one.
LEAN_SLACK = 1.25
# Auto chunk: use at most this fraction of the free memory (allocator fragmentation, the
# model's own O(L) tensors, other processes).
SAFETY_MARGIN = 0.15
# Auto chunk, speed first: a fold "fits comfortably" when its peak is at most this fraction of
# the budget; then a bigger chunk costs nothing that matters.
COMFORT = 0.5
# Auto chunk on the PyTorch path: fewer rows per block than this cost time in per-block
# overhead (measured on CPU: chunk 16 at L = 64 took 1.2x the unchunked time).
MIN_FAST_ROWS = 64
OUTPUT_MODES = ("full", "lean")
DISTOGRAM_BINS = 64
LDDT_BINS = 50

__all__ = [
    "BACKENDS",
    "COMFORT",
    "LEAN_SLACK",
    "MIN_FAST_ROWS",
    "OFFLOAD_MODES",
    "OUTPUT_MODES",
    "SAFETY_MARGIN",
    "TrackedBytes",
    "auto_chunk_size",
    "auto_fold_plan",
    "esmfold_v1_config",
    "free_memory_bytes",
    "model_weight_bytes",
    "predict_fold_memory",
    "predict_fold_peak_bytes",
    "predict_host_bytes",
    "track_peak_bytes",
]


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dims:
    b: int
    L: int
    e: int  # activation element size
    xe: int  # triangle contraction element size (fp32 for fp16: it overflows)
    low: bool  # bf16 / fp16: reference layer_norm makes fp32 copies
    c_s: int
    c_z: int
    h_s: int
    h_z: int
    stem_c: int
    stem_layers: int
    stem_ffn: int
    stem_heads: int
    sm_s: int
    sm_z: int
    ipa_h: int
    ipa_c: int
    ipa_pq: int
    ipa_pv: int
    lddt_hid: int
    num_blocks: int
    sm_blocks: int

    @classmethod
    def of(cls, config: EsmConfig, length: int, batch: int, dtype: torch.dtype) -> _Dims:
        fold = config.esmfold_config
        t = fold.trunk
        sm = t.structure_module
        e = torch.empty((), dtype=dtype).element_size()
        return cls(
            b=batch,
            L=length,
            e=e,
            xe=4 if dtype == torch.float16 else e,
            low=e < 4,
            c_s=t.sequence_state_dim,
            c_z=t.pairwise_state_dim,
            h_s=t.sequence_state_dim // t.sequence_head_width,
            h_z=t.pairwise_state_dim // t.pairwise_head_width,
            stem_c=config.hidden_size,
            stem_layers=config.num_hidden_layers,
            stem_ffn=config.intermediate_size,
            stem_heads=config.num_attention_heads,
            sm_s=sm.sequence_dim,
            sm_z=sm.pairwise_dim,
            ipa_h=sm.num_heads_ipa,
            ipa_c=sm.ipa_dim,
            ipa_pq=sm.num_qk_points,
            ipa_pv=sm.num_v_points,
            lddt_hid=fold.lddt_head_hid_dim,
            num_blocks=t.num_blocks,
            sm_blocks=sm.num_blocks,
        )


def _check(config, length, batch, dtype, backend, chunk_size) -> None:
    if not isinstance(config, EsmConfig) or config.esmfold_config is None:
        raise TypeError(
            f"fold memory: config must be an ESMFold EsmConfig, got {type(config).__name__}"
        )
    for name, v in (("length", length), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"fold memory: {name}={v!r} must be a positive int")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"fold memory: dtype={dtype!r} is not float32, bfloat16 or float16")
    if backend not in BACKENDS:
        raise ValueError(f"fold memory: backend={backend!r} is not one of {BACKENDS}")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"fold memory: chunk_size={chunk_size!r} must be a positive int or None")


def predict_fold_memory(
    config: EsmConfig,
    length: int,
    *,
    batch: int = 1,
    dtype: torch.dtype = torch.float32,
    backend: str = "torch",
    chunk_size: int | None = None,
    outputs: str = "full",
    offload: bool = False,
) -> dict[str, int]:
    """Predicted high-water mark (bytes) of each phase of a fold; see the module docstring.

    `outputs` is the `forward` output mode, "full" or "lean"; it changes the "heads" phase.
    `offload`: the triangle multiplication keeps its contraction in host memory (device bytes
    only are predicted here; `predict_host_bytes` gives the host's).

    Returns a dict phase -> bytes ("stem", "input", "seq_attention", "seq_to_pair",
    "tri_mul", "tri_att", "pair_mlp", "structure", "heads").
    """
    _check(config, length, batch, dtype, backend, chunk_size)
    if outputs not in OUTPUT_MODES:
        raise ValueError(f"fold memory: outputs={outputs!r} is not one of {OUTPUT_MODES}")

    d = _Dims.of(config, length, batch, dtype)
    b, L, e, f = d.b, d.L, d.e, 4
    R = L if chunk_size is None else min(chunk_size, L)  # rows (and queries) per block
    chunked = R < L

    def block(c: int, size: int = e) -> int:
        """Bytes of one block of R rows: [b, R, L, c]."""
        return b * R * L * c * size

    def pair(c: int, size: int = e) -> int:
        return b * L * L * c * size

    def layer_norm(c: int) -> int:
        """Peak of the reference (functional) layer_norm on a block: fp32 copies in low precision."""
        return 2 * block(c, f) + block(c) if d.low else block(c)

    z = pair(d.c_z)
    single = 4 * b * L * d.c_s * e  # s_0, s, the recycled s and a sequence temporary
    phases: dict[str, int] = {}

    # Stem: all hidden states twice (the stem's tuple and their stack), one layer's temporaries.
    # Its attention never holds [H, L, L] scores: the packed path calls SDPA per sequence (its
    # flash kernel, on CPU and CUDA) and the Triton path is a flash kernel.
    tokens = b * (L + 2)
    hidden = tokens * (d.stem_layers + 1) * d.stem_c * e
    # A layer: q | k | v and the output, and q | k in fp32 for rotary (three copies; four with
    # the cast from bf16); or the feed-forward's hidden layer and its GELU.
    attention = tokens * d.stem_c * (4 * e + 2 * f * (4 if d.low else 3))
    layer = max(attention, tokens * (2 * d.stem_ffn + 2 * d.stem_c) * e)
    phases["stem"] = 2 * hidden + layer

    # Pass input: z, the int64 recycling bins, three blocks of embeddings and int64 indices.
    phases["input"] = z + pair(1, 8) + 3 * block(d.c_z) + 3 * block(1, 8) + single

    # Sequence attention: its pair bias [b, L, L, H_s] (made one block at a time), then, one
    # row with blocks of R queries: fp32 logits and their softmax [b, H_s, R, L].
    bias_s = pair(d.h_s)
    logits_s = b * d.h_s * R * L * f
    seq_attention = max(block(d.c_z) + block(d.h_s), 2 * logits_s)
    # ... with the sequence's LayerNorm, q | k | v, gate, fp32 keys and values, output.
    phases["seq_attention"] = z + bias_s + seq_attention + single + 7 * b * L * d.c_s * e

    # Sequence -> pair: the product / difference halves and their concatenation, then o_proj.
    phases["seq_to_pair"] = z + 2 * block(d.c_z) + single

    # Triangle multiplication.
    n = channel_slice(chunk_size, L, d.c_z)  # hidden channels per slice
    plane = b * L * L * n * e  # one channel slice [b, n, L, L]
    x = pair(d.c_z, d.xe)
    if backend == "torch":  # lean torch path: x, then a | b, their product; output over x
        project = 2 * plane + max(layer_norm(d.c_z), block(d.c_z) + 3 * block(2 * n))
        contract = 3 * plane + (3 * b * L * L * n * f if d.xe != e else 0)
        output = max(block(d.c_z) + layer_norm(d.c_z if d.xe == e else 2 * d.c_z), 3 * block(d.c_z))
        if offload:  # x on the host; its row block copied back, the update added into z
            output += block(d.c_z, d.xe)
            phases["tri_mul"] = z + max(project, contract, output) + single
        else:
            output += 0 if d.xe == e else block(d.c_z)  # the update is not written over fp32 x
            phases["tri_mul"] = z + x + max(project, contract, output) + single
    elif offload:  # kernels: a, b and x slices (x copied out), then x's row block and output
        phases["tri_mul"] = (
            z + max(2 * plane + b * L * L * n * d.xe, block(d.c_z, d.xe) + block(d.c_z)) + single
        )
    else:  # kernels: x, a and b slices, then one block of output rows added into z
        phases["tri_mul"] = z + x + max(2 * plane, block(d.c_z)) + single

    # Triangle attention: its bias [b, L, L, H] (one block at a time), then per block of R rows
    # the layer norm and q, k, v, gate, the attention and the output projection (ending node:
    # a transposed copy of the attention output first).
    bias_z = pair(d.h_z)
    if backend == "torch":  # keys and values in fp32 [b, R, H, L, D], per block of R queries
        q_blk = b * R * R * d.c_z * f  # the scaled fp32 queries
        logits = b * R * d.h_z * R * L * f
        attend = 2 * block(d.c_z, f) + max(q_blk + logits, 2 * logits, 3 * q_blk)
        attend += block(d.c_z) if chunked else 0  # the query blocks' assembled output
    else:  # the kernel's output and log-sum-exp
        attend = block(d.c_z) + b * R * d.h_z * L * f
    att = max(5 * block(d.c_z), 4 * block(d.c_z) + attend, 7 * block(d.c_z))
    phases["tri_att"] = z + bias_z + att + single

    # Pair transition: 4 c_z hidden channels and their ReLU.
    phases["pair_mlp"] = z + 8 * block(d.c_z) + single

    # Structure module: z, its own pair tensor (chunked inference: one block of its rows, made
    # from z when a block of queries needs it, `RowMap`), one block of invariant point
    # attention: fp32 query-key point differences and their squares [b, R, L, H, P, 3],
    # logits and softmax.
    sm_pair = block(d.sm_z) if chunked else pair(d.sm_z)
    h = d.ipa_h
    ipa = 2 * block(3 * h * d.ipa_pq, f) + 3 * block(h, f) + block(h)
    ipa = max(ipa, block(h * d.ipa_pq, f) * 2 + 2 * block(h, f), block(d.sm_z) + block(d.sm_z, f))
    # Chunked, the blocks' assembled fp32 output [b, L, H (C + 3 P_v + c_z)] is alive with them.
    ipa += b * L * h * (d.ipa_c + 3 * d.ipa_pv + d.sm_z) * f if chunked else 0
    sm_out = d.sm_blocks * b * L * ((7 + 128 + 42) * f + (28 + d.sm_s) * e)
    phases["structure"] = z + sm_pair + ipa + sm_out + single

    # Heads. pLDDT logits [8, b, L, 37 * 50] either way. Full: z and the outputs distogram, pTM
    # logits, aligned-error probabilities and PAE, one block of softmax temporaries. Lean: z, the
    # PAE and one block of logits and their softmax (`aligned_error_from_pair`).
    head = pair(DISTOGRAM_BINS)
    lddt = d.sm_blocks * b * L * 37 * LDDT_BINS * e
    rest = lddt + sm_out + 2 * b * L * d.c_s * e
    if outputs == "full":
        temps = max(3 * block(DISTOGRAM_BINS) + block(d.c_z), 2 * block(DISTOGRAM_BINS))
        # Unchunked, chunk_rows returns the one block itself: no assembled copy beside it.
        temps = temps if chunked else block(DISTOGRAM_BINS)
        phases["heads"] = z + 3 * head + pair(1) + temps + rest
    else:
        phases["heads"] = z + pair(1) + 2 * block(DISTOGRAM_BINS) + 2 * block(1) + rest
    return phases


def predict_fold_peak_bytes(
    config: EsmConfig,
    length: int,
    *,
    batch: int = 1,
    dtype: torch.dtype = torch.float32,
    backend: str = "torch",
    chunk_size: int | None = None,
    include_weights: bool = False,
    outputs: str = "full",
    offload: bool = False,
) -> int:
    """Predicted peak bytes of the tensors one fold allocates on its device (the largest phase
    of `predict_fold_memory`), plus the model's parameters when `include_weights`.

    Args:
        config: an ESMFold `EsmConfig`.
        length: residues per sequence (the padded length L of the batch).
        batch: sequences in the batch.
        dtype: the model's dtype (`from_pretrained(..., dtype=...)`).
        backend: "torch" (the CPU path) or "triton" (kernels, CUDA).
        chunk_size: the model's chunk size (None: unchunked).
        include_weights: add `model_weight_bytes(config, dtype)`.
        outputs: the output mode, "full" or "lean" (`EsmForProteinFolding.forward`).
        offload: the triangle multiplication's contraction lives in host memory.
    """
    phases = predict_fold_memory(
        config,
        length,
        batch=batch,
        dtype=dtype,
        backend=backend,
        chunk_size=chunk_size,
        outputs=outputs,
        offload=offload,
    )
    peak = max(phases.values())
    return peak + (model_weight_bytes(config, dtype) if include_weights else 0)


def predict_host_bytes(
    config: EsmConfig,
    length: int,
    *,
    batch: int = 1,
    dtype: torch.dtype = torch.float32,
    offload: bool = True,
) -> int:
    """Host memory an offloaded fold holds beside the model: the triangle multiplication's
    contraction [b, L, L, c_z] (fp32 for fp16 models); 0 without offload."""
    _check(config, length, batch, dtype, "torch", None)
    d = _Dims.of(config, length, batch, dtype)
    return d.b * d.L * d.L * d.c_z * d.xe if offload else 0


def model_weight_bytes(config: EsmConfig, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of an `EsmForProteinFolding`'s parameters and buffers in `dtype`, from the
    configuration alone (`esmkernels.models.fold_cost.parameter_count`; nothing is built)."""
    floats, ints = parameter_count(config)
    return floats * torch.empty((), dtype=dtype).element_size() + ints * 8


# ------------------------------------------------------------------------------------------------
# Automatic chunk size
# ------------------------------------------------------------------------------------------------


def free_memory_bytes(device: torch.device | str | None = None) -> int:
    """Free memory where a fold would run: CUDA free device memory (plus what PyTorch's
    allocator caches but does not use), else the CPU's available RAM (`MemAvailable`)."""
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        reserved = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + reserved)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
    return int(pages * os.sysconf("SC_PAGE_SIZE")) if pages else 0


def _candidates(length: int) -> list[int | None]:
    """Chunk sizes auto considers, smallest first: powers of two below L, then None."""
    out: list[int | None] = [2**k for k in range(max(1, math.ceil(math.log2(max(length, 2)))))]
    return [c for c in out if c < length] + [None]


def auto_chunk_size(
    config: EsmConfig,
    length: int,
    *,
    batch: int = 1,
    dtype: torch.dtype = torch.float32,
    backend: str = "torch",
    device: torch.device | str | None = None,
    free_bytes: int | None = None,
    margin: float = SAFETY_MARGIN,
    outputs: str = "full",
    offload: bool = False,
) -> int | None:
    """The chunk size a fold of `batch` x `length` residues should use (None: unchunked).

    Candidates are powers of two below L, then None. The budget is (1 - margin) * free_bytes.

    1. Memory when it must: the largest candidate whose predicted peak fits the budget and is
       at most `LEAN_SLACK` times the smallest candidate's peak (bigger blocks only spend
       memory there).
    2. Speed when memory is plentiful, among candidates whose peak is at most `COMFORT` of the
       budget: on the Triton path (GPU) the largest of them (fewest launches; unchunked when it
       fits comfortably); on the PyTorch path at least `MIN_FAST_ROWS` rows per block (the
       smallest such candidate, unchunked for L <= 64), since per-block overhead dominates
       smaller blocks while on a CPU big blocks fall out of cache.

    Args:
        config, length, batch, dtype, backend, outputs, offload: as `predict_fold_peak_bytes`.
        device: where the fold runs, for `free_memory_bytes` when `free_bytes` is None.
        free_bytes: the memory the fold may use (the model already loaded); default the
            device's free memory.
        margin: fraction of `free_bytes` kept free.

    Raises:
        MemoryError: before any work, when even the smallest chunk's predicted peak does not
            fit; the message names L, the predicted and the free bytes.

    Example:
        >>> auto_chunk_size(esmfold_v1_config(), 64, free_bytes=2**40) is None  # plenty: unchunked
        True
    """
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"auto_chunk_size: margin={margin!r} must be in [0, 1)")
    if free_bytes is None:
        free_bytes = free_memory_bytes(device)
    budget = int(free_bytes * (1.0 - margin))
    peaks = {
        c: predict_fold_peak_bytes(
            config,
            length,
            batch=batch,
            dtype=dtype,
            backend=backend,
            chunk_size=c,
            outputs=outputs,
            offload=offload,
        )
        for c in _candidates(length)
    }
    floor = min(peaks.values())
    if floor > budget:
        raise MemoryError(
            f"ESMFold: a fold of L={length} (batch {batch}, {dtype}, backend {backend}, "
            f"{outputs} outputs{', offload' if offload else ''}) needs about {floor / 2**30:.2f} GiB ({floor} bytes) even at the "
            f"smallest chunk size, but only {free_bytes / 2**30:.2f} GiB ({free_bytes} bytes) are "
            f"free ({margin:.0%} kept as margin)"
        )
    limit = min(budget, int(floor * LEAN_SLACK))
    chosen: int | None = 1
    for c, peak in peaks.items():  # ascending chunk sizes: keep the last that fits
        if peak <= limit:
            chosen = c
    rows = {c: length if c is None else c for c in peaks}
    comfortable = [c for c, peak in peaks.items() if peak <= COMFORT * budget]
    if backend != "triton":  # the smallest comfortable block of at least MIN_FAST_ROWS rows
        comfortable = [c for c in comfortable if rows[c] >= min(MIN_FAST_ROWS, length)][:1]
    if comfortable and rows[comfortable[-1]] > rows[chosen]:
        chosen = comfortable[-1]
    return chosen


OFFLOAD_MODES = (False, True, "auto")


def auto_fold_plan(
    config: EsmConfig,
    length: int,
    *,
    batch: int = 1,
    dtype: torch.dtype = torch.float32,
    backend: str = "torch",
    device: torch.device | str | None = None,
    free_bytes: int | None = None,
    host_free_bytes: int | None = None,
    margin: float = SAFETY_MARGIN,
    outputs: str = "full",
    offload: bool | str = "auto",
    chunk_size: int | str | None = "auto",
) -> tuple[int | None, bool]:
    """(chunk size, offload) for a fold: `auto_chunk_size` without offload when the fold fits
    so; else, with `offload="auto"` on a GPU, with the triangle contraction offloaded to the
    host, if the host has room for it (`predict_host_bytes`). With a given `chunk_size` (an
    int or None) that chunk is kept and only the offload is chosen, without raising (the
    out-of-memory retry of `infer` sets the chunk itself).

    Offload only moves bytes off a GPU: on a CPU host and device are one memory, so "auto"
    never offloads there (True still does: it exercises the path). `free_bytes` given without
    a device plans for a GPU that is not at hand (`fold --plan --memory`).

    Raises:
        MemoryError: before any work, when the fold fits neither way; the message names L and
            the predicted device and host bytes.

    Example:
        >>> auto_fold_plan(esmfold_v1_config(), 64, free_bytes=2**40)
        (None, False)
    """
    if offload not in OFFLOAD_MODES:
        raise ValueError(f"fold memory: offload={offload!r} is not one of {OFFLOAD_MODES}")
    kwargs = dict(batch=batch, dtype=dtype, backend=backend, device=device,
                  free_bytes=free_bytes, margin=margin, outputs=outputs)  # fmt: skip
    on_gpu = torch.device("cuda" if device is None and free_bytes is not None else device or "cpu")
    if chunk_size != "auto":
        if offload != "auto" or on_gpu.type != "cuda":
            return chunk_size, bool(offload is True)
        free = free_memory_bytes(device) if free_bytes is None else free_bytes
        peak = predict_fold_peak_bytes(
            config, length, batch=batch, dtype=dtype, backend=backend, chunk_size=chunk_size,
            outputs=outputs,
        )  # fmt: skip
        return chunk_size, peak > free * (1.0 - margin)
    if offload is True:
        return auto_chunk_size(config, length, **kwargs, offload=True), True
    try:
        return auto_chunk_size(config, length, **kwargs), False
    except MemoryError:
        if offload is False or on_gpu.type != "cuda":
            raise
    chunk = auto_chunk_size(config, length, **kwargs, offload=True)
    host = predict_host_bytes(config, length, batch=batch, dtype=dtype)
    host_free = free_memory_bytes("cpu") if host_free_bytes is None else host_free_bytes
    if host > host_free * (1.0 - margin):
        raise MemoryError(
            f"ESMFold: a fold of L={length} fits the device only with its triangle "
            f"contraction offloaded, which needs {host / 2**30:.2f} GiB of host memory, but only "
            f"{host_free / 2**30:.2f} GiB are free ({margin:.0%} kept as margin)"
        )
    return chunk, True


def esmfold_v1_config(num_blocks: int = 48) -> EsmConfig:
    """The published esmfold_v1 architecture (ESM-2 3B stem, 48 trunk blocks), for the model."""
    from esmkernels.core.configuration import ESM_VOCAB

    stem = dict(
        vocab_size=33,
        pad_token_id=1,
        mask_token_id=32,
        hidden_size=2560,
        num_hidden_layers=36,
        num_attention_heads=40,
        intermediate_size=10240,
        position_embedding_type="rotary",
        token_dropout=True,
        emb_layer_norm_before=False,
        vocab_list=list(ESM_VOCAB),
    )
    trunk = dict(num_blocks=num_blocks, chunk_size=None)
    return EsmConfig(**stem, is_folding_model=True, esmfold_config=dict(trunk=trunk))
