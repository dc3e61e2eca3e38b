"""Reference ESMFold vs transformers' `EsmForProteinFolding` (random tiny models, fp32, CPU).

transformers' model is built from random weights (every parameter perturbed: its init zeroes
most residual branches, which would make the comparison vacuous), saved with `save_pretrained`
and loaded with our `from_pretrained`. transformers runs the stem in fp16 when `fp16_esm`, so
the peer config sets `fp16_esm=False`.
"""

from __future__ import annotations

import pytest
import torch

from esmkernels.reference.esmfold import trunk as T
from esmkernels.reference.esmfold.modeling import EsmForProteinFolding
from tests.test_esmfold_model import STEM, parse_atoms, random_sequence
from tests.test_esmfold_trunk import (  # one_torch_thread: autouse fixture
    one_torch_thread,  # noqa: F401
    randomize_,
    tiny_trunk_config,
)
from tests.tolerances import MODEL_FP32

transformers = pytest.importorskip("transformers")
hf_esmfold = pytest.importorskip("transformers.models.esm.modeling_esmfold")

pytestmark = pytest.mark.peer


def _hf_config():
    trunk = tiny_trunk_config(num_blocks=2).to_dict()
    fold = dict(fp16_esm=False, lddt_head_hid_dim=16, trunk=trunk)
    return transformers.EsmConfig(**STEM, is_folding_model=True, esmfold_config=fold)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    torch.manual_seed(0)
    hf = hf_esmfold.EsmForProteinFolding(_hf_config())
    randomize_(hf, scale=0.5, seed=11).eval()
    with torch.no_grad():  # confident heads, so pLDDT / pTM / PAE are far from uniform
        hf.lddt_head[-1].weight.mul_(20.0)
        hf.ptm_head.weight.mul_(5.0)
        hf.ptm_head.bias[:2].add_(8.0)  # favour small aligned errors (pTM not ~0)
    path = tmp_path_factory.mktemp("hf_esmfold")
    hf.save_pretrained(path)
    ours = EsmForProteinFolding.from_pretrained(path).eval()
    return hf, ours


def _hf_ids(seqs):
    from esmkernels.reference.esmfold.inference import encode_sequences

    enc = encode_sequences(seqs)
    return enc["aatype"], enc["mask"]


@pytest.mark.parametrize("num_recycles", [0, 2])
def test_matches_transformers(pair, num_recycles):
    hf, ours = pair
    ids, mask = _hf_ids([random_sequence(24, 5)])
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, num_recycles=num_recycles)
        got = ours(ids, attention_mask=mask, num_recycles=num_recycles)
    # positions in Angstrom within 1e-3; confidence and pair outputs within 1e-4
    torch.testing.assert_close(got.positions, want.positions, atol=1e-3, rtol=0)
    for key in ("plddt", "distogram_logits", "s_z", "s_s", "lm_logits", "frames", "angles"):
        torch.testing.assert_close(got[key], want[key], **MODEL_FP32, msg=key)
    torch.testing.assert_close(got.ptm[0], want.ptm, **MODEL_FP32)
    torch.testing.assert_close(
        got.predicted_aligned_error, want.predicted_aligned_error, **MODEL_FP32
    )
    torch.testing.assert_close(got.max_predicted_aligned_error, want.max_predicted_aligned_error)
    for key in ("atom14_atom_exists", "atom37_atom_exists", "residx_atom14_to_atom37", "residx_atom37_to_atom14", "residue_index", "aatype"):  # fmt: skip
        assert torch.equal(got[key].to(want[key].dtype), want[key]), key


def test_padded_batch_matches_transformers_per_residue(pair):
    """Padded batch: per-residue outputs agree (transformers' pTM is one scalar per batch)."""
    hf, ours = pair
    ids, mask = _hf_ids([random_sequence(9, 6), random_sequence(5, 7)])
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, num_recycles=1)
        got = ours(ids, attention_mask=mask, num_recycles=1)
    for b, n in enumerate((9, 5)):
        torch.testing.assert_close(
            got.positions[:, b, :n], want.positions[:, b, :n], atol=1e-3, rtol=0
        )
        torch.testing.assert_close(got.plddt[b, :n], want.plddt[b, :n], **MODEL_FP32)
        torch.testing.assert_close(got.s_z[b, :n, :n], want.s_z[b, :n, :n], **MODEL_FP32)


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_block_matches_transformers(chunk_size):
    cfg = tiny_trunk_config()
    hf_block = hf_esmfold.EsmFoldTriangularSelfAttentionBlock(cfg)
    randomize_(hf_block, seed=12).eval()
    ours = T.EsmFoldTriangularSelfAttentionBlock(cfg).eval()
    ours.load_state_dict(hf_block.state_dict())
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 6, 32, generator=g)
    z = torch.randn(2, 6, 6, 16, generator=g)
    mask = torch.ones(2, 6)
    mask[1, 4:] = 0
    with torch.no_grad():
        s_hf, z_hf = hf_block(s, z, mask=mask, chunk_size=chunk_size)
        s_us, z_us = ours(s, z, mask=mask, chunk_size=chunk_size)
    torch.testing.assert_close(s_us, s_hf, **MODEL_FP32)
    # Pairs with a padded residue differ by design (fully masked rows give zeros, not a mean).
    torch.testing.assert_close(z_us[0], z_hf[0], **MODEL_FP32)
    torch.testing.assert_close(z_us[1, :4, :4], z_hf[1, :4, :4], **MODEL_FP32)


def test_infer_pdb_is_valid(pair):
    _, ours = pair
    seqs = [random_sequence(30, 8), "MKTAYIAK:GSHMLE"]
    for seq, text in zip(seqs, ours.infer_pdbs(seqs, num_recycles=0)):
        atoms = parse_atoms(text)
        assert atoms and text.rstrip().endswith("END")
        chains = {a["chain"] for a in atoms}
        assert chains == ({"A", "B"} if ":" in seq else {"A"})
        n_res = len({(a["chain"], a["resseq"]) for a in atoms})
        assert n_res == len(seq.replace(":", ""))
