"""PDB writing/parsing and the confidence metrics whose values it reports."""

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from esmkernels.reference.esmfold import confidence as C
from esmkernels.reference.esmfold import geometry as G
from esmkernels.reference.esmfold import pdb
from esmkernels.reference.esmfold import residue_constants as rc

# --- PDB ----------------------------------------------------------------------------------------


def _structure(rng: np.random.Generator, n: int, n_chains: int):
    aatype = rng.integers(0, 21, size=n)
    positions = rng.uniform(-999.0, 9999.0, size=(n, 37, 3)).round(3)
    mask = rc.restype_atom37_mask[aatype].copy()
    mask[aatype == 20, :3] = 1.0  # an unknown residue with a backbone, written as UNK
    b = rng.uniform(0, 100, size=(n, 37)).round(2)
    chain = np.sort(rng.integers(0, n_chains, size=n))
    resid = np.arange(n) + 1 + 512 * chain
    return aatype, positions, mask, resid, b, chain


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 12), n_chains=st.integers(1, 4))
@example(seed=0, n=1, n_chains=1)
def test_pdb_round_trip(seed, n, n_chains):
    aatype, positions, mask, resid, b, chain = _structure(np.random.default_rng(seed), n, n_chains)
    text = pdb.to_pdb(aatype, positions, mask, resid, b, chain)
    atoms = pdb.parse_pdb_atoms(text)
    res_i, atom_j = np.nonzero(mask >= 0.5)  # written in residue, then atom37 order
    assert len(atoms) == len(res_i)
    for a, i, j in zip(atoms, res_i, atom_j):
        assert a.name == rc.atom_types[j] and a.element == rc.atom_types[j][0]
        assert a.resname == rc.resnames[aatype[i]]
        assert a.chain_id == "ABCD"[chain[i]] and a.resseq == resid[i]
        np.testing.assert_allclose([a.x, a.y, a.z], positions[i, j], atol=5e-4)
        assert a.b_factor == pytest.approx(b[i, j], abs=5e-3) and a.occupancy == 1.0
    lines = text.splitlines()
    ters = [line for line in lines if line.startswith("TER")]
    assert len(ters) == len(np.unique(chain)) and lines[-1].rstrip() == "END"
    # Serial numbers count ATOM and TER records consecutively from 1.
    serials = [int(line[6:11]) for line in lines if line.startswith(("ATOM", "TER"))]
    assert serials == list(range(1, len(serials) + 1))
    assert all(len(line) == 80 for line in lines)  # ATOM, TER and END: fixed 80 columns
    assert lines[-1][:6] == "END   "  # record name in columns 1-6, as strict parsers read it


def test_pdb_columns():
    """Fixed PDB v3.3 columns: atom name from column 14 for short names, chain in 22, etc."""
    aatype = np.array([17])  # TRP
    mask = rc.restype_atom37_mask[aatype]
    pos = np.zeros((1, 37, 3))
    pos[0, rc.atom_order["CZ2"]] = (-12.3456, 7.0, 123.4)
    text = pdb.to_pdb(aatype, pos, mask, np.array([42]), np.full((1, 37), 91.234))
    line = next(x for x in text.splitlines() if " CZ2 " in x)
    assert line == (
        "ATOM     13  CZ2 TRP A  42     -12.346   7.000 123.400  1.00 91.23           C  "
    )
    assert text.splitlines()[-2] == "TER      15      TRP A  42".ljust(80)


def test_pdb_input_errors():
    aatype, positions, mask, resid, b, chain = _structure(np.random.default_rng(0), 3, 1)
    with pytest.raises(ValueError, match="atom_positions"):
        pdb.to_pdb(aatype, positions[:, :14], mask)
    with pytest.raises(ValueError, match="aatype values"):
        pdb.to_pdb(np.array([0, 21, 1]), positions, mask)
    with pytest.raises(ValueError, match="chain_index values"):
        pdb.to_pdb(aatype, positions, mask, chain_index=np.array([0, 0, 62]))
    with pytest.raises(ValueError, match="PDB range"):
        pdb.to_pdb(aatype, positions * 0 + 1e4, mask)
    with pytest.raises(ValueError, match="line 1"):
        pdb.parse_pdb_atoms("ATOM  garbage")


def test_output_to_pdb_skips_padding_and_scales_plddt():
    aatype = torch.tensor([[7, 0, 1], [4, 0, 0]])
    maps = G.make_atom14_masks(aatype)
    exists = maps["atom37_atom_exists"].clone()
    exists[1, 1:] = 0  # second protein is one residue long
    positions = torch.randn(2, 2, 3, 14, 3)
    plddt = torch.rand(2, 3, 37)
    out = {
        "positions": positions,
        "aatype": aatype,
        "residx_atom37_to_atom14": maps["residx_atom37_to_atom14"],
        "atom37_atom_exists": exists,
        "residue_index": torch.arange(3).expand(2, 3),
        "plddt": plddt,
        "chain_index": torch.tensor([[0, 0, 1], [0, 0, 0]]),
    }
    texts = pdb.output_to_pdb(out)
    first, second = (pdb.parse_pdb_atoms(t) for t in texts)
    assert {a.resname for a in second} == {"CYS"} and len(second) == 6
    assert [a.chain_id for a in first][-1] == "B"
    assert texts[0].count("TER") == 2
    ca = next(a for a in first if a.name == "CA" and a.resseq == 2)  # ALA, residue index 1
    np.testing.assert_allclose([ca.x, ca.y, ca.z], positions[-1, 0, 1, 1].numpy(), atol=5e-4)
    assert ca.b_factor == pytest.approx(100 * plddt[0, 1, rc.atom_order["CA"]].item(), abs=5e-3)


# --- confidence ---------------------------------------------------------------------------------


def test_categorical_lddt_is_expected_bin_centre():
    logits = torch.full((50, 50), -1e4)
    logits[torch.arange(50), torch.arange(50)] = 0.0  # all mass on bin k
    torch.testing.assert_close(C.categorical_lddt(logits), (torch.arange(50) + 0.5) / 50)
    torch.testing.assert_close(C.categorical_lddt(torch.zeros(2, 3, 50)), torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="bins"):
        C.categorical_lddt(torch.zeros(4, 49))


def _ptm_by_definition(logits: torch.Tensor) -> float:
    """pTM of one unpadded [N, N, 64] logit tensor, written out from AF2 supplement eq. 40."""
    n = logits.shape[0]
    d0 = 1.24 * (max(n, 19) - 15) ** (1 / 3) - 1.8
    centres = [0.25 + 0.5 * k for k in range(64)]  # 0.5 A bins, last one centred at 31.75
    probs = logits.double().softmax(-1)
    best = 0.0
    for i in range(n):
        total = sum(
            float(probs[i, j, k]) / (1 + (centres[k] / d0) ** 2)
            for j in range(n)
            for k in range(64)
        )
        best = max(best, total / n)
    return best


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 24), pad=st.integers(0, 6))
@example(seed=0, n=1, pad=3)
@example(seed=1, n=20, pad=1)
def test_ptm_matches_definition_and_ignores_padding(seed, n, pad):
    gen = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, n, 64, generator=gen)
    expected = _ptm_by_definition(logits)
    padded = torch.nn.functional.pad(logits, (0, 0, 0, pad, 0, pad), value=5.0)
    other = 3 * torch.randn(n + pad, n + pad, 64, generator=gen)
    mask = torch.ones(2, n + pad)
    mask[0, n:] = 0
    ptm = C.compute_tm(torch.stack([padded, other]), mask)
    assert ptm.shape == (2,)
    assert ptm[0].item() == pytest.approx(expected, abs=1e-5)
    assert C.compute_tm(logits[None])[0].item() == pytest.approx(expected, abs=1e-5)


def test_ptm_empty_sequence_is_zero():
    assert C.compute_tm(torch.randn(1, 4, 4, 64), torch.zeros(1, 4)).item() == 0.0


def test_predicted_aligned_error():
    logits = torch.full((1, 2, 2, 64), -1e4)
    logits[0, 0, 1, 10] = 0.0
    logits[0, 1, 0, 63] = 0.0
    logits[0, 0, 0, 0] = logits[0, 1, 1, 0] = 0.0
    out = C.compute_predicted_aligned_error(logits)
    torch.testing.assert_close(
        out["predicted_aligned_error"], torch.tensor([[[0.25, 5.25], [31.75, 0.25]]])
    )
    assert out["max_predicted_aligned_error"].item() == 31.75
    torch.testing.assert_close(out["aligned_confidence_probs"].sum(-1), torch.ones(1, 2, 2))
    masked = C.compute_predicted_aligned_error(logits, torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(
        masked["predicted_aligned_error"], torch.tensor([[[0.25, 0.0], [0.0, 0.0]]])
    )
    with pytest.raises(ValueError, match="residue_mask"):
        C.compute_predicted_aligned_error(logits, torch.ones(1, 3))
    with pytest.raises(ValueError, match="64"):
        C.compute_tm(torch.zeros(1, 2, 2, 63))
    assert math.isfinite(C.compute_tm(logits).item())
