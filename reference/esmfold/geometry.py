"""All-atom geometry of the structure module: torsion angles -> frames -> atom positions.

- `torsion_angles_to_frames`: AF2 supplement Alg. 24 ("computeAllAtomCoordinates", lines 1-10):
  the 7 predicted torsions (omega, phi, psi, chi1..chi4) rotate each rigid group's default frame
  about its x-axis; chi2..chi4 chain onto the previous chi group, the rest hang off the backbone.
- `frames_and_literature_positions_to_atom14_pos`: Alg. 24 line 11: every atom's literature
  position mapped through the global frame of its rigid group.
- `make_atom14_masks`, `atom14_to_atom37`: the dense atom14 layout <-> the atom37 layout used by
  PDB files and metrics (AF2 supplement 1.2.1).

Shapes: `*` batch dims, `N` residues. `aatype` holds AlphaFold indices 0..20 (20 = unknown, which
has no atoms). Residue constants come from `residue_constants`; the structure module passes its
own buffers so they live on the right device.

Example:
    >>> import torch
    >>> from esmkernels.reference.esmfold.rigid import Rigid
    >>> aatype = torch.tensor([[0, 17, 7]])                     # ALA TRP GLY
    >>> alpha = torch.tensor([0.0, 1.0]).expand(1, 3, 7, 2)     # all torsions zero (sin, cos)
    >>> frames = torsion_angles_to_frames(Rigid.identity((1, 3)), alpha, aatype)
    >>> atom14_pos = frames_and_literature_positions_to_atom14_pos(frames, aatype)
    >>> atom14_pos.shape, frames.shape
    (torch.Size([1, 3, 14, 3]), torch.Size([1, 3, 8]))
"""

from __future__ import annotations

import torch

from esmkernels.reference.esmfold import residue_constants as rc
from esmkernels.reference.esmfold.rigid import Rigid, Rotation


def _constant(array, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.tensor(array, dtype=dtype, device=like.device)


def _check_aatype(aatype: torch.Tensor, where: str) -> None:
    if aatype.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{where}: aatype must be an integer tensor, got {aatype.dtype}")


def torsion_angles_to_frames(
    r: Rigid,
    alpha: torch.Tensor,
    aatype: torch.Tensor,
    default_frames: torch.Tensor | None = None,
) -> Rigid:
    """Global frames of the 8 rigid groups of every residue (AF2 Alg. 24 lines 1-10).

    Args:
        r: backbone frames, batch shape `[*, N]` (translations in Angstrom).
        alpha: `[*, N, 7, 2]` torsions as (sin, cos): omega, phi, psi, chi1..chi4.
        aatype: `[*, N]` integer residue types.
        default_frames: `[21, 8, 4, 4]` group -> parent frames at zero torsion
            (`rc.restype_rigid_group_default_frame` when None).

    Returns:
        Rigid with batch shape `[*, N, 8]`: group -> global frames (group 0 is `r` itself).
    """
    _check_aatype(aatype, "torsion_angles_to_frames")
    if alpha.shape[-2:] != (7, 2):
        raise ValueError(
            f"torsion_angles_to_frames: alpha must be [*, N, 7, 2], got {tuple(alpha.shape)}"
        )
    if default_frames is None:
        default_frames = _constant(rc.restype_rigid_group_default_frame, alpha, torch.float32)
    default = Rigid.from_tensor_4x4(default_frames[aatype.long()])  # [*, N, 8]

    # The backbone group gets angle 0 (sin 0, cos 1), then the 7 predicted torsions.
    dtype = torch.promote_types(alpha.dtype, torch.float32)
    alpha = alpha.to(dtype)
    zero_angle = alpha.new_tensor([0.0, 1.0]).expand(*alpha.shape[:-2], 1, 2)
    sin, cos = torch.cat([zero_angle, alpha], dim=-2).unbind(dim=-1)  # [*, N, 8] each
    one, zero = torch.ones_like(sin), torch.zeros_like(sin)
    # Rotation about x by the torsion: [[1, 0, 0], [0, cos, -sin], [0, sin, cos]].
    rot_x = torch.stack(
        [
            torch.stack([one, zero, zero], dim=-1),
            torch.stack([zero, cos, -sin], dim=-1),
            torch.stack([zero, sin, cos], dim=-1),
        ],
        dim=-2,
    )
    local = default.compose(Rigid(Rotation(rot_mats=rot_x), None))  # group -> parent, [*, N, 8]

    # chi2..chi4 hang off the previous chi group; compose them down to the backbone.
    chi_to_bb = [local[..., 4]]
    for k in (5, 6, 7):
        chi_to_bb.append(chi_to_bb[-1].compose(local[..., k]))
    to_bb = Rigid.cat([local[..., :5]] + [f.unsqueeze(-1) for f in chi_to_bb[1:]], dim=-1)
    return r[..., None].compose(to_bb)


def frames_and_literature_positions_to_atom14_pos(
    r: Rigid,
    aatype: torch.Tensor,
    default_frames: torch.Tensor | None = None,
    group_idx: torch.Tensor | None = None,
    atom_mask: torch.Tensor | None = None,
    lit_positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Atom positions in the atom14 layout (AF2 Alg. 24 line 11).

    Args:
        r: group -> global frames, batch shape `[*, N, 8]` (from `torsion_angles_to_frames`).
        aatype: `[*, N]` integer residue types.
        default_frames: unused; kept so the argument list matches openfold's / HF's.
        group_idx: `[21, 14]` rigid group of each atom14 slot.
        atom_mask: `[21, 14]` 1 where the slot holds an atom.
        lit_positions: `[21, 14, 3]` literature positions in the group frame.
        (Each defaults to the `residue_constants` array when None.)

    Returns:
        `[*, N, 14, 3]` positions; empty slots are 0.
    """
    del default_frames
    _check_aatype(aatype, "frames_and_literature_positions_to_atom14_pos")
    rots = r.get_rots().get_rot_mats()
    trans = r.get_trans()
    if group_idx is None:
        group_idx = _constant(rc.restype_atom14_to_rigid_group, trans, torch.long)
    if atom_mask is None:
        atom_mask = _constant(rc.restype_atom14_mask, trans, torch.float32)
    if lit_positions is None:
        lit_positions = _constant(rc.restype_atom14_rigid_group_positions, trans, torch.float32)
    aatype = aatype.long()
    group = group_idx[aatype].long()  # [*, N, 14]
    atom_rots = torch.take_along_dim(rots, group[..., None, None], dim=-3)  # [*, N, 14, 3, 3]
    atom_trans = torch.take_along_dim(trans, group[..., None], dim=-2)  # [*, N, 14, 3]
    lit = lit_positions[aatype].to(trans.dtype)  # [*, N, 14, 3]
    positions = Rigid(Rotation(rot_mats=atom_rots), atom_trans).apply(lit)
    return positions * atom_mask[aatype].to(positions.dtype)[..., None]


def make_atom14_masks(aatype: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-residue atom14 / atom37 index maps and existence masks.

    Args:
        aatype: `[*, N]` integer residue types (20 = unknown: no atoms, all maps 0).

    Returns:
        dict with
        - `atom14_atom_exists`      `[*, N, 14]` float32, 1 = atom present
        - `residx_atom14_to_atom37` `[*, N, 14]` int64 (0 for empty slots)
        - `residx_atom37_to_atom14` `[*, N, 37]` int64 (0 for absent atoms)
        - `atom37_atom_exists`      `[*, N, 37]` float32, 1 = atom present

    Example:
        >>> m = make_atom14_masks(torch.tensor([[7, 17]]))    # GLY TRP
        >>> m["atom14_atom_exists"].sum(-1)
        tensor([[ 4., 14.]])
    """
    _check_aatype(aatype, "make_atom14_masks")
    aatype = aatype.long()
    table = {
        "atom14_atom_exists": (rc.restype_atom14_mask, torch.float32),
        "residx_atom14_to_atom37": (rc.restype_atom14_to_atom37, torch.long),
        "residx_atom37_to_atom14": (rc.restype_atom37_to_atom14, torch.long),
        "atom37_atom_exists": (rc.restype_atom37_mask, torch.float32),
    }
    return {k: _constant(a, aatype, dt)[aatype] for k, (a, dt) in table.items()}


def atom14_to_atom37(atom14: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Scatter atom14 data into the atom37 layout.

    Args:
        atom14: `[*, N, 14, C]` per-atom data (e.g. positions, C = 3).
        batch: the dict of `make_atom14_masks` (uses `residx_atom37_to_atom14` `[*, N, 37]` and
            `atom37_atom_exists` `[*, N, 37]`).

    Returns:
        `[*, N, 37, C]`, zero where the atom does not exist.
    """
    index = batch["residx_atom37_to_atom14"]
    if atom14.shape[:-2] != index.shape[:-1] or atom14.shape[-2] != 14:
        raise ValueError(
            f"atom14_to_atom37: atom14 {tuple(atom14.shape)} does not match the [*, N, 14, C] layout "
            f"of residx_atom37_to_atom14 {tuple(index.shape)}"
        )
    atom37 = torch.take_along_dim(atom14, index[..., None].long(), dim=-2)
    return atom37 * batch["atom37_atom_exists"][..., None].to(atom37.dtype)


__all__ = [
    "atom14_to_atom37",
    "frames_and_literature_positions_to_atom14_pos",
    "make_atom14_masks",
    "torsion_angles_to_frames",
]
