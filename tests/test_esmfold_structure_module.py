"""Structure module and IPA of the ESMFold reference: invariance, gradients, masking, wiring."""

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from esmkernels.core.configuration import StructureModuleConfig
from esmkernels.reference.esmfold import residue_constants as rc
from esmkernels.reference.esmfold.rigid import Rigid, Rotation
from esmkernels.reference.esmfold.structure_module import InvariantPointAttention, StructureModule
from tests.tolerances import GRADCHECK

F64 = torch.float64
TINY = dict(
    sequence_dim=12, pairwise_dim=6, ipa_dim=4, resnet_dim=8, num_heads_ipa=2,
    num_qk_points=3, num_v_points=2, num_blocks=3,
)  # fmt: skip


def _randomize(module: torch.nn.Module, gen: torch.Generator, scale: float = 0.3) -> None:
    """Random weights everywhere: AF2's zero-init of final layers would make outputs trivial."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _ipa(gen: torch.Generator, **overrides) -> InvariantPointAttention:
    ipa = InvariantPointAttention(StructureModuleConfig(**{**TINY, **overrides})).to(F64)
    _randomize(ipa, gen)
    return ipa


def _random_rigid(gen: torch.Generator, shape) -> Rigid:
    q = torch.randn(*shape, 4, generator=gen, dtype=F64)
    return Rigid(Rotation(quats=q), 3 * torch.randn(*shape, 3, generator=gen, dtype=F64))


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 9), heads=st.integers(1, 3))
@example(seed=0, n=1, heads=1)
def test_ipa_is_invariant_to_global_rigid_motions(seed, n, heads):
    gen = torch.Generator().manual_seed(seed)
    ipa = _ipa(gen, num_heads_ipa=heads)
    s = torch.randn(2, n, 12, generator=gen, dtype=F64)
    z = torch.randn(2, n, n, 6, generator=gen, dtype=F64)
    mask = (torch.rand(2, n, generator=gen) > 0.3).to(F64)
    r = _random_rigid(gen, (2, n))
    motion = _random_rigid(gen, (1, 1))
    moved = Rigid(
        Rotation(rot_mats=motion.get_rots().get_rot_mats().expand(2, n, 3, 3)),
        motion.get_trans().expand(2, n, 3),
    ).compose(r)
    out, out_moved = ipa(s, z, r, mask), ipa(s, z, moved, mask)
    assert out.abs().max() > 1e-3  # not trivially zero
    torch.testing.assert_close(out_moved, out, atol=1e-9, rtol=1e-9)


def test_ipa_depends_on_relative_frames():
    """Sanity for the invariance test: moving one residue's frame does change the output."""
    gen = torch.Generator().manual_seed(3)
    ipa = _ipa(gen)
    s, z = (
        torch.randn(1, 5, 12, generator=gen, dtype=F64),
        torch.randn(1, 5, 5, 6, generator=gen, dtype=F64),
    )
    r, mask = _random_rigid(gen, (1, 5)), torch.ones(1, 5, dtype=F64)
    trans = r.get_trans().clone()
    trans[0, 2] += 2.0
    assert (ipa(s, z, r, mask) - ipa(s, z, Rigid(r.get_rots(), trans), mask)).abs().max() > 1e-4


def test_ipa_gradcheck():
    gen = torch.Generator().manual_seed(5)
    # inf=1e3 still masks completely (exp(-1e3) == 0) but keeps finite differences of the
    # masked logits accurate; the checkpoint value 1e5 swamps a 1e-6 step in float64.
    ipa = _ipa(gen, num_heads_ipa=1, num_qk_points=1, num_v_points=1, inf=1e3)
    s = torch.randn(1, 3, 12, generator=gen, dtype=F64, requires_grad=True)
    z = torch.randn(1, 3, 3, 6, generator=gen, dtype=F64, requires_grad=True)
    trans = torch.randn(1, 3, 3, generator=gen, dtype=F64, requires_grad=True)
    quats = torch.randn(1, 3, 4, generator=gen, dtype=F64)
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=F64)
    fn = lambda s, z, t: ipa(s, z, Rigid(Rotation(quats=quats), t), mask)
    assert torch.autograd.gradcheck(fn, (s, z, trans), **GRADCHECK)


def _inputs(gen, b, n, dtype=torch.float32):
    single = torch.randn(b, n, 12, generator=gen).to(dtype)
    pair = torch.randn(b, n, n, 6, generator=gen).to(dtype)
    aatype = torch.randint(0, 21, (b, n), generator=gen)
    return {"single": single, "pair": pair}, aatype


def test_structure_module_shapes_and_init():
    """At AF2 init the backbone update is zero: frames stay identity and N, CA, C sit at their
    literature positions."""
    sm = StructureModule(StructureModuleConfig(**TINY)).eval()
    gen = torch.Generator().manual_seed(0)
    feats, aatype = _inputs(gen, 2, 5)
    out = sm(feats, aatype)
    shapes = {
        "frames": (3, 2, 5, 7), "sidechain_frames": (3, 2, 5, 8, 4, 4),
        "unnormalized_angles": (3, 2, 5, 7, 2), "angles": (3, 2, 5, 7, 2),
        "positions": (3, 2, 5, 14, 3), "states": (3, 2, 5, 12), "single": (2, 5, 12),
    }  # fmt: skip
    assert {k: tuple(v.shape) for k, v in out.items()} == shapes
    identity7 = torch.tensor([1.0, 0, 0, 0, 0, 0, 0]).expand(3, 2, 5, 7)
    torch.testing.assert_close(out["frames"], identity7)
    lit = torch.tensor(rc.restype_atom14_rigid_group_positions)[aatype][..., :3, :]
    lit = lit * torch.tensor(rc.restype_atom14_mask)[aatype][..., :3, None]
    torch.testing.assert_close(out["positions"][-1][..., :3, :], lit)
    torch.testing.assert_close(
        out["angles"].norm(dim=-1), torch.ones(3, 2, 5, 7), atol=1e-5, rtol=0
    )
    assert set(sm.state_dict()) == {k for k, _ in sm.named_parameters()}  # buffers non-persistent


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 7), pad=st.integers(1, 5))
@example(seed=0, n=1, pad=3)
def test_structure_module_batch_invariance(seed, n, pad):
    """A protein's outputs do not depend on the padding of its batch."""
    gen = torch.Generator().manual_seed(seed)
    sm = StructureModule(StructureModuleConfig(**TINY)).eval()
    _randomize(sm, gen, scale=0.2)
    feats, aatype = _inputs(gen, 1, n)
    alone = sm(feats, aatype)
    other, other_aa = _inputs(gen, 1, n + pad)
    single = torch.cat([torch.nn.functional.pad(feats["single"], (0, 0, 0, pad)), other["single"]])
    pair = torch.cat(
        [torch.nn.functional.pad(feats["pair"], (0, 0, 0, pad, 0, pad)), other["pair"]]
    )
    batch_aa = torch.cat([torch.nn.functional.pad(aatype, (0, pad)), other_aa])
    mask = torch.ones(2, n + pad)
    mask[0, n:] = 0
    batched = sm({"single": single, "pair": pair}, batch_aa, mask)
    for key in ("frames", "positions", "angles", "states"):
        torch.testing.assert_close(batched[key][:, :1, :n], alone[key], atol=2e-5, rtol=2e-5)
    assert all(torch.isfinite(v).all() for v in batched.values())


def test_structure_module_fully_masked_is_finite():
    sm = StructureModule(StructureModuleConfig(**TINY)).eval()
    _randomize(sm, torch.Generator().manual_seed(1))
    feats, aatype = _inputs(torch.Generator().manual_seed(2), 2, 4)
    out = sm(feats, aatype, torch.zeros(2, 4))
    assert all(torch.isfinite(v).all() for v in out.values())
    # A bool mask means the same as a float one.
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    want, got = sm(feats, aatype, mask), sm(feats, aatype, mask.bool())
    torch.testing.assert_close(got["positions"], want["positions"], atol=0, rtol=0)


def test_structure_module_gradients_flow():
    sm = StructureModule(StructureModuleConfig(**TINY))
    _randomize(sm, torch.Generator().manual_seed(4), scale=0.2)
    feats, aatype = _inputs(torch.Generator().manual_seed(5), 1, 4)
    feats["single"].requires_grad_(True)
    sm.eval()
    sm(feats, aatype)["positions"].sum().backward()
    assert torch.isfinite(feats["single"].grad).all() and feats["single"].grad.abs().sum() > 0
    assert sm.ipa.head_weights.grad is not None


def test_bf16_module_keeps_fp32_geometry():
    sm = StructureModule(StructureModuleConfig(**TINY)).eval().to(torch.bfloat16)
    assert sm.default_frames.dtype == sm.lit_positions.dtype == torch.float32
    assert sm.group_idx.dtype == torch.long
    feats, aatype = _inputs(torch.Generator().manual_seed(6), 1, 3, torch.bfloat16)
    out = sm(feats, aatype)
    assert out["positions"].dtype == out["frames"].dtype == torch.float32
    assert out["states"].dtype == torch.bfloat16


def test_structure_module_input_errors():
    sm = StructureModule(StructureModuleConfig(**TINY))
    feats, aatype = _inputs(torch.Generator().manual_seed(0), 1, 3)
    with pytest.raises(ValueError, match="aatype shape"):
        sm(feats, aatype[:, :2])
    with pytest.raises(ValueError, match=r"pair \[B, N, N, c_z\]"):
        sm({"single": feats["single"], "pair": feats["pair"][:, :2]}, aatype)
