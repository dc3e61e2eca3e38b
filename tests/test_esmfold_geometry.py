"""Residue constants, rigid frames and all-atom geometry of the ESMFold reference.

The expected values come from definitions, not from the code under test: dihedral angles of the
chi-angle atoms must equal the torsions fed in, bond lengths must be those of the chemistry
literature, frames must be orthonormal and obey the group laws, and the atom14/atom37 maps must
invert each other.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from esmkernels.reference.esmfold import geometry as G
from esmkernels.reference.esmfold import residue_constants as rc
from esmkernels.reference.esmfold.rigid import Rigid, Rotation, quat_to_rot, rot_to_quat

F64 = torch.float64
seeds = st.integers(0, 2**31 - 1)


def _random_rigid(gen: torch.Generator, shape, scale: float = 5.0) -> Rigid:
    q = torch.randn(*shape, 4, generator=gen, dtype=F64)
    return Rigid(Rotation(quats=q), scale * torch.randn(*shape, 3, generator=gen, dtype=F64))


def _random_angles(gen: torch.Generator, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """Torsions [*, 7] in (-pi, pi) and their (sin, cos) [*, 7, 2]."""
    ang = (torch.rand(*shape, 7, generator=gen, dtype=F64) * 2 - 1) * math.pi
    return ang, torch.stack([ang.sin(), ang.cos()], dim=-1)


def _constants64():
    return {
        "default_frames": torch.tensor(rc.restype_rigid_group_default_frame, dtype=F64),
        "lit_positions": torch.tensor(rc.restype_atom14_rigid_group_positions, dtype=F64),
    }


def _atom14(r: Rigid, alpha: torch.Tensor, aatype: torch.Tensor) -> torch.Tensor:
    c = _constants64()
    frames = G.torsion_angles_to_frames(r, alpha, aatype, c["default_frames"])
    return G.frames_and_literature_positions_to_atom14_pos(
        frames, aatype, lit_positions=c["lit_positions"]
    )


def _dihedral(p0, p1, p2, p3) -> torch.Tensor:
    """IUPAC dihedral angle p0-p1-p2-p3 in (-pi, pi]."""
    b1 = p2 - p1
    b1 = b1 / b1.norm(dim=-1, keepdim=True)
    v = (p0 - p1) - ((p0 - p1) * b1).sum(-1, keepdim=True) * b1
    w = (p3 - p2) - ((p3 - p2) * b1).sum(-1, keepdim=True) * b1
    return torch.atan2((torch.linalg.cross(b1, v, dim=-1) * w).sum(-1), (v * w).sum(-1))


def _by_name(pos_r: torch.Tensor, r: int) -> dict[str, torch.Tensor]:
    """Atom14 positions [14, 3] of one residue of type r, keyed by atom name."""
    names = rc.restype_name_to_atom14_names[rc.resnames[r]]
    return {n: pos_r[i] for i, n in enumerate(names) if n}


def _angle_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.remainder(a - b + math.pi, 2 * math.pi) - math.pi


# --- residue constants ---------------------------------------------------------------------------


# Derived floats (default frames: trigonometry and 4x4 products in numpy) may differ in the last
# bit between CPUs and numpy versions (SIMD paths); 1e-12 is ~1e4 ulps of the O(1) values and far
# below any real change of a constant (the literal tables are given to 3 decimals).
JSON_FLOAT_ATOL = 1e-12


def assert_json_close(got, want, where: str = "$") -> None:
    """`got == want`, except that floats may differ by `JSON_FLOAT_ATOL`.

    Structure (keys, lengths, order) and every non-float leaf (names, indices, flags) must be
    identical, and a float may only stand where a float stands.
    """
    if isinstance(want, float) or isinstance(got, float):
        assert type(got) is type(want), f"{where}: {got!r} vs {want!r}"
        assert abs(got - want) <= JSON_FLOAT_ATOL, f"{where}: {got!r} vs {want!r}"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), f"{where}: keys differ"
        for key in want:
            assert_json_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: lengths differ"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_json_close(g, w, f"{where}[{i}]")
    else:
        assert type(got) is type(want) and got == want, f"{where}: {got!r} vs {want!r}"


def test_data_file_is_current():
    """The committed JSON is what the generator's definitions produce (floats to 1e-12)."""
    from esmkernels.reference.esmfold import gen_residue_constants as gen

    path = Path(rc.__file__).parent / "data" / "residue_constants.json"
    assert_json_close(json.loads(path.read_text()), json.loads(json.dumps(gen.build())))


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["restype_rigid_group_default_frame"][3][4][0].__setitem__(3, -0.526 + 1e-9),
        lambda d: d["restype_rigid_group_default_frame"][0][0][0].__setitem__(0, 1),  # int
        lambda d: d["restype_atom14_to_rigid_group"][1].__setitem__(5, 3),
        lambda d: d["restypes"].__setitem__(0, "G"),
        lambda d: d["restype_name_to_atom14_names"]["ALA"].pop(),
        lambda d: d.pop("chi_angles_mask"),
    ],
    ids=["float-1e-9", "float-to-int", "index", "name", "length", "key"],
)
def test_data_file_check_catches_real_changes(change):
    """The tolerant comparison still fails on any real change of a constant or of structure."""
    path = Path(rc.__file__).parent / "data" / "residue_constants.json"
    data = json.loads(path.read_text())
    changed = json.loads(path.read_text())
    change(changed)
    with pytest.raises(AssertionError):
        assert_json_close(changed, data)
    # ...and the last-bit noise it is there for passes.
    noisy = json.loads(path.read_text())
    frame = noisy["restype_rigid_group_default_frame"][3][4][0]
    frame[0] = float(np.nextafter(frame[0], 2.0))
    assert_json_close(noisy, data)


def test_tables_are_consistent():
    assert len(rc.restypes) == 20 and len(rc.atom_types) == 37 and rc.atom_types[:5] == [
        "N", "CA", "C", "CB", "O",
    ]  # fmt: skip
    assert rc.resnames[-1] == "UNK" and len(rc.resnames) == 21
    # Heavy-atom counts of the 20 amino acids (backbone N CA C O included).
    heavy = dict(
        zip(
            "ARNDCQEGHILKMFPSTWYV",
            [5, 11, 8, 8, 6, 9, 9, 4, 10, 8, 8, 9, 8, 11, 7, 6, 7, 14, 12, 7],
        )
    )
    for r, letter in enumerate(rc.restypes):
        resname = rc.restype_1to3[letter]
        names14 = [n for n in rc.restype_name_to_atom14_names[resname] if n]
        lit_names = [a for a, _, _ in rc.rigid_group_atom_positions[resname]]
        assert len(names14) == heavy[letter], resname
        assert sorted(names14) == sorted(lit_names), resname
        assert rc.restype_atom14_mask[r].sum() == rc.restype_atom37_mask[r].sum() == heavy[letter]
        assert rc.chi_angles_mask[r].sum() == len(rc.chi_angles_atoms[resname])
        for a, group, xyz in rc.rigid_group_atom_positions[resname]:
            i14 = rc.restype_name_to_atom14_names[resname].index(a)
            assert rc.restype_atom14_to_rigid_group[r, i14] == group
            np.testing.assert_array_equal(
                rc.restype_atom14_rigid_group_positions[r, i14], np.float32(xyz)
            )
    # UNK has no atoms and no frames.
    assert rc.restype_atom14_mask[20].sum() == 0 and rc.restype_atom37_mask[20].sum() == 0
    assert not rc.restype_rigid_group_default_frame[20].any()


def test_atom14_atom37_maps_invert_each_other():
    for r in range(21):
        resname = rc.resnames[r]
        for i14, name in enumerate(rc.restype_name_to_atom14_names[resname]):
            if not name:
                assert rc.restype_atom14_mask[r, i14] == 0
                continue
            i37 = rc.restype_atom14_to_atom37[r, i14]
            assert rc.atom_types[i37] == name
            assert rc.restype_atom37_to_atom14[r, i37] == i14
            assert rc.restype_atom37_mask[r, i37] == 1


def test_literature_bond_lengths():
    """Engh & Huber: N-CA 1.458, CA-C 1.525, C=O 1.231, CA-CB 1.530 (A), within 0.03."""
    alpha = torch.tensor([0.0, 1.0], dtype=F64).expand(1, 20, 7, 2)
    aatype = torch.arange(20)[None]
    pos = _atom14(Rigid.identity((1, 20), F64), alpha, aatype)[0]
    for r in range(20):
        p = _by_name(pos[r], r)

        def d(a, b, p=p):
            return (p[a] - p[b]).norm().item()

        assert d("N", "CA") == pytest.approx(1.458, abs=0.03)
        assert d("CA", "C") == pytest.approx(1.525, abs=0.03)
        assert d("C", "O") == pytest.approx(1.231, abs=0.03)
        if "CB" in p:
            assert d("CA", "CB") == pytest.approx(1.530, abs=0.03)
        # Every consecutive pair of chi-angle atoms is a covalent bond (1.2 - 1.9 A).
        for quad in rc.chi_angles_atoms[rc.resnames[r]]:
            for a, b in zip(quad[:-1], quad[1:]):
                assert 1.2 < d(a, b) < 1.9, (rc.resnames[r], a, b)


def test_default_frames_are_rigid():
    frames = torch.tensor(rc.restype_rigid_group_default_frame[:20], dtype=F64)
    rot = frames[..., :3, :3]
    used = torch.ones(20, 8, dtype=torch.bool)
    used[:, 4:] = torch.tensor(rc.chi_angles_mask[:20]) > 0
    eye = torch.eye(3, dtype=F64)
    torch.testing.assert_close(
        rot[used] @ rot[used].transpose(-1, -2), eye.expand(int(used.sum()), 3, 3)
    )
    torch.testing.assert_close(torch.linalg.det(rot[used]), torch.ones(int(used.sum()), dtype=F64))
    assert not frames[~used].any()  # absent chi groups are zero, as in AF2


def test_sequence_to_aatype():
    assert rc.sequence_to_aatype("ARNDCQEGHILKMFPSTWYV") == list(range(20))
    assert rc.sequence_to_aatype("BZXUO") == [20] * 5
    with pytest.raises(ValueError, match="position 1"):
        rc.sequence_to_aatype("A:C")


# --- rigid frames ---------------------------------------------------------------------------------


@given(seed=seeds)
def test_rotation_formats_agree(seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(5, 4, generator=gen, dtype=F64), dim=-1)
    rot = quat_to_rot(q)
    torch.testing.assert_close(rot @ rot.transpose(-1, -2), torch.eye(3, dtype=F64).expand(5, 3, 3))
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(5, dtype=F64))
    q2 = rot_to_quat(rot)
    q2 = q2 * torch.sign((q2 * q).sum(-1, keepdim=True))  # q and -q are the same rotation
    torch.testing.assert_close(q2, q)
    # Rotating a vector with the matrix equals the quaternion sandwich q v q*.
    v = torch.randn(5, 3, generator=gen, dtype=F64)
    w, u = q[:, :1], q[:, 1:]
    t = 2 * torch.linalg.cross(u, v, dim=-1)
    torch.testing.assert_close(
        Rotation(quats=q).apply(v), v + w * t + torch.linalg.cross(u, t, dim=-1)
    )


@given(seed=seeds)
@example(seed=0)
def test_rigid_group_laws(seed):
    gen = torch.Generator().manual_seed(seed)
    a, b = _random_rigid(gen, (3, 4)), _random_rigid(gen, (3, 4))
    x = torch.randn(3, 4, 3, generator=gen, dtype=F64)
    torch.testing.assert_close(a.compose(b).apply(x), a.apply(b.apply(x)))
    torch.testing.assert_close(a.invert_apply(a.apply(x)), x)
    torch.testing.assert_close(a.invert().apply(x), a.invert_apply(x))
    ident = a.compose(a.invert()).to_tensor_4x4()
    torch.testing.assert_close(ident, torch.eye(4, dtype=F64).expand(3, 4, 4, 4))
    # Tensor formats round-trip.
    torch.testing.assert_close(Rigid.from_tensor_4x4(a.to_tensor_4x4()).apply(x), a.apply(x))
    torch.testing.assert_close(Rigid.from_tensor_7(a.to_tensor_7()).apply(x), a.apply(x))
    # The quaternion update (b, c, d, t) composes with the update frame normalise(1, b, c, d), t.
    upd = torch.randn(3, 4, 6, generator=gen, dtype=F64)
    q_upd = torch.cat([torch.ones(3, 4, 1, dtype=F64), upd[..., :3]], dim=-1)
    expected = a.compose(Rigid(Rotation(quats=q_upd), upd[..., 3:]))
    torch.testing.assert_close(a.compose_q_update_vec(upd).apply(x), expected.apply(x))
    # Zero update is the identity.
    torch.testing.assert_close(a.compose_q_update_vec(torch.zeros_like(upd)).apply(x), a.apply(x))


def test_rigid_precision_and_errors():
    half = Rigid(Rotation(quats=torch.randn(2, 4).bfloat16()), torch.randn(2, 3).bfloat16())
    assert (
        half.get_trans().dtype == torch.float32
        and half.get_rots().get_rot_mats().dtype == torch.float32
    )
    assert Rigid.identity((2,), F64).to_tensor_7().dtype == F64
    with pytest.raises(ValueError, match="does not match"):
        Rigid(Rotation.identity((2,)), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="exactly one"):
        Rotation()
    g = Rigid.identity((2,)).stop_rot_gradient()
    assert g.shape == (2,)


def test_from_3_points():
    """Alg. 21: origin at x2, x-axis towards x2 from x1, x3 in the upper xy half-plane."""
    gen = torch.Generator().manual_seed(1)
    x1, x2, x3 = torch.randn(3, 6, 3, generator=gen, dtype=F64).unbind(0)
    frame = Rigid.from_3_points(x1, x2, x3, eps=0.0)
    torch.testing.assert_close(frame.invert_apply(x2), torch.zeros(6, 3, dtype=F64))
    local1, local3 = frame.invert_apply(x1), frame.invert_apply(x3)
    assert torch.all(local1[:, 0] < 0)
    torch.testing.assert_close(local1[:, 1:], torch.zeros(6, 2, dtype=F64))
    assert torch.all(local3[:, 1] > 0)
    torch.testing.assert_close(local3[:, 2], torch.zeros(6, dtype=F64))


# --- torsions -> frames -> atoms ------------------------------------------------------------------


@given(seed=seeds)
@example(seed=0)
def test_torsions_reproduce_dihedrals(seed):
    """The dihedral of every chi angle's four atoms equals the chi fed in; N-CA-C-O is psi + pi."""
    gen = torch.Generator().manual_seed(seed)
    aatype = torch.arange(20)[None]
    ang, alpha = _random_angles(gen, (1, 20))
    pos = _atom14(_random_rigid(gen, (1, 20)), alpha, aatype)[0]
    for r in range(20):
        p = _by_name(pos[r], r)
        for k, quad in enumerate(rc.chi_angles_atoms[rc.resnames[r]]):
            got = _dihedral(*(p[n] for n in quad))
            assert abs(_angle_diff(got, ang[0, r, 3 + k])) < 1e-2, (rc.resnames[r], k)
        psi_o = _dihedral(p["N"], p["CA"], p["C"], p["O"])
        assert abs(_angle_diff(psi_o, ang[0, r, 2] + math.pi)) < 1e-2


@given(seed=seeds)
def test_backbone_atoms_sit_on_the_backbone_frame(seed):
    """N, CA, C (and CB) are the literature positions mapped by the backbone frame, whatever
    the torsions; at the identity frame they are the literature positions themselves."""
    gen = torch.Generator().manual_seed(seed)
    aatype = torch.randint(0, 21, (2, 9), generator=gen)
    _, alpha = _random_angles(gen, (2, 9))
    lit = torch.tensor(rc.restype_atom14_rigid_group_positions, dtype=F64)[aatype]
    exists = torch.tensor(rc.restype_atom14_mask)[aatype][..., :3, None].to(F64)
    pos = _atom14(Rigid.identity((2, 9), F64), alpha, aatype)
    torch.testing.assert_close(pos[..., :3, :], lit[..., :3, :] * exists)
    r = _random_rigid(gen, (2, 9))
    pos = _atom14(r, alpha, aatype)
    torch.testing.assert_close(pos[..., :3, :], r[..., None].apply(lit[..., :3, :]) * exists)


@given(seed=seeds)
def test_atoms_move_with_a_global_rigid_motion(seed):
    gen = torch.Generator().manual_seed(seed)
    aatype = torch.randint(0, 21, (3, 7), generator=gen)
    _, alpha = _random_angles(gen, (3, 7))
    r, motion = _random_rigid(gen, (3, 7)), _random_rigid(gen, ())
    moved = Rigid(
        Rotation(rot_mats=motion.get_rots().get_rot_mats().expand(3, 7, 3, 3)),
        motion.get_trans().expand(3, 7, 3),
    ).compose(r)
    exists = torch.tensor(rc.restype_atom14_mask)[aatype][..., None].to(F64)
    expected = motion.apply(_atom14(r, alpha, aatype)) * exists
    torch.testing.assert_close(_atom14(moved, alpha, aatype), expected)


@given(seed=seeds)
def test_atom37_atom14_round_trip(seed):
    gen = torch.Generator().manual_seed(seed)
    aatype = torch.randint(0, 21, (2, 11), generator=gen)
    maps = G.make_atom14_masks(aatype)
    x37 = torch.randn(2, 11, 37, 3, generator=gen, dtype=F64)
    # atom37 -> atom14 by the forward map (the test's own gather), then back.
    x14 = torch.gather(x37, 2, maps["residx_atom14_to_atom37"][..., None].expand(-1, -1, -1, 3))
    x14 = x14 * maps["atom14_atom_exists"][..., None].to(F64)
    back = G.atom14_to_atom37(x14, maps)
    torch.testing.assert_close(back, x37 * maps["atom37_atom_exists"][..., None].to(F64))
    assert torch.equal(maps["atom14_atom_exists"].sum(-1), maps["atom37_atom_exists"].sum(-1))
    assert maps["residx_atom14_to_atom37"].dtype == torch.long


def test_geometry_input_errors():
    with pytest.raises(TypeError, match="integer"):
        G.make_atom14_masks(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\[\*, N, 7, 2\]"):
        G.torsion_angles_to_frames(
            Rigid.identity((1, 3)), torch.zeros(1, 3, 6, 2), torch.zeros(1, 3, dtype=torch.long)
        )
    maps = G.make_atom14_masks(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="atom14_to_atom37"):
        G.atom14_to_atom37(torch.zeros(1, 4, 14, 3), maps)
