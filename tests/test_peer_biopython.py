"""Our PDB files parse in Biopython's strict parser without a single warning (peer test).

Skipped when Biopython (the `peer` extra) is absent.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

from esmkernels.reference.esmfold import pdb
from esmkernels.reference.esmfold import residue_constants as rc
from tests.test_esmfold_pdb import _structure

PDBParser = pytest.importorskip("Bio.PDB").PDBParser

pytestmark = pytest.mark.peer


@pytest.mark.parametrize(("n", "n_chains"), [(1, 1), (9, 1), (14, 3)])
def test_biopython_reads_our_pdb_strictly_and_silently(n, n_chains):
    aatype, positions, mask, resid, b, chain = _structure(np.random.default_rng(n), n, n_chains)
    text = pdb.to_pdb(aatype, positions, mask, resid, b, chain)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any PDBConstructionWarning fails the test
        structure = PDBParser(PERMISSIVE=False, QUIET=False).get_structure("x", io.StringIO(text))
    atoms = list(structure.get_atoms())
    assert len(atoms) == int((mask >= 0.5).sum())
    assert [c.id for c in structure[0]] == ["ABCD"[k] for k in np.unique(chain)]
    first = next(iter(structure[0].get_residues()))
    assert first.get_resname() == rc.resnames[aatype[0]] and first.id[1] == resid[0]
