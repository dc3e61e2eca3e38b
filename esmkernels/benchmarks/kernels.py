"""Kernel-level cases: the four ops at ESM-2 / ESMFold shapes, against their PyTorch peers.

Cases (`length` L is the sequence length):

- `layer_norm`: x [B, L, hidden], B = ln_tokens // L (ESM-2 650M hidden 1280).
- `rotary_attention`: q, k, v [B, L, H, D], B = attn_tokens // L, no padding (650M: H=20, D=64).
- `rotary_attention_varlen`: a skewed batch of `varlen_seqs` sequences of 50..L tokens (seeded):
  the kernel runs it packed (cu_seqlens), the peers padded to L with a key mask.
- `trimul_out` / `trimul_in`: ESMFold's triangle multiplicative update module (c_z = 128) on
  z [1, L, L, c_z] with the last L/16 residues masked.
- `tri_att_start` / `tri_att_end`: triangle attention module (4 heads x 32) on the same z.

The cases are the registry's (`esmkernels.ops.registry`, each op's `bench_cases`); a case with
no builder here (an op added later) is timed generically on the op's `example` inputs:
`reference` is the op's reference function, `torch` / `triton` the op on that backend.

Providers:

- `reference`: `esmkernels.reference` (the spec: eager, fp32 statistics).
- `torch`: the plain-PyTorch peer a user would write: F.layer_norm; a separate rotary pass +
  scaled_dot_product_attention (the ops' torch path); for varlen, padded SDPA; for the trunk
  modules, torch.compile of the reference module (CUDA only).
- `triton`: the fused kernels (CUDA; on CPU only under TRITON_INTERPRET=1, which is a
  correctness tool: interpreted times are not kernel speeds).
- `hf`: transformers' own trunk modules (`EsmFoldTriangleMultiplicativeUpdate`,
  `EsmFoldTriangleAttention`) with the same weights; LayerNorm and attention have no bare
  transformers op (their hf peer is the `lm` suite).

`real` sizes are the models'; `tiny` sizes keep the interpreter and CI fast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from esmkernels.benchmarks.peers import randomize_, transformers_module
from esmkernels.benchmarks.workloads import Unavailable, Workload
from esmkernels.ops import registry

PROVIDERS = ("reference", "torch", "triton", "hf")
CASES = tuple(case for op in registry.ops() for case in op.bench_cases)


@dataclass(frozen=True)
class Sizes:
    hidden: int
    ln_tokens: int
    heads: int
    head_dim: int
    attn_tokens: int
    varlen_seqs: int
    c_z: int
    tri_heads: int
    tri_head_dim: int
    lm_lengths: tuple[int, ...]
    trunk_lengths: tuple[int, ...]


SIZES = {
    # ESM-2 650M (hidden 1280, 20 heads x 64), ESMFold trunk (c_z 128, 4 heads x 32).
    "real": Sizes(
        1280, 65536, 20, 64, 8192, 64, 128, 4, 32, (256, 512, 1024, 2048), (256, 512, 1024)
    ),
    # A CPU run that shows a trend in seconds: ESM-2 8M's attention (hidden 320, 20 heads x 16),
    # ESMFold's trunk widths, lengths up to 512 (LM ops) and 128 (trunk ops).
    "cpu": Sizes(320, 4096, 20, 16, 2048, 8, 128, 4, 32, (64, 128, 256, 512), (32, 64, 128)),
    "tiny": Sizes(64, 64, 2, 16, 64, 3, 16, 2, 8, (8, 16), (8, 12)),
}


def _op_of(case: str) -> registry.Op:
    return next(op for op in registry.ops() if case in op.bench_cases)


def default_lengths(case: str, size: str) -> tuple[int, ...]:
    s = SIZES[size]
    return s.trunk_lengths if _op_of(case).trunk else s.lm_lengths


def check_triton(device: torch.device) -> None:
    from esmkernels.ops._dispatch import interpreting

    if device.type != "cuda" and not interpreting():
        raise Unavailable("triton needs CUDA here (or TRITON_INTERPRET=1, which is not a speed)")


def inv_freq(d: int, device) -> torch.Tensor:
    return 1.0 / 10000 ** (torch.arange(0, d, 2, device=device).float() / d)


def skewed_lengths(n: int, max_len: int, seed: int = 0) -> list[int]:
    """n sequence lengths drawn uniformly from [min(50, max_len // 4), max_len], seeded;
    the first is max_len so that the padded batch is L wide."""
    g = torch.Generator().manual_seed(seed)
    low = max(1, min(50, max_len // 4))
    lengths = torch.randint(low, max_len + 1, (n,), generator=g).tolist()
    lengths[0] = max_len
    return lengths


def _randn(shape, device, dtype, g, grad=True):
    return torch.randn(shape, generator=g).to(device, dtype).requires_grad_(grad)


def _layer_norm(provider, L, s: Sizes, device, dtype, g) -> Workload:
    from esmkernels.ops import layer_norm
    from esmkernels.reference import functional as ref

    B, N = max(1, s.ln_tokens // L), s.hidden
    x = _randn((B, L, N), device, dtype, g)
    w, b = _randn((N,), device, dtype, g), _randn((N,), device, dtype, g)
    if provider == "reference":
        fn = lambda: ref.layer_norm(x, w, b, 1e-5)
    elif provider == "torch":
        fn = lambda: F.layer_norm(x, (N,), w, b, 1e-5)
    elif provider == "triton":
        check_triton(device)
        fn = lambda: layer_norm(x, w, b, 1e-5, backend="triton")
    else:
        raise Unavailable("no transformers LayerNorm op to compare (see the lm suite)")
    act = x.numel() * x.element_size()
    return Workload(fn, (x, w, b), flops=8.0 * x.numel(), nbytes=2 * act, bwd_bytes=3 * act,
                    tokens=B * L, meta={"batch": B, "hidden": N})  # fmt: skip


def _attention(provider, L, s: Sizes, device, dtype, g, varlen: bool) -> Workload:
    from esmkernels.ops import rotary_attention
    from esmkernels.reference import functional as ref

    H, D = s.heads, s.head_dim
    freq = inv_freq(D, device)
    if provider == "hf":
        raise Unavailable("no transformers attention op to compare (see the lm suite)")
    if varlen:
        lengths = skewed_lengths(s.varlen_seqs, L)
        B = len(lengths)
    else:
        B = max(1, s.attn_tokens // L)
        lengths = [L] * B
    tokens = sum(lengths)
    flops = float(sum(4 * H * n * n * D for n in lengths))
    meta = {"batch": B, "heads": H, "head_dim": D, "tokens": tokens}
    if varlen and provider == "triton":
        check_triton(device)
        q, k, v = (_randn((tokens, H, D), device, dtype, g) for _ in range(3))
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=device)
        cu = cu.to(torch.int32)
        fn = lambda: rotary_attention(
            q, k, v, inv_freq=freq, cu_seqlens=cu, max_seqlen=L, backend="triton"
        )
        nbytes = 4 * q.numel() * q.element_size()
        return Workload(fn, (q, k, v), flops, nbytes, tokens=tokens, meta={**meta, "packed": True})
    q, k, v = (_randn((B, L, H, D), device, dtype, g) for _ in range(3))
    keep = torch.arange(L, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
    mask = keep if varlen else None
    if provider == "reference":
        fn = lambda: ref.rotary_attention(q, k, v, inv_freq=freq, key_padding_mask=mask)
    else:
        if provider == "triton":
            check_triton(device)
        fn = lambda: rotary_attention(
            q, k, v, inv_freq=freq, key_padding_mask=mask, backend=provider
        )
    nbytes = 4 * q.numel() * q.element_size()
    return Workload(fn, (q, k, v), flops, nbytes, tokens=tokens, meta={**meta, "padded_to": L})


def _trunk_module(case: str, s: Sizes, ops):
    from esmkernels.core.configuration import TrunkConfig
    from esmkernels.reference.esmfold import trunk

    if case.startswith("trimul"):
        config = TrunkConfig(pairwise_state_dim=s.c_z, pairwise_head_width=s.tri_head_dim)
        return trunk.EsmFoldTriangleMultiplicativeUpdate(
            config, _outgoing=case == "trimul_out", ops=ops
        )
    return trunk.EsmFoldTriangleAttention(
        s.c_z, s.tri_head_dim, s.tri_heads, starting=case == "tri_att_start", ops=ops
    )


def _hf_trunk_module(case: str, s: Sizes):
    esmfold = transformers_module("transformers.models.esm.modeling_esmfold")
    if case.startswith("trimul"):
        config = transformers_module().models.esm.configuration_esm.TrunkConfig(
            pairwise_state_dim=s.c_z, pairwise_head_width=s.tri_head_dim
        )
        return esmfold.EsmFoldTriangleMultiplicativeUpdate(config, _outgoing=case == "trimul_out")
    return esmfold.EsmFoldTriangleAttention(
        s.c_z, s.tri_head_dim, s.tri_heads, starting=case == "tri_att_start"
    )


_COMPILED: dict = {}


def _trunk(case, provider, L, s: Sizes, device, dtype, g) -> Workload:
    from esmkernels.models.esmfold import KernelTrunkOps

    reference = randomize_(_trunk_module(case, s, None), seed=1)
    if provider == "hf":
        module = _hf_trunk_module(case, s)
        module.load_state_dict(reference.state_dict())
    elif provider == "triton":
        check_triton(device)
        module = _trunk_module(case, s, KernelTrunkOps("triton"))
        module.load_state_dict(reference.state_dict())
    else:
        module = reference
    module = module.to(device, dtype)
    if provider == "torch":
        if device.type != "cuda":
            raise Unavailable("the torch peer of trunk modules is torch.compile: CUDA only here")
        module = torch.compile(module)
    z = _randn((1, L, L, s.c_z), device, dtype, g)
    seq = (torch.arange(L, device=device) < L - L // 16).to(dtype)
    mask = (seq[:, None] * seq[None, :])[None]
    c = s.c_z
    if case.startswith("trimul"):
        flops = 2.0 * L * L * c * c * 6 + 2.0 * L**3 * c
    else:
        hd = s.tri_heads * s.tri_head_dim
        flops = 2.0 * L * L * c * (4 * hd + s.tri_heads) + 2.0 * L * L * hd * c
        flops += 4.0 * L**3 * hd
    leaves = (z, *module.parameters())
    return Workload(lambda: module(z, mask), leaves, flops=flops,
                    nbytes=2 * z.numel() * z.element_size(), tokens=L,
                    meta={"c_z": c, "heads": s.tri_heads, "head_dim": s.tri_head_dim})  # fmt: skip


def _generic(op: registry.Op, provider, L, size: str, device, dtype) -> Workload:
    """An op without a hand-written case: its `example` inputs, the reference or the op."""
    if provider == "hf":
        raise Unavailable(f"no transformers peer is known for {op.name}")
    if provider == "triton":
        check_triton(device)
    args, kwargs = op.example(
        L, device=device, dtype=dtype, requires_grad=True, real=size == "real"
    )
    if provider == "reference":
        fn = lambda: op.reference(*args, **kwargs)
    else:
        fn = lambda: op.function(*args, **kwargs, backend=provider)
    leaves = [t for t in (*args, *kwargs.values()) if torch.is_tensor(t) and t.requires_grad]
    return Workload(fn, leaves, tokens=L, meta={"inputs": "registry example"})


def build(case: str, provider: str, length: int, *, size: str, device, dtype) -> Workload:
    """The workload of one kernel case (see the module docstring); raises Unavailable."""
    if case not in CASES:
        raise ValueError(f"unknown kernel case {case!r}; choose from {CASES}")
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; choose from {PROVIDERS}")
    s, g = SIZES[size], torch.Generator().manual_seed(0)
    if case == "layer_norm":
        return _layer_norm(provider, length, s, device, dtype, g)
    if case.startswith("rotary"):
        return _attention(provider, length, s, device, dtype, g, case.endswith("varlen"))
    if case.startswith(("trimul", "tri_att")):
        return _trunk(case, provider, length, s, device, dtype, g)
    return _generic(_op_of(case), provider, length, size, device, dtype)


def describe(case: str, size: str) -> str:
    s = SIZES[size]
    if case == "layer_norm":
        return f"layer_norm hidden={s.hidden}, {s.ln_tokens} tokens"
    if case == "rotary_attention":
        return f"rotary_attention H={s.heads} D={s.head_dim}, {s.attn_tokens} tokens"
    if case == "rotary_attention_varlen":
        return f"rotary_attention varlen, {s.varlen_seqs} seqs 50..L vs padded"
    if case.startswith(("trimul", "tri_att")):
        return f"{case} c_z={s.c_z}, {s.tri_heads}x{s.tri_head_dim} heads"
    return f"{case} on its registry example inputs"
