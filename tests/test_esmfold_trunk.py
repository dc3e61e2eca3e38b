"""Reference ESMFold trunk modules: properties that hold whatever the weights.

The module-by-module match with transformers is in `test_peer_esmfold.py`; here: transposition
of the ending-node attention, chunking, padding invariance, relative positions and the recycled
distogram against hand-computed values, the recycling loop (iteration count, gradients only on
the last pass) and input errors.
"""

from __future__ import annotations

import copy
import math
import pickle
from collections import Counter

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from esmkernels.core.configuration import StructureModuleConfig, TrunkConfig
from esmkernels.reference.esmfold import trunk as T
from esmkernels.reference.esmfold import trunk_functional
from tests.tolerances import FP32


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Run these tiny models on one thread: on a loaded CPU, 2 threads are ~6x slower here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_trunk_config(**kw) -> TrunkConfig:
    sm = StructureModuleConfig(
        sequence_dim=16,
        pairwise_dim=8,
        ipa_dim=8,
        resnet_dim=8,
        num_heads_ipa=2,
        num_qk_points=2,
        num_v_points=2,
        num_blocks=2,
        dropout_rate=0.0,
    )
    base = dict(
        num_blocks=1,
        sequence_state_dim=32,
        pairwise_state_dim=16,
        sequence_head_width=8,
        pairwise_head_width=8,
        position_bins=4,
        max_recycles=2,
        chunk_size=None,
        structure_module=sm,
    )
    base.update(kw)
    return TrunkConfig(**base)


def randomize_(module: torch.nn.Module, scale: float = 1.0, seed: int = 0) -> torch.nn.Module:
    """Give every parameter a non-trivial value (the init zeroes most residual branches).

    LayerNorm-like 1-D weights stay near 1, biases near 0, matrices ~ N(0, scale^2 / fan_in).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype)
            if p.dim() == 1 and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif p.dim() == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise * scale / math.sqrt(p.shape[-1]))
    return module


def _block_inputs(B, L, cfg, seed=0, lengths=None):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, L, cfg.sequence_state_dim, generator=g)
    z = torch.randn(B, L, L, cfg.pairwise_state_dim, generator=g)
    mask = torch.ones(B, L)
    if lengths is not None:
        for b, n in enumerate(lengths):
            mask[b, n:] = 0
    return s, z, mask


# ------------------------------------------------------------------------------------------------
# Blocks
# ------------------------------------------------------------------------------------------------


def test_ending_node_is_starting_node_on_the_transpose():
    cfg = tiny_trunk_config()
    start = randomize_(T.EsmFoldTriangleAttention(16, 8, 2, starting=True), seed=1)
    end = T.EsmFoldTriangleAttention(16, 8, 2, starting=False)
    end.load_state_dict(start.state_dict())
    _, z, _ = _block_inputs(2, 5, cfg)
    mask = (torch.rand(2, 5, 5) > 0.2).float()
    mask[:, :, 0] = 1  # every row keeps a key, so both directions are fully defined
    mask[:, 0, :] = 1
    got = end(z, mask=mask)
    want = start(z.transpose(1, 2), mask=mask.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(got, want, **FP32)


@pytest.mark.parametrize("outgoing", [True, False])
def test_triangle_update_wiring_against_the_algorithm(outgoing):
    """Algorithms 11 / 12 written out from the module's parameters (checks which weight is which)."""
    cfg = tiny_trunk_config()
    m = randomize_(T.EsmFoldTriangleMultiplicativeUpdate(cfg, _outgoing=outgoing), seed=2)
    _, z, _ = _block_inputs(1, 6, cfg)
    mask = (torch.rand(1, 6, 6) > 0.3).float()
    zn = m.layer_norm_in(z)
    a = mask[..., None] * torch.sigmoid(m.linear_a_g(zn)) * m.linear_a_p(zn)
    b = mask[..., None] * torch.sigmoid(m.linear_b_g(zn)) * m.linear_b_p(zn)
    if outgoing:
        x = torch.einsum("bikc,bjkc->bijc", a, b)
    else:
        x = torch.einsum("bkic,bkjc->bijc", a, b)
    want = torch.sigmoid(m.linear_g(zn)) * m.linear_z(m.layer_norm_out(x))
    torch.testing.assert_close(m(z, mask=mask), want, **FP32)


def test_sequence_attention_against_the_formula():
    """Pair-biased gated attention; proj packs [q | k | v] per head (ESM's layout)."""
    B, L, H, D = 2, 5, 4, 8
    m = randomize_(T.EsmFoldSelfAttention(H * D, H, D, gated=True), seed=6)
    x = torch.randn(B, L, H * D)
    bias = torch.randn(B, L, L, H)
    mask = torch.ones(B, L)
    mask[1, 3:] = 0
    t = m.proj(x).view(B, L, H, 3 * D)
    q, k, v = t[..., :D], t[..., D : 2 * D], t[..., 2 * D :]
    logits = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(D) + bias.permute(0, 3, 1, 2)
    logits = logits.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
    y = torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), v).reshape(B, L, H * D)
    want = m.o_proj(torch.sigmoid(m.g_proj(x)) * y)
    torch.testing.assert_close(m(x, mask=mask, bias=bias), want, **FP32)


def test_starting_node_attention_against_the_formula():
    """Algorithm 13: row i, query j, key k, bias b_jk = W LN(z)_jk, key mask per row."""
    B, L, C, H, D = 1, 5, 16, 2, 8
    m = randomize_(T.EsmFoldTriangleAttention(C, D, H, starting=True), seed=7)
    z = torch.randn(B, L, L, C)
    mask = torch.ones(B, L, L)
    mask[0, :, 4] = 0
    x = m.layer_norm(z)
    q, k, v, g = (
        lin(x).view(B, L, L, H, D)
        for lin in (m.mha.linear_q, m.mha.linear_k, m.mha.linear_v, m.mha.linear_g)
    )
    bias = m.linear(x)  # [B, j, k, H]
    logits = torch.einsum("bijhd,bikhd->bihjk", q, k) / math.sqrt(D)
    logits = logits + bias.permute(0, 3, 1, 2)[:, None]
    logits = logits.masked_fill(mask[:, :, None, None, :] == 0, float("-inf"))
    o = torch.einsum("bihjk,bikhd->bijhd", logits.softmax(-1), v) * torch.sigmoid(g)
    want = m.mha.linear_o(o.reshape(B, L, L, H * D))
    torch.testing.assert_close(m(z, mask=mask), want, **FP32)


@given(
    L=st.integers(1, 9),
    pad=st.integers(1, 4),
    chunk=st.sampled_from([None, 1, 3]),
)
@example(L=1, pad=3, chunk=None)
def test_block_padding_and_chunking_invariance(L, pad, chunk):
    """A residue's block outputs do not depend on padding, nor on the chunk size."""
    cfg = tiny_trunk_config()
    block = randomize_(T.EsmFoldTriangularSelfAttentionBlock(cfg), seed=3).eval()
    s, z, _ = _block_inputs(1, L + pad, cfg, seed=L)
    mask = torch.ones(1, L + pad)
    mask[:, L:] = 0
    s1, z1 = block(s[:, :L], z[:, :L, :L], mask=torch.ones(1, L))
    s2, z2 = block(s, z, mask=mask, chunk_size=chunk)
    torch.testing.assert_close(s2[:, :L], s1, **FP32)
    torch.testing.assert_close(z2[:, :L, :L], z1, **FP32)
    assert torch.isfinite(s2).all() and torch.isfinite(z2).all()


def test_sequence_to_pair_orientation():
    """z_ij = W_o [q_j * k_i, q_j - k_i] (transformers' orientation, not the transpose)."""
    m = T.EsmFoldSequenceToPair(4, 2, 3)
    with torch.no_grad():
        m.layernorm.weight.fill_(1.0)
        m.layernorm.bias.zero_()
        m.proj.weight.copy_(torch.eye(4))
        m.proj.bias.zero_()
        m.o_proj.weight.copy_(torch.eye(3, 4))
        m.o_proj.bias.zero_()
    s = torch.randn(1, 3, 4)
    sn = torch.nn.functional.layer_norm(s, (4,))
    q, k = sn[..., :2], sn[..., 2:]
    z = m(s)
    # channel 0 = q_j[0] * k_i[0]; channel 2 = q_j[0] - k_i[0]
    for i in range(3):
        for j in range(3):
            assert z[0, i, j, 0].item() == pytest.approx((q[0, j, 0] * k[0, i, 0]).item(), abs=1e-6)
            assert z[0, i, j, 2].item() == pytest.approx((q[0, j, 0] - k[0, i, 0]).item(), abs=1e-6)


def test_relative_position_hand_values():
    cfg = tiny_trunk_config(position_bins=2)
    rp = T.EsmFoldRelativePosition(cfg)
    with torch.no_grad():
        rp.embedding.weight.copy_(torch.arange(6, dtype=torch.float32)[:, None].expand(6, 16))
    residx = torch.tensor([[0, 1, 5, 0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    idx = rp(residx, mask=mask)[0, :, :, 0]
    # r_j - r_i clamped to [-2, 2], + 3; row/column of the masked residue -> 0.
    want = torch.tensor(
        [[3, 4, 5, 0], [2, 3, 5, 0], [1, 1, 3, 0], [0, 0, 0, 0]], dtype=torch.float32
    )
    torch.testing.assert_close(idx, want)


def test_relative_position_errors():
    rp = T.EsmFoldRelativePosition(tiny_trunk_config())
    with pytest.raises(TypeError, match="torch.long"):
        rp(torch.zeros(1, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="mask shape"):
        rp(torch.zeros(1, 3, dtype=torch.long), mask=torch.ones(1, 4))


def test_block_shape_errors():
    cfg = tiny_trunk_config()
    block = T.EsmFoldTriangularSelfAttentionBlock(cfg)
    s, z, mask = _block_inputs(1, 4, cfg)
    with pytest.raises(ValueError, match="channel sizes"):
        block(s[..., :8], z, mask)
    with pytest.raises(ValueError, match="inconsistent"):
        block(s, z[:, :3, :3], mask)
    with pytest.raises(ValueError, match="mask shape"):
        block(s, z, mask[:, :3])


def test_row_dropout_shares_its_mask_along_rows():
    drop = T.EsmFoldDropout(0.5, 2).train()
    x = torch.ones(2, 6, 6, 3)
    y = drop(x)
    assert torch.equal(y, y[:, :, :1, :].expand_as(y))  # same mask for every column j
    assert (y == 0).any() and (y == 2).any()
    assert torch.equal(drop.eval()(x), x)


# ------------------------------------------------------------------------------------------------
# Recycled distogram
# ------------------------------------------------------------------------------------------------


def test_distogram_bins_by_hand():
    """Identical backbones translated by d: C-beta distance is exactly d."""
    bb = torch.tensor([[-1.2, 0.4, 0.1], [0.0, 0.0, 0.0], [1.3, 0.5, -0.2]])
    shifts = torch.tensor([0.0, 5.0, 100.0, 3.0])
    coords = torch.stack([bb + torch.tensor([d, 0.0, 0.0]) for d in shifts])[None]  # [1, 4, 3, 3]
    bins = T.EsmFoldingTrunk.distogram(coords, 3.375, 21.375, 15)[0]
    edges = torch.linspace(3.375, 21.375, 14)
    dist = (shifts[:, None] - shifts[None, :]).abs()
    want = (dist[..., None] > edges).sum(-1)
    assert torch.equal(bins, want)
    assert bins[0, 1] == 2 and bins[0, 2] == 14 and bins[1, 1] == 0  # 5 A, far, self


# ------------------------------------------------------------------------------------------------
# Recycling loop
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_recycles, passes", [(None, 2), (0, 1), (2, 3)])
def test_recycling_passes_and_gradients(num_recycles, passes):
    cfg = tiny_trunk_config(max_recycles=2)
    trunk = randomize_(T.EsmFoldingTrunk(cfg), scale=0.5, seed=4)
    grad_modes = []
    trunk.structure_module.register_forward_hook(
        lambda m, i, o: grad_modes.append(torch.is_grad_enabled())
    )
    B, L = 1, 5
    s, z, mask = _block_inputs(B, L, cfg)
    s.requires_grad_(True)
    aa = torch.randint(0, 20, (B, L))
    residx = torch.arange(L)[None]
    out = trunk(s, z, aa, residx, mask, no_recycles=num_recycles)
    assert grad_modes == [False] * (passes - 1) + [True]
    out["positions"].sum().backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    assert out["s_s"].shape == (B, L, 32) and out["s_z"].shape == (B, L, L, 16)


def test_recycling_feeds_back():
    """More passes change the result (the recycled states and distogram are used)."""
    cfg = tiny_trunk_config()
    trunk = randomize_(T.EsmFoldingTrunk(cfg), scale=0.5, seed=5).eval()
    s, z, mask = _block_inputs(1, 6, cfg)
    aa = torch.randint(0, 20, (1, 6))
    residx = torch.arange(6)[None]
    with torch.no_grad():
        a = trunk(s, z, aa, residx, mask, no_recycles=0)["s_z"]
        b = trunk(s, z, aa, residx, mask, no_recycles=1)["s_z"]
    assert not torch.allclose(a, b)


def test_recycle_and_chunk_errors():
    cfg = tiny_trunk_config()
    trunk = T.EsmFoldingTrunk(cfg)
    s, z, mask = _block_inputs(1, 3, cfg)
    aa = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="num_recycles=-1"):
        trunk(s, z, aa, torch.arange(3)[None], mask, no_recycles=-1)
    with pytest.raises(TypeError, match="num_recycles"):
        trunk(s, z, aa, torch.arange(3)[None], mask, no_recycles=1.5)
    for bad in (0, -2, True):
        with pytest.raises(ValueError, match="chunk_size"):
            trunk.set_chunk_size(bad)
    trunk.set_chunk_size(None)
    assert trunk.chunk_size is None


# ------------------------------------------------------------------------------------------------
# Op injection (how the fast model reuses these modules)
# ------------------------------------------------------------------------------------------------


def test_trunk_ops_are_injected_and_picklable():
    calls = Counter()

    class Counting:
        def triangle_multiplicative_update(self, *args, **kwargs):
            calls["tri_mul"] += 1
            return trunk_functional.triangle_multiplicative_update(*args, **kwargs)

        def axial_attention(self, *args, **kwargs):
            calls["attention"] += 1
            return trunk_functional.axial_attention(*args, **kwargs)

    cfg = tiny_trunk_config()
    reference = randomize_(T.EsmFoldTriangularSelfAttentionBlock(cfg), seed=8).eval()
    counted = T.EsmFoldTriangularSelfAttentionBlock(cfg, ops=Counting()).eval()
    counted.load_state_dict(reference.state_dict())
    s, z, mask = _block_inputs(1, 4, cfg)
    for got, want in zip(counted(s, z, mask), reference(s, z, mask)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert calls == {"tri_mul": 2, "attention": 3}  # two updates; seq, start, end attention

    clone = pickle.loads(pickle.dumps(copy.deepcopy(reference)))
    for got, want in zip(clone(s, z, mask), reference(s, z, mask)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(TypeError, match="axial_attention"):
        T.EsmFoldTriangularSelfAttentionBlock(cfg, ops=object())
