"""PDB text output of predicted structures, and a small ATOM-record parser for tests.

`to_pdb` writes fixed-column PDB v3.3 records: one ATOM per existing atom37 slot, a TER after
each chain, then END. Chains are lettered A, B, ... (then a..z, 0..9) from a per-residue chain
index; the B-factor column holds pLDDT on the 0-100 scale. The records are column-for-column
those of AlphaFold2 / openfold / ESMFold's `to_pdb` (which also writes non-standard `PARENT`
header lines; we do not).

`output_to_pdb` turns a structure-prediction output dict (HF `EsmForProteinFolding` layout,
pLDDT on 0-1) into one PDB text per batch item.

Example:
    >>> import numpy as np
    >>> aatype = np.array([7])                                   # one glycine
    >>> pos = np.zeros((1, 37, 3)); mask = np.zeros((1, 37)); mask[0, :3] = 1
    >>> text = to_pdb(aatype, pos, mask, residue_index=np.array([1]),
    ...               b_factors=np.full((1, 37), 87.5))
    >>> print(text.splitlines()[1].rstrip())
    ATOM      2  CA  GLY A   1       0.000   0.000   0.000  1.00 87.50           C
"""

from __future__ import annotations

import dataclasses
import string

import numpy as np
import torch

from esmkernels.reference.esmfold import residue_constants as rc
from esmkernels.reference.esmfold.geometry import atom14_to_atom37

CHAIN_IDS = string.ascii_uppercase + string.ascii_lowercase + string.digits


def _resname(aatype: int) -> str:
    return rc.resnames[aatype] if 0 <= aatype < len(rc.resnames) else "UNK"


def to_pdb(
    aatype: np.ndarray,
    atom_positions: np.ndarray,
    atom_mask: np.ndarray,
    residue_index: np.ndarray | None = None,
    b_factors: np.ndarray | None = None,
    chain_index: np.ndarray | None = None,
) -> str:
    """PDB text of one structure.

    Args:
        aatype: `[L]` int, AlphaFold residue types 0..20 (20 is written as UNK).
        atom_positions: `[L, 37, 3]` float, Angstrom, atom37 order (`rc.atom_types`).
        atom_mask: `[L, 37]`, atoms with mask >= 0.5 are written (1 = keep).
        residue_index: `[L]` int residue numbers as written (default 1..L).
        b_factors: `[L, 37]` or `[L]` values for the B-factor column (pLDDT on 0-100 by
            convention); zeros when None.
        chain_index: `[L]` int chain of each residue, 0 -> A, 1 -> B, ... (all A when None).

    Returns:
        The PDB text: 80-column records, the last one `END` (padded), then a newline.
    """
    aatype = np.asarray(aatype).astype(np.int64)
    positions = np.asarray(atom_positions, dtype=np.float64)
    mask = np.asarray(atom_mask)
    n = aatype.shape[0]
    if aatype.ndim != 1 or positions.shape != (n, 37, 3) or mask.shape != (n, 37):
        raise ValueError(
            f"to_pdb: expected aatype [L], atom_positions [L, 37, 3], atom_mask [L, 37]; got "
            f"{aatype.shape}, {positions.shape}, {mask.shape}"
        )
    if n and (aatype.min() < 0 or aatype.max() > rc.restype_num):
        raise ValueError(
            f"to_pdb: aatype values must be in 0..20, got {aatype.min()}..{aatype.max()}"
        )
    residue_index = np.arange(1, n + 1) if residue_index is None else np.asarray(residue_index)
    b = np.zeros((n, 37)) if b_factors is None else np.asarray(b_factors, dtype=np.float64)
    if b.shape == (n,):
        b = np.repeat(b[:, None], 37, axis=1)
    chain_index = np.zeros(n, dtype=np.int64) if chain_index is None else np.asarray(chain_index)
    if residue_index.shape != (n,) or b.shape != (n, 37) or chain_index.shape != (n,):
        raise ValueError(
            f"to_pdb: residue_index {residue_index.shape}, b_factors {b.shape} or chain_index "
            f"{chain_index.shape} do not match L={n}"
        )
    if n and (chain_index.min() < 0 or chain_index.max() >= len(CHAIN_IDS)):
        raise ValueError(
            f"to_pdb: chain_index values must be in 0..{len(CHAIN_IDS) - 1}, got "
            f"{chain_index.min()}..{chain_index.max()}"
        )
    written = positions[mask >= 0.5]
    if written.size and (
        written.max() >= 1e4 or written.min() <= -1e3 or not np.isfinite(written).all()
    ):
        raise ValueError(
            "to_pdb: coordinates outside the PDB range (-999.999, 9999.999) or not finite"
        )

    lines: list[str] = []
    serial = 1
    for i in range(n):
        resname, chain = _resname(int(aatype[i])), CHAIN_IDS[int(chain_index[i])]
        resseq = int(residue_index[i])
        for j, atom in enumerate(rc.atom_types):
            if mask[i, j] < 0.5:
                continue
            x, y, z = positions[i, j]
            name = atom if len(atom) == 4 else f" {atom}"  # 1-3 letter names start in column 14
            lines.append(
                f"{'ATOM':<6}{serial:>5} {name:<4}{'':>1}{resname:>3} {chain:>1}{resseq:>4}{'':>1}   "
                f"{x:>8.3f}{y:>8.3f}{z:>8.3f}{1.0:>6.2f}{b[i, j]:>6.2f}          {atom[0]:>2}{'':>2}"
            )
            serial += 1
        if i == n - 1 or chain_index[i + 1] != chain_index[i]:
            lines.append(f"{'TER':<6}{serial:>5}      {resname:>3} {chain:>1}{resseq:>4}".ljust(80))
            serial += 1
    lines.append("END".ljust(80))  # every record is 80 columns; parsers read columns 1-6
    return "\n".join(lines) + "\n"


def output_to_pdb(output: dict, plddt_scale: float = 100.0) -> list[str]:
    """One PDB text per batch item of a structure-prediction output.

    Args:
        output: dict (or attribute-style output object) with `positions` `[n_blocks, B, L, 14, 3]` (the last block is written),
            `aatype` `[B, L]`, `residx_atom37_to_atom14` `[B, L, 37]`, `atom37_atom_exists`
            `[B, L, 37]` (padding zeroed), `residue_index` `[B, L]` (0-based; written + 1),
            `plddt` `[B, L, 37]`, optional `chain_index` `[B, L]`.
        plddt_scale: factor taking `plddt` to 0-100; 100 for HF-style 0-1 pLDDT (default).

    Returns:
        list of B PDB texts. Residues without any existing atom (padding, multimer linkers)
        are left out.
    """

    def get(key: str):
        if isinstance(output, dict):
            return output.get(key)
        return getattr(output, key, None)  # ModelOutput-style dataclasses

    maps = {k: get(k) for k in ("residx_atom37_to_atom14", "atom37_atom_exists")}
    atom37 = atom14_to_atom37(get("positions")[-1], maps)

    def to_np(t) -> np.ndarray:
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu()
            t = t.double() if t.is_floating_point() else t
            return t.numpy()
        return np.asarray(t)

    atom37, exists = to_np(atom37), to_np(maps["atom37_atom_exists"])
    aatype, resid = to_np(get("aatype")), to_np(get("residue_index")) + 1
    plddt = to_np(get("plddt")) * plddt_scale
    chain = get("chain_index")
    chain = np.zeros_like(aatype) if chain is None else to_np(chain)
    pdbs = []
    for i in range(aatype.shape[0]):
        keep = exists[i].sum(-1) > 0
        pdbs.append(
            to_pdb(
                aatype[i][keep],
                atom37[i][keep],
                exists[i][keep],
                residue_index=resid[i][keep],
                b_factors=plddt[i][keep],
                chain_index=chain[i][keep],
            )
        )
    return pdbs


@dataclasses.dataclass(frozen=True)
class PdbAtom:
    """One ATOM/HETATM record."""

    serial: int
    name: str
    resname: str
    chain_id: str
    resseq: int
    x: float
    y: float
    z: float
    occupancy: float
    b_factor: float
    element: str


def parse_pdb_atoms(text: str) -> list[PdbAtom]:
    """Parse the ATOM/HETATM records of a PDB text by their fixed columns (PDB v3.3).

    Example:
        >>> atoms = parse_pdb_atoms("ATOM      1  N   GLY A   1       1.000   2.000   3.000  1.00 50.00           N")
        >>> atoms[0].name, atoms[0].x, atoms[0].b_factor
        ('N', 1.0, 50.0)
    """
    atoms = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.startswith(("ATOM  ", "HETATM")):
            continue
        try:
            atoms.append(
                PdbAtom(
                    serial=int(line[6:11]),
                    name=line[12:16].strip(),
                    resname=line[17:20].strip(),
                    chain_id=line[21],
                    resseq=int(line[22:26]),
                    x=float(line[30:38]),
                    y=float(line[38:46]),
                    z=float(line[46:54]),
                    occupancy=float(line[54:60]),
                    b_factor=float(line[60:66]),
                    element=line[76:78].strip(),
                )
            )
        except (ValueError, IndexError) as err:
            raise ValueError(
                f"parse_pdb_atoms: malformed record on line {lineno}: {line!r}"
            ) from err
    return atoms


__all__ = ["CHAIN_IDS", "PdbAtom", "output_to_pdb", "parse_pdb_atoms", "to_pdb"]
