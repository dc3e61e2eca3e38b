"""The packed ESM layer stack for inference on the torch backend (CPU): no FLOP on padding.

`EsmEncoder.forward` (models/esm.py) sends a packed batch here when nothing needs gradients
(`torch.no_grad` / `torch.inference_mode`), the backend resolves to "torch", and no attention
probabilities are asked for. The layers' own parameters and modules are used (no copy of the
weights), in the reference's order of operations:

    h = x + W_o · Attention(LN_1(x))          per sequence, over its own tokens only
    y = h + W_2 · gelu(W_1 · LN_2(h))

What makes it faster than running the reference layers on the packed tokens:

* Attention runs **per sequence** on its slice of the packed `[T, H, D]` projections (one SDPA
  call each, `[1, H, n_i, D]`): sum(n_i^2) score FLOPs instead of B * max(n_i)^2, and no gather
  into a padded batch and back (the torch path's `varlen` re-pads to the longest sequence).
* Query, key and value are one GEMM on a `[3C, C]` weight cached on the attention module
  (rebuilt when a projection's tensor changes, in place or replaced; it costs one more copy of
  those weights while the model runs inference). Measured on the 35M shape, skewed batch of 8,
  L = 256, 2 threads: 0.60 of transformers' time fused against 0.68 with three GEMMs.
* Rotary cos / sin `[T, D]` are computed once per forward (shared by every layer whose
  `inv_freq` equals the first layer's) in fp32 and rounded once to the hidden dtype, and applied
  as `x * cos + swap_halves(x) * sin_signed` (one concatenation, one in-place multiply-add, at
  the hidden dtype) instead of `rotate_half`'s chunk / negate / concatenate. In bf16 this took
  the 150M shape's rotary from ~0.2 s to ~0.03 s of a ~0.9 s forward (skewed 8 x 256, 2 threads).
* fp32 and bf16 projections run as oneDNN calls (`torch.ops.mkldnn._linear_pointwise`, the
  op inductor uses on the CPU) with the exact GELU fused into the up-projection (bf16 only where
  oneDNN runs bf16 on the CPU, `ONEDNN_DTYPES`); F.linear where that op is missing. The int8
  (and fallback) up-projections take the exact GELU in place. On the 2-core AMD EPYC (AVX-512,
  no AMX) of our CI, F.linear's fp32 GEMM (MKL) reached 100-170 GFLOP/s on the layer shapes and
  oneDNN 235-400. With the two items around this one, ESM-2 35M, skewed 8 x 256, fp32 forward:
  0.61 -> 0.35 s (A/B alternating in one process, 2 threads, load 0.5 -> 0.8). Residuals are
  added in place.
* The feed-forward runs on blocks of rows (equal blocks, each [rows, 4C] intermediate within
  FFN_BLOCK_BYTES): a fresh fp32 tensor above glibc's 32 MiB mmap threshold page-faults on every
  call (skewed 8 x 1,024 at 35M: [4,672, 1,920] fp32 is 36 MB), and smaller blocks stay in cache.
* The final LayerNorm runs on the packed tokens; the masked-LM head (`rows_head`) runs on the
  real rows only, padding rows get the head of a zero row, computed once (what they held
  before). The embeddings still run padded: elementwise work only (no matmul), 0.2% of a 35M
  forward on a skewed batch of 8 at L = 1,024 (12 ms of 6.7 s, 1 thread), below what a gather
  and scatter around them would save.

Not done, measured: `torch.compile` (inductor, dynamic token count) of the dense parts of a
layer (LN_1 + QKV + rotary; W_o + residual + LN_2 + feed-forward + residual; one graph for all
layers), attention left eager. ESM-2 35M, 1 thread, eager and compiled alternating, median of
5, load ~4 on 2 cores: compiled / eager 1.13 / 1.00 / 0.96 in fp32 and 1.15 / 1.20 / 1.12 in
bf16 (skewed 8 x 256, uniform 4 x 256, skewed 8 x 1,024), after a first call that compiles for
5-30 s. The GEMMs (MKL / oneDNN in both) dominate; there is nothing to ship.

Precision: LayerNorm statistics are fp32 (PyTorch's CPU kernel accumulates bf16 input in fp32);
rotary is applied at the hidden dtype (bf16: cos / sin rounded to bf16, as transformers does);
oneDNN's fp32 GEMMs compute in fp32 (unless the user lowers `torch.backends.mkldnn`'s fp32
matmul precision); SDPA runs at the input dtype with fp32 softmax statistics (the CPU flash
kernel's accumulators are fp32). Linear layers that are not plain `nn.Linear` (PEFT LoRA, int8
dynamic quantized linears from `models/quantize.py`) are called as modules, so they keep
working.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _onednn_linear():
    """oneDNN's linear with a fused epilogue (`torch.ops.mkldnn._linear_pointwise`, what
    inductor calls on the CPU), or None where this build of PyTorch lacks it."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


def _onednn_dtypes() -> frozenset:
    """The dtypes `_affine` sends to oneDNN: fp32, and bf16 where PyTorch says oneDNN runs bf16
    on this CPU (`torch.ops.mkldnn._is_mkldnn_bf16_supported`; on x86 it asks for AVX-512
    BW/VL/DQ). Elsewhere F.linear serves bf16."""
    if ONEDNN_LINEAR is None:
        return frozenset()
    try:
        bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        bf16 = False
    return frozenset({torch.float32, torch.bfloat16} if bf16 else {torch.float32})


ONEDNN_LINEAR = _onednn_linear()
ONEDNN_DTYPES = _onednn_dtypes()


def _gelu_(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU in place on a fresh projection output (same bits as F.gelu): one [rows, 4C]
    tensor a block fewer. int8 forwards, A/B alternating, 2 threads, load ~1: 0.52 -> 0.41 s at
    35M skewed 8 x 512, 0.79 -> 0.57 s at 150M skewed 8 x 256."""
    return torch.ops.aten.gelu_(x)


def _affine(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, gelu: bool = False):
    """x @ w.T + b, then exact gelu when asked. CPU tensors of a dtype in ONEDNN_DTYPES run as
    one oneDNN call with gelu fused (fp32: ~2x the throughput of F.linear's BLAS GEMM, measured
    on a 2-core AMD EPYC); anything else F.linear (+ exact GELU in place)."""
    if (
        ONEDNN_LINEAR is not None
        and w.device.type == "cpu"
        and w.dtype in ONEDNN_DTYPES
        and x.dtype == w.dtype
    ):
        return ONEDNN_LINEAR(x, w, b, *(("gelu", [], "none") if gelu else ("none", [], "")))
    out = F.linear(x, w, b)
    return _gelu_(out) if gelu else out


def _linear(module: nn.Module, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """module(x) (+ exact gelu); a plain `nn.Linear` goes through `_affine`, anything else
    (LoRA, int8) is called as a module."""
    if type(module) is nn.Linear:
        return _affine(x, module.weight, module.bias, gelu)
    out = module(x)
    return _gelu_(out) if gelu else out


def _layer_norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), module.weight, module.bias, module.eps)


def rotary_tables(
    positions: torch.Tensor, inv_freq: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [T] -> (cos [T, 1, D], sin_signed [T, 1, D]) in fp32, for `rotate`.

    sin_signed is sin with its first half negated, so that rotate_half(x) * sin equals
    swap_halves(x) * sin_signed."""
    theta = positions.float()[:, None] * inv_freq.float()[None, :]  # [T, D/2]
    sin = theta.sin()
    cos = theta.cos()
    return torch.cat((cos, cos), -1)[:, None], torch.cat((-sin, sin), -1)[:, None]


class Rope:
    """One forward's rotary tables at the hidden dtype: (cos, sin_signed) [T, 1, D], and for 16-bit
    dtypes copies expanded to [T, heads, D], made once per head count and shared by the layers:
    a 16-bit product broadcast over heads runs on rows of D elements, which vectorize poorly (bf16,
    D = 24: 1.95 ms against 0.48 ms expanded, [1,114, 40, 24], 2 threads; fp32 gains nothing)."""

    def __init__(self, positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype):
        self.inv_freq = inv_freq
        self.cos, self.sin = (t.to(dtype) for t in rotary_tables(positions, inv_freq))
        self._expanded: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def tables(self, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin_signed) for `rotate` on x [T, heads, D]."""
        if self.cos.element_size() >= 4:
            return self.cos, self.sin
        if heads not in self._expanded:
            T, _, D = self.cos.shape
            self._expanded[heads] = tuple(
                t.expand(T, heads, D).contiguous() for t in (self.cos, self.sin)
            )
        return self._expanded[heads]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """x [T, H, D] <- x * cos + rotate_half(x) * sin **in place** (x may be a view into the fused
    QKV output), in the dtype of x (pass cos / sin in it: a mixed bf16 x fp32 broadcast product ran
    ~7x slower than the same-dtype one). Returns x; in place, one [T, H, D] temporary a layer
    fewer (same bits; no speed change measured)."""
    half = x.shape[-1] // 2
    swapped = torch.cat((x[..., half:], x[..., :half]), -1)  # faster than flip on the halves
    return x.mul_(cos).addcmul_(swapped, sin_signed)


def qkv_weights(core: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The query, key and value projections as one [3C, C] weight and [3C] bias, cached on the
    module until any of the six tensors changes (in place or replaced); None unless all three are
    plain `nn.Linear` with biases (LoRA and quantized linears are called one by one)."""
    mods = (core.query, core.key, core.value)
    if any(type(m) is not nn.Linear or m.bias is None for m in mods):
        return None
    tensors = [t for m in mods for t in (m.weight, m.bias)]
    key = tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)
    cached = core.__dict__.get("_packed_qkv")
    if cached is None or cached[0] != key:
        weight = torch.cat([m.weight for m in mods])
        bias = torch.cat([m.bias for m in mods])
        cached = core.__dict__["_packed_qkv"] = (key, weight, bias)
    return cached[1], cached[2]


def attention(
    layer: nn.Module, x: torch.Tensor, bounds: list[int], rope: Rope | None
) -> torch.Tensor:
    """The attention block's context before W_o. x [T, C] (already LayerNormed) -> [T, C]."""
    core = layer.attention.self
    T = x.shape[0]
    H, D = core.num_attention_heads, core.attention_head_size
    fused = qkv_weights(core)
    if fused is not None:
        qkv = _affine(x, *fused).view(T, 3 * H, D)
        qk, v = qkv[:, : 2 * H], qkv[:, 2 * H :]
        if rope is not None:
            qk = rotate(qk, *rope.tables(2 * H))
        q, k = qk[:, :H], qk[:, H:]
    else:
        q = _linear(core.query, x).view(T, H, D)
        k = _linear(core.key, x).view(T, H, D)
        v = _linear(core.value, x).view(T, H, D)
        if rope is not None:
            q, k = rotate(q, *rope.tables(H)), rotate(k, *rope.tables(H))
    outs = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        if e > s:
            heads = (t[s:e].transpose(0, 1)[None] for t in (q, k, v))  # [1, H, n, D]
            outs.append(F.scaled_dot_product_attention(*heads)[0].transpose(0, 1))
    if not outs:  # no tokens at all
        return x.new_zeros(T, H * D)
    ctx = outs[0] if len(outs) == 1 else torch.cat(outs)  # [T, H, D]
    return ctx.reshape(T, H * D)


FFN_BLOCK_BYTES = 16 << 20


def feed_forward(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """h + W_2 · gelu(W_1 · LN_2(h)), in place into h [T, C], a block of rows at a time.

    Each block's [rows, 4C] intermediate stays within FFN_BLOCK_BYTES (cache-sized, and never a
    fresh allocation above glibc's 32 MiB mmap threshold, which page-faults on every call)."""
    inter = layer.intermediate.dense
    width = getattr(layer.output.dense, "in_features", 1)  # 4C; LoRA / int8 linears have it too
    T = h.shape[0]
    blocks = max(1, -(-T * width * 4 // FFN_BLOCK_BYTES))  # fp32 outputs (int8 layers too)
    rows = -(-T // blocks)  # equal blocks: no small tail GEMM
    for s in range(0, T, rows):
        blk = h[s : s + rows]
        up = _linear(inter, _layer_norm(layer.LayerNorm, blk), gelu=True)
        blk.add_(_linear(layer.output.dense, up))
    return h


def layer_forward(layer: nn.Module, x: torch.Tensor, bounds: list[int], rope) -> torch.Tensor:
    """One ESM layer on packed tokens. x [T, C] -> [T, C]; bounds: the cu_seqlens as ints."""
    ctx = attention(layer, _layer_norm(layer.attention.LayerNorm, x), bounds, rope)
    h = _linear(layer.attention.output.dense, ctx).add_(x)
    return feed_forward(layer, h)


def rows_head(head: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """head(h) computed on the rows of h [..., C] that are not all zero; the all-zero rows
    (padding, in the fast models' hidden states) get head(zeros [1, C]), computed once. Equal to
    head(h) for any h, up to GEMM rounding. Returns [..., V]."""
    flat = h.reshape(-1, h.shape[-1])
    rows = flat.ne(0).any(-1).nonzero().squeeze(1)
    if rows.numel() == flat.shape[0]:
        return head(h)
    # The zero row rides in the same GEMM as the real rows: a one-row product takes BLAS's
    # matrix-vector path, whose rounding can depend on the weight's alignment (memory-mapped
    # checkpoints are not 64-byte aligned).
    picked = torch.cat([flat.index_select(0, rows), flat.new_zeros(1, flat.shape[-1])])
    done = head(picked)  # [n + 1, V]
    out = done[-1:].expand(flat.shape[0], -1).clone()
    out.index_copy_(0, rows, done[:-1])
    return out.view(*h.shape[:-1], out.shape[-1])


def encoder_forward(
    encoder: nn.Module,
    x: torch.Tensor,
    cu_seqlens: torch.Tensor,
    position_ids: torch.Tensor | None,
    output_hidden_states: bool,
) -> tuple[torch.Tensor, tuple | None]:
    """The packed layer stack. x [T, C]; cu_seqlens [B + 1]; position_ids [T] rotary positions
    (None: no rotary). Returns (last hidden state [T, C] after emb_layer_norm_after, the
    hidden states of every layer as [T, C] or None)."""
    bounds = cu_seqlens.tolist()
    hidden: list[torch.Tensor] = []
    rope = None
    for layer in encoder.layer:
        if output_hidden_states:
            hidden.append(x)
        rot = layer.attention.self.rotary_embeddings
        if rot is None or position_ids is None:
            layer_rope = None
        else:
            if rope is None or not torch.equal(rot.inv_freq, rope.inv_freq):
                rope = Rope(position_ids, rot.inv_freq, x.dtype)
            layer_rope = rope
        x = layer_forward(layer, x, bounds, layer_rope)
    x = _layer_norm(encoder.emb_layer_norm_after, x)
    if output_hidden_states:
        hidden.append(x)
    return x, tuple(hidden) if output_hidden_states else None
