"""Residue geometry constants of AlphaFold2 / ESMFold, loaded from `data/residue_constants.json`.

The JSON is generated once by `gen_residue_constants.py` (the literal AF2 tables and everything
derived from them); this module only loads it, so importing costs a file read and no geometry.
`tests/test_esmfold_geometry.py` checks the file against its definitions.

Index conventions (AlphaFold2, and ESMFold's `aatype`):

- `aatype` in 0..20: the 20 amino acids in `restypes` order (alphabetical by 3-letter code),
  20 = unknown ("X" / "UNK"). Rows of every per-restype array are indexed by `aatype`.
- atom37: one slot per heavy-atom name (`atom_types`, N CA C CB O ... OXT).
- atom14: a dense per-residue layout (`restype_name_to_atom14_names`), backbone N CA C O first.
- rigid groups 0..7: backbone, pre-omega, phi, psi, chi1..chi4 (AF2 supplement 1.8, Table 2).

Arrays (numpy, float32 / int64):

    restype_atom14_to_rigid_group         [21, 14]        int64
    restype_atom14_mask                   [21, 14]        float32
    restype_atom14_rigid_group_positions  [21, 14, 3]     float32 (Angstrom, in the group frame)
    restype_atom37_to_rigid_group         [21, 37]        int64
    restype_atom37_mask                   [21, 37]        float32
    restype_atom37_rigid_group_positions  [21, 37, 3]     float32
    restype_atom14_to_atom37              [21, 14]        int64 (0 where the slot is empty)
    restype_atom37_to_atom14              [21, 37]        int64 (0 where the atom is absent)
    restype_rigid_group_default_frame     [21, 8, 4, 4]   float32 (group -> parent, zero torsion)
    chi_angles_mask                       [21, 4]         float32
    chi_pi_periodic                       [21, 4]         float32

Example:
    >>> from esmkernels.reference.esmfold import residue_constants as rc
    >>> rc.atom_order["CA"], rc.restype_order["W"], rc.restype_atom14_mask[rc.restype_order["G"]].sum()
    (1, 17, np.float32(4.0))
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

_DATA = json.loads((Path(__file__).parent / "data" / "residue_constants.json").read_text())

restypes: list[str] = _DATA["restypes"]
restype_order: dict[str, int] = {r: i for i, r in enumerate(restypes)}
restype_num = len(restypes)  # 20
unk_restype_index = restype_num  # 20: "X"
restypes_with_x: list[str] = restypes + ["X"]
restype_order_with_x: dict[str, int] = {r: i for i, r in enumerate(restypes_with_x)}
restype_1to3: dict[str, str] = _DATA["restype_1to3"]
restype_3to1: dict[str, str] = {v: k for k, v in restype_1to3.items()}
unk_restype = "UNK"
resnames: list[str] = [restype_1to3[r] for r in restypes] + [unk_restype]

atom_types: list[str] = _DATA["atom_types"]
atom_order: dict[str, int] = {a: i for i, a in enumerate(atom_types)}
atom_type_num = len(atom_types)  # 37

restype_name_to_atom14_names: dict[str, list[str]] = _DATA["restype_name_to_atom14_names"]
chi_angles_atoms: dict[str, list[list[str]]] = _DATA["chi_angles_atoms"]
# {resname: [(atom, group, (x, y, z)), ...]}
rigid_group_atom_positions: dict[str, list[tuple[str, int, tuple[float, float, float]]]] = {
    k: [(a, g, tuple(p)) for a, g, p in v] for k, v in _DATA["rigid_group_atom_positions"].items()
}


def _array(key: str, dtype, data: dict = _DATA) -> np.ndarray:
    out = np.asarray(data[key], dtype=dtype)
    out.setflags(write=False)  # shared module-level constants: never mutate in place
    return out


chi_angles_mask = _array("chi_angles_mask", np.float32)
chi_pi_periodic = _array("chi_pi_periodic", np.float32)
restype_atom14_to_rigid_group = _array("restype_atom14_to_rigid_group", np.int64)
restype_atom14_mask = _array("restype_atom14_mask", np.float32)
restype_atom14_rigid_group_positions = _array("restype_atom14_rigid_group_positions", np.float32)
restype_atom37_to_rigid_group = _array("restype_atom37_to_rigid_group", np.int64)
restype_atom37_mask = _array("restype_atom37_mask", np.float32)
restype_atom37_rigid_group_positions = _array("restype_atom37_rigid_group_positions", np.float32)
restype_atom14_to_atom37 = _array("restype_atom14_to_atom37", np.int64)
restype_atom37_to_atom14 = _array("restype_atom37_to_atom14", np.int64)
restype_rigid_group_default_frame = _array("restype_rigid_group_default_frame", np.float32)

del _DATA


def sequence_to_aatype(sequence: str) -> list[int]:
    """Map a one-letter amino-acid string to AlphaFold `aatype` indices (unknown letters -> 20).

    Raises ValueError for characters that are not letters (gaps, digits, chain separators).

    Example:
        >>> sequence_to_aatype("MKX")
        [12, 11, 20]
    """
    out = []
    for i, ch in enumerate(sequence):
        if not ("A" <= ch <= "Z"):
            raise ValueError(
                f"sequence_to_aatype: invalid character {ch!r} at position {i}; expected "
                "upper-case one-letter amino-acid codes"
            )
        out.append(restype_order.get(ch, unk_restype_index))
    return out


__all__ = [
    "atom_order",
    "atom_type_num",
    "atom_types",
    "chi_angles_atoms",
    "chi_angles_mask",
    "chi_pi_periodic",
    "resnames",
    "restype_1to3",
    "restype_3to1",
    "restype_atom14_mask",
    "restype_atom14_rigid_group_positions",
    "restype_atom14_to_atom37",
    "restype_atom14_to_rigid_group",
    "restype_atom37_mask",
    "restype_atom37_rigid_group_positions",
    "restype_atom37_to_atom14",
    "restype_atom37_to_rigid_group",
    "restype_name_to_atom14_names",
    "restype_num",
    "restype_order",
    "restype_order_with_x",
    "restype_rigid_group_default_frame",
    "restypes",
    "restypes_with_x",
    "rigid_group_atom_positions",
    "sequence_to_aatype",
    "unk_restype",
    "unk_restype_index",
]
