"""Generate `data/residue_constants.json`: AlphaFold2's residue geometry, written out once.

The literal tables below are the definitions (AlphaFold2 `residue_constants.py`, DeepMind,
Apache-2.0; the same numbers ship with openfold, fair-esm's ESMFold and transformers' port):

- amino-acid order (`RESTYPES`, 3-letter codes sorted alphabetically) and the atom37 order,
- atom14 names per residue (the dense per-residue atom layout of the structure module),
- chi-angle atom quadruples (AF2 supplement section 1.8, Table 2),
- literature atom positions inside each of the 8 rigid groups (supplement 1.8, Table 2:
  0 backbone, 1 pre-omega, 2 phi, 3 psi, 4..7 chi1..chi4), Engh & Huber ideal geometry.

Everything else is derived here: index maps atom14 <-> atom37, masks, and the default frames
of each rigid group relative to its parent (`restype_rigid_group_default_frame`, supplement
Alg. 24 "makeRotX" inputs). The runtime module `residue_constants.py` only loads the JSON, so
importing it costs no computation; `tests/test_esmfold_geometry.py` rebuilds the derived arrays
independently and checks that the file is current (`build() == json.load(file)`).

Run from the repository root to regenerate:

    python reference/esmfold/gen_residue_constants.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

OUTPUT = Path(__file__).parent / "data" / "residue_constants.json"

# One-letter codes in AlphaFold order (alphabetical by 3-letter code); index 20 is "X"/UNK.
RESTYPES = "A R N D C Q E G H I L K M F P S T W Y V".split()
RESTYPE_1TO3 = {
    "A": "ALA", "R": "ARG", "N": "ASN", "D": "ASP", "C": "CYS", "Q": "GLN", "E": "GLU",
    "G": "GLY", "H": "HIS", "I": "ILE", "L": "LEU", "K": "LYS", "M": "MET", "F": "PHE",
    "P": "PRO", "S": "SER", "T": "THR", "W": "TRP", "Y": "TYR", "V": "VAL",
}  # fmt: skip

# atom37: every heavy atom name that occurs in the 20 amino acids, plus the C-terminal OXT.
ATOM_TYPES = (
    "N CA C CB O CG CG1 CG2 OG OG1 SG CD CD1 CD2 ND1 ND2 OD1 OD2 SD CE CE1 CE2 CE3 NE NE1 NE2 "
    "OE1 OE2 CH2 NH1 NH2 OH CZ CZ2 CZ3 NZ OXT"
).split()

# atom14: backbone N CA C O first, then the side chain; "-" marks an unused slot.
ATOM14_NAMES = {
    "ALA": "N CA C O CB - - - - - - - - -",
    "ARG": "N CA C O CB CG CD NE CZ NH1 NH2 - - -",
    "ASN": "N CA C O CB CG OD1 ND2 - - - - - -",
    "ASP": "N CA C O CB CG OD1 OD2 - - - - - -",
    "CYS": "N CA C O CB SG - - - - - - - -",
    "GLN": "N CA C O CB CG CD OE1 NE2 - - - - -",
    "GLU": "N CA C O CB CG CD OE1 OE2 - - - - -",
    "GLY": "N CA C O - - - - - - - - - -",
    "HIS": "N CA C O CB CG ND1 CD2 CE1 NE2 - - - -",
    "ILE": "N CA C O CB CG1 CG2 CD1 - - - - - -",
    "LEU": "N CA C O CB CG CD1 CD2 - - - - - -",
    "LYS": "N CA C O CB CG CD CE NZ - - - - -",
    "MET": "N CA C O CB CG SD CE - - - - - -",
    "PHE": "N CA C O CB CG CD1 CD2 CE1 CE2 CZ - - -",
    "PRO": "N CA C O CB CG CD - - - - - - -",
    "SER": "N CA C O CB OG - - - - - - - -",
    "THR": "N CA C O CB OG1 CG2 - - - - - - -",
    "TRP": "N CA C O CB CG CD1 CD2 NE1 CE2 CE3 CZ2 CZ3 CH2",
    "TYR": "N CA C O CB CG CD1 CD2 CE1 CE2 CZ OH - -",
    "VAL": "N CA C O CB CG1 CG2 - - - - - - -",
    "UNK": "- - - - - - - - - - - - - -",
}

# Chi angles chi1..chi4, each by its four defining atoms (ARG chi5 is ~0 and ignored).
CHI_ANGLES_ATOMS = {
    "ALA": [],
    "ARG": ["N CA CB CG", "CA CB CG CD", "CB CG CD NE", "CG CD NE CZ"],
    "ASN": ["N CA CB CG", "CA CB CG OD1"],
    "ASP": ["N CA CB CG", "CA CB CG OD1"],
    "CYS": ["N CA CB SG"],
    "GLN": ["N CA CB CG", "CA CB CG CD", "CB CG CD OE1"],
    "GLU": ["N CA CB CG", "CA CB CG CD", "CB CG CD OE1"],
    "GLY": [],
    "HIS": ["N CA CB CG", "CA CB CG ND1"],
    "ILE": ["N CA CB CG1", "CA CB CG1 CD1"],
    "LEU": ["N CA CB CG", "CA CB CG CD1"],
    "LYS": ["N CA CB CG", "CA CB CG CD", "CB CG CD CE", "CG CD CE NZ"],
    "MET": ["N CA CB CG", "CA CB CG SD", "CB CG SD CE"],
    "PHE": ["N CA CB CG", "CA CB CG CD1"],
    "PRO": ["N CA CB CG", "CA CB CG CD"],
    "SER": ["N CA CB OG"],
    "THR": ["N CA CB OG1"],
    "TRP": ["N CA CB CG", "CA CB CG CD1"],
    "TYR": ["N CA CB CG", "CA CB CG CD1"],
    "VAL": ["N CA CB CG1"],
}

# Chi angles that are pi-periodic (symmetric side-chain ends): ASP chi2, GLU chi3, PHE/TYR chi2.
CHI_PI_PERIODIC = {"ASP": [1], "GLU": [2], "PHE": [1], "TYR": [1]}

# Literature positions (Angstrom) of each atom in the frame of its rigid group:
# (atom, group, (x, y, z)). Group frames: x along the rotation axis, ending at the origin; the
# atom that defines the dihedral lies in the xy-plane with positive y.
RIGID_GROUP_ATOM_POSITIONS = {
    "ALA": [
        ("N", 0, (-0.525, 1.363, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.526, -0.000, -0.000)),
        ("CB", 0, (-0.529, -0.774, -1.205)),
        ("O", 3, (0.627, 1.062, 0.000)),
    ],
    "ARG": [
        ("N", 0, (-0.524, 1.362, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.525, -0.000, -0.000)),
        ("CB", 0, (-0.524, -0.778, -1.209)),
        ("O", 3, (0.626, 1.062, 0.000)),
        ("CG", 4, (0.616, 1.390, -0.000)),
        ("CD", 5, (0.564, 1.414, 0.000)),
        ("NE", 6, (0.539, 1.357, -0.000)),
        ("NH1", 7, (0.206, 2.301, 0.000)),
        ("NH2", 7, (2.078, 0.978, -0.000)),
        ("CZ", 7, (0.758, 1.093, -0.000)),
    ],
    "ASN": [
        ("N", 0, (-0.536, 1.357, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.526, -0.000, -0.000)),
        ("CB", 0, (-0.531, -0.787, -1.200)),
        ("O", 3, (0.625, 1.062, 0.000)),
        ("CG", 4, (0.584, 1.399, 0.000)),
        ("ND2", 5, (0.593, -1.188, 0.001)),
        ("OD1", 5, (0.633, 1.059, 0.000)),
    ],
    "ASP": [
        ("N", 0, (-0.525, 1.362, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.527, 0.000, -0.000)),
        ("CB", 0, (-0.526, -0.778, -1.208)),
        ("O", 3, (0.626, 1.062, -0.000)),
        ("CG", 4, (0.593, 1.398, -0.000)),
        ("OD1", 5, (0.610, 1.091, 0.000)),
        ("OD2", 5, (0.592, -1.101, -0.003)),
    ],
    "CYS": [
        ("N", 0, (-0.522, 1.362, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.524, 0.000, 0.000)),
        ("CB", 0, (-0.519, -0.773, -1.212)),
        ("O", 3, (0.625, 1.062, -0.000)),
        ("SG", 4, (0.728, 1.653, 0.000)),
    ],
    "GLN": [
        ("N", 0, (-0.526, 1.361, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.526, 0.000, 0.000)),
        ("CB", 0, (-0.525, -0.779, -1.207)),
        ("O", 3, (0.626, 1.062, -0.000)),
        ("CG", 4, (0.615, 1.393, 0.000)),
        ("CD", 5, (0.587, 1.399, -0.000)),
        ("NE2", 6, (0.593, -1.189, -0.001)),
        ("OE1", 6, (0.634, 1.060, 0.000)),
    ],
    "GLU": [
        ("N", 0, (-0.528, 1.361, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.526, -0.000, -0.000)),
        ("CB", 0, (-0.526, -0.781, -1.207)),
        ("O", 3, (0.626, 1.062, 0.000)),
        ("CG", 4, (0.615, 1.392, 0.000)),
        ("CD", 5, (0.600, 1.397, 0.000)),
        ("OE1", 6, (0.607, 1.095, -0.000)),
        ("OE2", 6, (0.589, -1.104, -0.001)),
    ],
    "GLY": [
        ("N", 0, (-0.572, 1.337, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.517, -0.000, -0.000)),
        ("O", 3, (0.626, 1.062, -0.000)),
    ],
    "HIS": [
        ("N", 0, (-0.527, 1.360, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.525, 0.000, 0.000)),
        ("CB", 0, (-0.525, -0.778, -1.208)),
        ("O", 3, (0.625, 1.063, 0.000)),
        ("CG", 4, (0.600, 1.370, -0.000)),
        ("CD2", 5, (0.889, -1.021, 0.003)),
        ("ND1", 5, (0.744, 1.160, -0.000)),
        ("CE1", 5, (2.030, 0.851, 0.002)),
        ("NE2", 5, (2.145, -0.466, 0.004)),
    ],
    "ILE": [
        ("N", 0, (-0.493, 1.373, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.527, -0.000, -0.000)),
        ("CB", 0, (-0.536, -0.793, -1.213)),
        ("O", 3, (0.627, 1.062, -0.000)),
        ("CG1", 4, (0.534, 1.437, -0.000)),
        ("CG2", 4, (0.540, -0.785, -1.199)),
        ("CD1", 5, (0.619, 1.391, 0.000)),
    ],
    "LEU": [
        ("N", 0, (-0.520, 1.363, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.525, -0.000, -0.000)),
        ("CB", 0, (-0.522, -0.773, -1.214)),
        ("O", 3, (0.625, 1.063, -0.000)),
        ("CG", 4, (0.678, 1.371, 0.000)),
        ("CD1", 5, (0.530, 1.430, -0.000)),
        ("CD2", 5, (0.535, -0.774, 1.200)),
    ],
    "LYS": [
        ("N", 0, (-0.526, 1.362, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.526, 0.000, 0.000)),
        ("CB", 0, (-0.524, -0.778, -1.208)),
        ("O", 3, (0.626, 1.062, -0.000)),
        ("CG", 4, (0.619, 1.390, 0.000)),
        ("CD", 5, (0.559, 1.417, 0.000)),
        ("CE", 6, (0.560, 1.416, 0.000)),
        ("NZ", 7, (0.554, 1.387, 0.000)),
    ],
    "MET": [
        ("N", 0, (-0.521, 1.364, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.525, 0.000, 0.000)),
        ("CB", 0, (-0.523, -0.776, -1.210)),
        ("O", 3, (0.625, 1.062, -0.000)),
        ("CG", 4, (0.613, 1.391, -0.000)),
        ("SD", 5, (0.703, 1.695, 0.000)),
        ("CE", 6, (0.320, 1.786, -0.000)),
    ],
    "PHE": [
        ("N", 0, (-0.518, 1.363, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.524, 0.000, -0.000)),
        ("CB", 0, (-0.525, -0.776, -1.212)),
        ("O", 3, (0.626, 1.062, -0.000)),
        ("CG", 4, (0.607, 1.377, 0.000)),
        ("CD1", 5, (0.709, 1.195, -0.000)),
        ("CD2", 5, (0.706, -1.196, 0.000)),
        ("CE1", 5, (2.102, 1.198, -0.000)),
        ("CE2", 5, (2.098, -1.201, -0.000)),
        ("CZ", 5, (2.794, -0.003, -0.001)),
    ],
    "PRO": [
        ("N", 0, (-0.566, 1.351, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.527, -0.000, 0.000)),
        ("CB", 0, (-0.546, -0.611, -1.293)),
        ("O", 3, (0.621, 1.066, 0.000)),
        ("CG", 4, (0.382, 1.445, 0.000)),
        # AF2 widened this angle by 2 degrees from the ideal (0.427, 1.440, 0.0).
        ("CD", 5, (0.477, 1.424, 0.000)),
    ],
    "SER": [
        ("N", 0, (-0.529, 1.360, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.525, -0.000, -0.000)),
        ("CB", 0, (-0.518, -0.777, -1.211)),
        ("O", 3, (0.626, 1.062, -0.000)),
        ("OG", 4, (0.503, 1.325, 0.000)),
    ],
    "THR": [
        ("N", 0, (-0.517, 1.364, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.526, 0.000, -0.000)),
        ("CB", 0, (-0.516, -0.793, -1.215)),
        ("O", 3, (0.626, 1.062, 0.000)),
        ("CG2", 4, (0.550, -0.718, -1.228)),
        ("OG1", 4, (0.472, 1.353, 0.000)),
    ],
    "TRP": [
        ("N", 0, (-0.521, 1.363, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.525, -0.000, 0.000)),
        ("CB", 0, (-0.523, -0.776, -1.212)),
        ("O", 3, (0.627, 1.062, 0.000)),
        ("CG", 4, (0.609, 1.370, -0.000)),
        ("CD1", 5, (0.824, 1.091, 0.000)),
        ("CD2", 5, (0.854, -1.148, -0.005)),
        ("CE2", 5, (2.186, -0.678, -0.007)),
        ("CE3", 5, (0.622, -2.530, -0.007)),
        ("NE1", 5, (2.140, 0.690, -0.004)),
        ("CH2", 5, (3.028, -2.890, -0.013)),
        ("CZ2", 5, (3.283, -1.543, -0.011)),
        ("CZ3", 5, (1.715, -3.389, -0.011)),
    ],
    "TYR": [
        ("N", 0, (-0.522, 1.362, 0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.524, -0.000, -0.000)),
        ("CB", 0, (-0.522, -0.776, -1.213)),
        ("O", 3, (0.627, 1.062, -0.000)),
        ("CG", 4, (0.607, 1.382, -0.000)),
        ("CD1", 5, (0.716, 1.195, -0.000)),
        ("CD2", 5, (0.713, -1.194, -0.001)),
        ("CE1", 5, (2.107, 1.200, -0.002)),
        ("CE2", 5, (2.104, -1.201, -0.003)),
        ("OH", 5, (4.168, -0.002, -0.005)),
        ("CZ", 5, (2.791, -0.001, -0.003)),
    ],
    "VAL": [
        ("N", 0, (-0.494, 1.373, -0.000)),
        ("CA", 0, (0.000, 0.000, 0.000)),
        ("C", 0, (1.527, -0.000, -0.000)),
        ("CB", 0, (-0.533, -0.795, -1.213)),
        ("O", 3, (0.627, 1.062, -0.000)),
        ("CG1", 4, (0.540, 1.429, -0.000)),
        ("CG2", 4, (0.533, -0.776, 1.203)),
    ],
}


def frame_from_axes(ex: np.ndarray, ey: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """4x4 frame whose x-axis points along `ex`, with `ey` in its xy-plane (Gram-Schmidt)."""
    x = ex / np.linalg.norm(ex)
    y = ey - np.dot(ey, x) * x
    y = y / np.linalg.norm(y)
    frame = np.eye(4)
    frame[:3, :3] = np.stack([x, y, np.cross(x, y)], axis=-1)
    frame[:3, 3] = origin
    return frame


def default_frames(resname: str) -> np.ndarray:
    """[8, 4, 4] frame of each rigid group relative to its parent at zero torsion angle.

    Parents: backbone for pre-omega, phi, psi and chi1; chi(k-1) for chi(k), k = 2..4. Chi
    groups the residue lacks keep all-zero matrices, as in AlphaFold2 (no atom uses them, and the
    structure module's `sidechain_frames` output shows them as zeros).
    """
    pos = {a: np.array(p, dtype=np.float64) for a, _, p in RIGID_GROUP_ATOM_POSITIONS[resname]}
    frames = np.zeros((8, 4, 4))
    frames[0] = frames[1] = np.eye(4)  # backbone; pre-omega (holds no heavy atom) is identity
    # phi: rotation axis CA -> N, positioned at N.
    frames[2] = frame_from_axes(pos["N"] - pos["CA"], np.array([1.0, 0.0, 0.0]), pos["N"])
    # psi: rotation axis CA -> C, positioned at C, with N on the -y side.
    frames[3] = frame_from_axes(pos["C"] - pos["CA"], pos["CA"] - pos["N"], pos["C"])
    chis = [c.split() for c in CHI_ANGLES_ATOMS[resname]]
    if chis:
        # chi1: axis CA -> CB in backbone coordinates, N (the first atom) in the xy-plane.
        a, b, c, _ = (pos[n] for n in chis[0])
        frames[4] = frame_from_axes(c - b, a - b, c)
    for k in range(1, len(chis)):
        # chi(k+1): the axis end atom is given in chi(k)'s frame, whose origin is the axis start;
        # the atom before lies on chi(k)'s -x axis.
        end = pos[chis[k][2]]
        frames[4 + k] = frame_from_axes(end, np.array([-1.0, 0.0, 0.0]), end)
    return frames


def build() -> dict:
    """All tables, literal and derived, as a JSON-ready dict."""
    resnames = [RESTYPE_1TO3[r] for r in RESTYPES]  # 20 amino acids; row 20 is UNK (all zero)
    atom_order = {a: i for i, a in enumerate(ATOM_TYPES)}
    n = len(RESTYPES) + 1

    atom14_to_group = np.zeros((n, 14), dtype=np.int64)
    atom14_mask = np.zeros((n, 14))
    atom14_positions = np.zeros((n, 14, 3))
    atom37_to_group = np.zeros((n, 37), dtype=np.int64)
    atom37_mask = np.zeros((n, 37))
    atom37_positions = np.zeros((n, 37, 3))
    atom14_to_atom37 = np.zeros((n, 14), dtype=np.int64)
    atom37_to_atom14 = np.zeros((n, 37), dtype=np.int64)
    frames = np.zeros((n, 8, 4, 4))  # UNK (row 20) has no frames at all
    chi_mask = np.zeros((n, 4))
    chi_pi_periodic = np.zeros((n, 4))

    for r, resname in enumerate(resnames):
        names14 = ATOM14_NAMES[resname].split()
        for i14, name in enumerate(names14):
            if name != "-":
                atom14_to_atom37[r, i14] = atom_order[name]
                atom37_to_atom14[r, atom_order[name]] = i14
        for name, group, xyz in RIGID_GROUP_ATOM_POSITIONS[resname]:
            i14, i37 = names14.index(name), atom_order[name]
            atom14_to_group[r, i14], atom37_to_group[r, i37] = group, group
            atom14_mask[r, i14], atom37_mask[r, i37] = 1.0, 1.0
            atom14_positions[r, i14], atom37_positions[r, i37] = xyz, xyz
        frames[r] = default_frames(resname)
        chi_mask[r, : len(CHI_ANGLES_ATOMS[resname])] = 1.0
        chi_pi_periodic[r, CHI_PI_PERIODIC.get(resname, [])] = 1.0

    return {
        "source": "AlphaFold2 residue_constants (DeepMind, Apache-2.0); generated by "
        "reference/esmfold/gen_residue_constants.py",
        "restypes": RESTYPES,
        "restype_1to3": RESTYPE_1TO3,
        "atom_types": ATOM_TYPES,
        "restype_name_to_atom14_names": {
            k: [("" if a == "-" else a) for a in v.split()] for k, v in ATOM14_NAMES.items()
        },
        "chi_angles_atoms": {k: [c.split() for c in v] for k, v in CHI_ANGLES_ATOMS.items()},
        "rigid_group_atom_positions": {
            k: [[a, g, list(p)] for a, g, p in v] for k, v in RIGID_GROUP_ATOM_POSITIONS.items()
        },
        "chi_angles_mask": chi_mask.tolist(),
        "chi_pi_periodic": chi_pi_periodic.tolist(),
        "restype_atom14_to_rigid_group": atom14_to_group.tolist(),
        "restype_atom14_mask": atom14_mask.tolist(),
        "restype_atom14_rigid_group_positions": atom14_positions.tolist(),
        "restype_atom37_to_rigid_group": atom37_to_group.tolist(),
        "restype_atom37_mask": atom37_mask.tolist(),
        "restype_atom37_rigid_group_positions": atom37_positions.tolist(),
        "restype_atom14_to_atom37": atom14_to_atom37.tolist(),
        "restype_atom37_to_atom14": atom37_to_atom14.tolist(),
        "restype_rigid_group_default_frame": frames.tolist(),
    }


def main() -> None:
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    # One key per line keeps diffs of a regenerated file readable.
    items = [f"{json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in build().items()]
    OUTPUT.write_text("{\n" + ",\n".join(items) + "\n}\n")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
