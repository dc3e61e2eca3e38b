"""ESMFold structure module, geometry, confidence and PDB output vs transformers' port.

Random weights everywhere (HF's init zeroes the final layers, which would make the comparison
vacuous); the same state dict is loaded into both modules; fp32 on CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from esmkernels.core.configuration import StructureModuleConfig
from esmkernels.reference.esmfold import confidence as C
from esmkernels.reference.esmfold import geometry as G
from esmkernels.reference.esmfold import pdb
from esmkernels.reference.esmfold import residue_constants as rc
from esmkernels.reference.esmfold.rigid import Rigid, Rotation
from esmkernels.reference.esmfold.structure_module import StructureModule

transformers = pytest.importorskip("transformers")
hf_fold = pytest.importorskip("transformers.models.esm.modeling_esmfold")
hf_cfg = pytest.importorskip("transformers.models.esm.configuration_esm")
of = pytest.importorskip("transformers.models.esm.openfold_utils")

pytestmark = pytest.mark.peer

SM = dict(
    sequence_dim=32, pairwise_dim=32, ipa_dim=8, resnet_dim=16, num_heads_ipa=2,
    num_qk_points=2, num_v_points=2, num_blocks=2,
)  # fmt: skip


def test_state_dict_keys_match_hf_checkpoint_layout():
    """Our structure module holds exactly the `trunk.structure_module.*` tensors of HF's model."""
    cfg = transformers.EsmConfig(
        vocab_size=33, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        is_folding_model=True,
        esmfold_config={"trunk": {
            "num_blocks": 1, "sequence_state_dim": 64, "pairwise_state_dim": 32,
            "sequence_head_width": 16, "pairwise_head_width": 16, "structure_module": SM,
        }},
    )  # fmt: skip
    hf = hf_fold.EsmForProteinFolding(cfg)
    prefix = "trunk.structure_module."
    want = {k[len(prefix) :]: v.shape for k, v in hf.state_dict().items() if k.startswith(prefix)}
    ours = StructureModule(StructureModuleConfig(**SM))
    assert {k: v.shape for k, v in ours.state_dict().items()} == want
    assert list(ours.state_dict()) == list(want)  # same order too


def _pair(seed: int, **overrides):
    kw = {**SM, **overrides}
    hf = hf_fold.EsmFoldStructureModule(hf_cfg.StructureModuleConfig(**kw)).eval()
    ours = StructureModule(StructureModuleConfig(**kw)).eval()
    gen = torch.Generator().manual_seed(seed)
    sd = {k: 0.3 * torch.randn(v.shape, generator=gen) for k, v in ours.state_dict().items()}
    hf.load_state_dict(sd, strict=True)
    ours.load_state_dict(sd, strict=True)
    return hf, ours


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 10), pad=st.integers(0, 3))
@example(seed=0, n=10, pad=2)
def test_structure_module_matches_hf(seed, n, pad):
    hf, ours = _pair(seed % 1000, num_blocks=3)
    gen = torch.Generator().manual_seed(seed)
    b, length = 2, n + pad
    feats = {
        "single": torch.randn(b, length, 32, generator=gen),
        "pair": torch.randn(b, length, length, 32, generator=gen),
    }
    aatype = torch.randint(0, 21, (b, length), generator=gen)
    mask = torch.ones(b, length)
    mask[1, n:] = 0
    with torch.no_grad():
        want = hf(dict(feats), aatype, mask)
        got = ours(dict(feats), aatype, mask)
    assert set(got) == set(want)
    # Positions within 1e-4 A; frames, angles, states within the model tolerance.
    torch.testing.assert_close(got["positions"], want["positions"], atol=1e-4, rtol=0)
    for key in ("frames", "sidechain_frames", "angles", "unnormalized_angles", "states", "single"):
        torch.testing.assert_close(got[key], want[key], atol=1e-4, rtol=1e-4, msg=key)


def test_residue_constants_match_hf():
    hrc = of.residue_constants
    assert rc.restypes == hrc.restypes and rc.atom_types == hrc.atom_types
    assert rc.restype_name_to_atom14_names == hrc.restype_name_to_atom14_names
    assert rc.chi_angles_atoms == hrc.chi_angles_atoms
    for name in (
        "restype_atom14_to_rigid_group", "restype_atom14_mask",
        "restype_atom14_rigid_group_positions", "restype_atom37_to_rigid_group",
        "restype_atom37_mask", "restype_atom37_rigid_group_positions",
        "restype_rigid_group_default_frame", "chi_pi_periodic",
    ):  # fmt: skip
        np.testing.assert_array_equal(
            getattr(rc, name), np.asarray(getattr(hrc, name)), err_msg=name
        )
    np.testing.assert_array_equal(rc.chi_angles_mask[:20], np.asarray(hrc.chi_angles_mask))
    assert rc.sequence_to_aatype("ACDXZ") == list(
        hrc.sequence_to_onehot("ACDXZ", hrc.restype_order_with_x, map_unknown_to_x=True).argmax(1)
    )


def test_geometry_matches_hf():
    gen = torch.Generator().manual_seed(0)
    aatype = torch.randint(0, 21, (2, 13), generator=gen)
    q, t = torch.randn(2, 13, 4, generator=gen), 5 * torch.randn(2, 13, 3, generator=gen)
    alpha = torch.nn.functional.normalize(torch.randn(2, 13, 7, 2, generator=gen), dim=-1)
    rot = Rotation(quats=q).get_rot_mats()
    hrc, hrig = of.residue_constants, of.rigid_utils
    consts = [
        torch.tensor(hrc.restype_rigid_group_default_frame),
        torch.tensor(hrc.restype_atom14_to_rigid_group),
        torch.tensor(hrc.restype_atom14_mask),
        torch.tensor(hrc.restype_atom14_rigid_group_positions),
    ]
    want_frames = of.torsion_angles_to_frames(
        hrig.Rigid(hrig.Rotation(rot_mats=rot), t), alpha, aatype, consts[0]
    )
    got_frames = G.torsion_angles_to_frames(Rigid(Rotation(rot_mats=rot), t), alpha, aatype)
    torch.testing.assert_close(got_frames.to_tensor_4x4(), want_frames.to_tensor_4x4())
    want14 = of.frames_and_literature_positions_to_atom14_pos(want_frames, aatype, *consts)
    got14 = G.frames_and_literature_positions_to_atom14_pos(got_frames, aatype)
    torch.testing.assert_close(got14, want14)
    want_maps = of.make_atom14_masks({"aatype": aatype})
    got_maps = G.make_atom14_masks(aatype)
    for key, value in got_maps.items():
        assert torch.equal(value, want_maps[key]) and value.dtype == want_maps[key].dtype, key
    torch.testing.assert_close(
        G.atom14_to_atom37(got14, got_maps), of.atom14_to_atom37(want14, want_maps)
    )


@pytest.mark.parametrize("n", [1, 7, 19, 40])
def test_confidence_matches_hf_unpadded(n):
    gen = torch.Generator().manual_seed(n)
    logits = 3 * torch.randn(1, n, n, 64, generator=gen)
    want = of.compute_tm(logits, max_bin=31, no_bins=64)
    torch.testing.assert_close(
        C.compute_tm(logits, torch.ones(1, n)), want.reshape(1), atol=1e-6, rtol=1e-5
    )
    want_pae = of.compute_predicted_aligned_error(logits, max_bin=31, no_bins=64)
    got_pae = C.compute_predicted_aligned_error(logits)
    for key, value in want_pae.items():
        torch.testing.assert_close(got_pae[key], value, msg=key)
    lddt_logits = torch.randn(1, n, 37, 50, generator=gen)
    torch.testing.assert_close(
        C.categorical_lddt(lddt_logits), hf_fold.categorical_lddt(lddt_logits, bins=50)
    )


def test_pdb_records_match_hf():
    """Same ATOM / TER / END records as HF's `to_pdb` (which adds `PARENT` header lines and leaves
    TER / END unpadded; ours pads every record to 80 columns, as the format and Biopython want)."""
    rng = np.random.default_rng(0)
    aatype = rng.integers(0, 21, size=9)
    positions = rng.normal(scale=30.0, size=(9, 37, 3))
    mask = rc.restype_atom37_mask[aatype]
    b = rng.uniform(0, 100, size=(9, 37))
    chain = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    resid = np.arange(9) + 1
    prot = of.protein.Protein(
        atom_positions=positions, aatype=aatype, atom_mask=mask, residue_index=resid,
        b_factors=b, chain_index=chain,
    )  # fmt: skip
    want = [x for x in of.protein.to_pdb(prot).splitlines() if not x.startswith("PARENT")]
    ours = pdb.to_pdb(aatype, positions, mask, resid, b, chain).splitlines()
    assert [x.rstrip() for x in ours] == [x.rstrip() for x in want]
    assert all(len(x) == 80 for x in ours)
