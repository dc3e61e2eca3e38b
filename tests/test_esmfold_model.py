"""Reference `EsmForProteinFolding`: inputs, padding invariance, multimers, PDB output, loading.

Tiny random models (stem hidden 32, 2 layers; trunk 1 block; structure module 2 blocks).
transformers comparisons are in `test_peer_esmfold.py`.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from esmkernels.core import convert_esmfold as convert
from esmkernels.core.configuration import ESM_VOCAB, EsmConfig
from esmkernels.reference.esm import EsmModel
from esmkernels.reference.esmfold.inference import encode_sequences
from esmkernels.reference.esmfold.modeling import EsmForProteinFolding, EsmForProteinFoldingOutput
from tests.test_esmfold_trunk import (  # one_torch_thread: autouse fixture
    one_torch_thread,  # noqa: F401
    randomize_,
    tiny_trunk_config,
)
from tests.tolerances import FP32, MODEL_FP32

AF2 = "ARNDCQEGHILKMFPSTWYV"
# Heavy atoms per residue type (atom37 layout has no hydrogens).
HEAVY_ATOMS = dict(zip(AF2, [5, 11, 8, 8, 6, 9, 9, 4, 10, 8, 8, 9, 8, 11, 7, 6, 7, 14, 12, 7]))

STEM = dict(
    vocab_size=33,
    pad_token_id=1,
    mask_token_id=32,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    position_embedding_type="rotary",
    token_dropout=True,
    layer_norm_eps=1e-5,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    emb_layer_norm_before=False,
)


def tiny_config(**trunk_kw) -> EsmConfig:
    trunk = tiny_trunk_config(**trunk_kw).to_dict()
    fold = dict(fp16_esm=False, lddt_head_hid_dim=16, trunk=trunk)
    return EsmConfig(**STEM, is_folding_model=True, esmfold_config=fold)


_MODELS: dict[tuple, EsmForProteinFolding] = {}


def tiny_model(seed: int = 0, **trunk_kw) -> EsmForProteinFolding:
    """A random tiny ESMFold in eval mode (cached: tests must not modify it)."""
    key = (seed, tuple(sorted(trunk_kw.items())))
    if key not in _MODELS:
        torch.manual_seed(seed)
        model = EsmForProteinFolding(tiny_config(**trunk_kw))
        _MODELS[key] = randomize_(model, scale=0.5, seed=seed).eval()
    return _MODELS[key]


def random_sequence(n: int, seed: int) -> str:
    g = torch.Generator().manual_seed(seed)
    return "".join(AF2[i] for i in torch.randint(0, 20, (n,), generator=g).tolist())


def parse_atoms(pdb_text: str) -> list[dict]:
    atoms = []
    for line in pdb_text.splitlines():
        if line.startswith("ATOM"):
            atoms.append(
                dict(
                    name=line[12:16].strip(),
                    res=line[17:20],
                    chain=line[21],
                    resseq=int(line[22:26]),
                    xyz=(float(line[30:38]), float(line[38:46]), float(line[46:54])),
                    bfactor=float(line[60:66]),
                )
            )
    return atoms


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------


def test_af2_to_esm_by_hand():
    model = tiny_model()
    want = [1, 5, 10, 17, 13, 23, 16, 9, 6, 21, 12, 4, 15, 20, 18, 14, 8, 11, 22, 19, 7, 24]
    assert model.af2_to_esm.tolist() == want
    assert [ESM_VOCAB[i] for i in want[1:]] == list(AF2) + ["X"]
    assert "af2_to_esm" in model.state_dict()


def test_encode_sequences_by_hand():
    enc = encode_sequences(["AC:D", "W"], residue_index_offset=100, chain_linker="GG")
    assert enc["aatype"].tolist() == [[0, 4, 7, 7, 3], [17, 0, 0, 0, 0]]
    assert enc["mask"].tolist() == [[1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert enc["residue_index"].tolist() == [[0, 1, 2, 3, 104], [0, 0, 0, 0, 0]]
    assert enc["linker_mask"].tolist() == [[1, 1, 0, 0, 1], [1, 0, 0, 0, 0]]
    assert enc["chain_index"].tolist() == [[0, 0, 0, 0, 1], [0, -1, -1, -1, -1]]
    # Unknown upper-case letters read as X (20); no linker or offset when asked.
    enc = encode_sequences("BZ:O", residue_index_offset=None, chain_linker=None)
    assert enc["aatype"].tolist() == [[20, 20, 20]]
    assert enc["residue_index"].tolist() == [[0, 1, 2]]


def test_stem_tokens_and_masking_pattern():
    model = tiny_model()
    seen = {}
    h1 = model.esm.register_forward_pre_hook(
        lambda m, args, kw: seen.update(tokens=args[0]), with_kwargs=True
    )
    h2 = model.embedding.register_forward_pre_hook(lambda m, args: seen.update(aa=args[0]))
    try:
        ids = torch.tensor([[0, 1, 2, 3], [4, 5, 0, 0]])
        mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
        with torch.no_grad():
            plain = model(ids, attention_mask=mask, num_recycles=0)
            # <cls> residues <eos> <pad>..., the eos right after each sequence's last residue
            assert seen["tokens"].tolist() == [[0, 5, 10, 17, 13, 2], [0, 23, 16, 2, 1, 1]]
            pattern = torch.tensor([[0, 1, 0, 0], [0, 0, 0, 0]])
            masked = model(ids, attention_mask=mask, masking_pattern=pattern, num_recycles=0)
    finally:
        h1.remove()
        h2.remove()
    assert seen["tokens"][0, 2].item() == 32  # <mask> in the stem
    assert seen["aa"][0, 1].item() == 22  # mask index in the AF2 embedding
    assert not torch.allclose(masked.positions[-1][0], plain.positions[-1][0])
    torch.testing.assert_close(masked.positions[-1][1, :2], plain.positions[-1][1, :2], **FP32)


def test_output_fields_and_shapes():
    model = tiny_model()
    with torch.no_grad():
        out = model(torch.tensor([[0, 7, 17]]), num_recycles=1)
    assert isinstance(out, EsmForProteinFoldingOutput)
    S, B, L = 2, 1, 3
    shapes = {
        "frames": (S, B, L, 7),
        "positions": (S, B, L, 14, 3),
        "s_s": (B, L, 32),
        "s_z": (B, L, L, 16),
        "distogram_logits": (B, L, L, 64),
        "lm_logits": (B, L, 23),
        "atom37_atom_exists": (B, L, 37),
        "lddt_head": (S, B, L, 37, 50),
        "plddt": (B, L, 37),
        "ptm_logits": (B, L, L, 64),
        "ptm": (B,),
        "aligned_confidence_probs": (B, L, L, 64),
        "predicted_aligned_error": (B, L, L),
    }
    for k, shape in shapes.items():
        assert tuple(out[k].shape) == shape, k
    torch.testing.assert_close(out.distogram_logits, out.distogram_logits.transpose(1, 2))
    assert ((out.plddt >= 0) & (out.plddt <= 1)).all()
    assert out.atom14_atom_exists[0].sum(-1).tolist() == [5.0, 4.0, 14.0]  # ALA GLY TRP
    assert out[0] is out.frames  # tuple-indexable, HF order
    assert out.chain_index is None and "chain_index" not in out


@given(
    lengths=st.lists(st.integers(1, 9), min_size=2, max_size=3),
    seed=st.integers(0, 1000),
)
@example(lengths=[1, 7], seed=0)
def test_padded_batch_equals_separate_runs(lengths, seed):
    model = tiny_model()
    seqs = [random_sequence(n, seed + i) for i, n in enumerate(lengths)]
    with torch.no_grad():
        batch = model.infer(seqs, num_recycles=1)
        for b, seq in enumerate(seqs):
            one = model.infer(seq, num_recycles=1)
            n = len(seq)
            torch.testing.assert_close(
                batch.positions[-1][b, :n], one.positions[-1][0], **MODEL_FP32
            )
            torch.testing.assert_close(batch.plddt[b, :n], one.plddt[0], **MODEL_FP32)
            torch.testing.assert_close(batch.ptm[b], one.ptm[0], **MODEL_FP32)
            torch.testing.assert_close(
                batch.predicted_aligned_error[b, :n, :n],
                one.predicted_aligned_error[0],
                **MODEL_FP32,
            )
            torch.testing.assert_close(batch.mean_plddt[b], one.mean_plddt[0], **MODEL_FP32)


def test_chunked_equals_unchunked():
    model = tiny_model(seed=1)
    seqs = [random_sequence(7, 1), random_sequence(4, 2)]
    with torch.no_grad():
        model.set_chunk_size(None)
        full = model.infer(seqs, num_recycles=1)
        model.set_chunk_size(2)
        try:
            chunked = model.infer(seqs, num_recycles=1)
        finally:
            model.set_chunk_size(None)
    for k in ("positions", "plddt", "ptm", "predicted_aligned_error", "s_z", "s_s"):
        torch.testing.assert_close(chunked[k], full[k], **MODEL_FP32)


def test_training_gradients_and_dropout():
    """Training: gradients reach trunk and heads (not the frozen stem); dropout is live."""
    torch.manual_seed(3)
    model = randomize_(EsmForProteinFolding(tiny_config(dropout=0.2)), scale=0.5, seed=3).train()
    ids = torch.tensor([[1, 5, 9, 12, 3]])
    out = model(ids, num_recycles=1)
    (out.positions[-1].square().mean() + out.plddt.mean() + out.ptm.sum()).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in ("trunk.blocks.0.tri_mul_in.linear_a_p.weight", "esm_s_combine", "lddt_head.1.weight", "ptm_head.weight", "trunk.recycle_disto.weight"):  # fmt: skip
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    assert all(g is None for n, g in grads.items() if n.startswith("esm."))
    again = model(ids, num_recycles=1)
    assert not torch.allclose(again.s_z, out.s_z)  # a different dropout draw
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids, num_recycles=1).s_z, model(ids, num_recycles=1).s_z)


def test_fp16_esm_runs_the_stem_in_fp32_on_cpu():
    """`fp16_esm` only affects CUDA (autocast); on the CPU the stem runs in fp32."""
    model = tiny_model()
    config = tiny_config()
    config.esmfold_config.fp16_esm = True
    fp16_flagged = EsmForProteinFolding(config).eval()
    fp16_flagged.load_state_dict(model.state_dict())
    assert fp16_flagged.esm.embeddings.word_embeddings.weight.dtype == torch.float32
    ids = torch.tensor([[2, 4, 6, 8]])
    with torch.no_grad():
        a, b = model(ids, num_recycles=0), fp16_flagged(ids, num_recycles=0)
    torch.testing.assert_close(a.positions, b.positions, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seqs, match",
    [
        ("ACD1E", r"'1' at position 4"),
        ("ACDE:KL*", r"'\*' at position 8"),
        ("acd", r"'a' at position 1 \(residue letters must be uppercase\)"),
        ("", "sequence 0 is empty"),
        ([], "sequences is empty"),
        (["AC", ""], "sequence 1 is empty"),
        ("AC::D", "chain 1 is empty"),
    ],
)
def test_bad_sequences(seqs, match):
    with pytest.raises(ValueError, match=match):
        tiny_model().infer(seqs)


def test_bad_arguments():
    model = tiny_model()
    with pytest.raises(ValueError, match="num_recycles=-1"):
        model.infer("ACD", num_recycles=-1)
    with pytest.raises(ValueError, match="chain_linker"):
        model.infer("AC:D", chain_linker="G-G")
    with pytest.raises(ValueError, match="residue_index_offset"):
        model.infer("AC:D", residue_index_offset=-5)
    with pytest.raises(ValueError, match="position_ids shape"):
        model.infer("ACD", position_ids=torch.arange(4))
    with pytest.raises(TypeError, match="infer_pdbs"):
        model.infer_pdb(["ACD"])
    with pytest.raises(ValueError, match=r"input_ids\[0, 1\] = 21"):
        model(torch.tensor([[0, 21]]))
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(torch.tensor([[0, 1]]), attention_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="not an ESMFold configuration"):
        EsmForProteinFolding(EsmConfig(**STEM))


# ------------------------------------------------------------------------------------------------
# PDB output
# ------------------------------------------------------------------------------------------------


def test_infer_pdb_single_chain():
    model = tiny_model()
    seq = random_sequence(30, 3)
    text = model.infer_pdb(seq, num_recycles=0)
    atoms = parse_atoms(text)
    assert len(atoms) == sum(HEAVY_ATOMS[c] for c in seq)
    assert {a["chain"] for a in atoms} == {"A"}
    assert sorted({a["resseq"] for a in atoms}) == list(range(1, 31))
    assert all(0.0 <= a["bfactor"] <= 100.0 for a in atoms)
    assert text.rstrip().endswith("END")


def test_multimer_linker_removed_and_chains_split():
    model = tiny_model()
    with torch.no_grad():
        out = model.infer("ACDE:KLM", num_recycles=0)
    text = model.output_to_pdb(out)[0]
    atoms = parse_atoms(text)
    assert len(atoms) == sum(HEAVY_ATOMS[c] for c in "ACDEKLM")
    assert "GLY" not in {a["res"] for a in atoms}  # the poly-G linker is not written
    chain_a = sorted({a["resseq"] for a in atoms if a["chain"] == "A"})
    chain_b = sorted({a["resseq"] for a in atoms if a["chain"] == "B"})
    assert chain_a == [1, 2, 3, 4]
    assert chain_b == [4 + 25 + 512 + 1, 4 + 25 + 512 + 2, 4 + 25 + 512 + 3]
    assert out.aatype.shape == (1, 4 + 25 + 3)  # the linker is folded, then hidden
    assert out.atom37_atom_exists[0, 4:29].sum() == 0
    # B-factor column = 100 * pLDDT of that atom (written with 2 decimals)
    ca = [a for a in atoms if a["name"] == "CA"]
    idx = [0, 1, 2, 3, 29, 30, 31]
    want = 100 * out.plddt[0, idx, 1]
    torch.testing.assert_close(torch.tensor([a["bfactor"] for a in ca]), want, atol=0.006, rtol=0)
    # coordinates are the atom14 predictions (3 decimals)
    got_ca = torch.tensor([a["xyz"] for a in ca])
    torch.testing.assert_close(got_ca, out.positions[-1][0, idx, 1], atol=6e-4, rtol=0)


def test_output_to_pdb_padded_batch():
    model = tiny_model()
    pdbs = model.infer_pdbs(["ACDEF", "GH"], num_recycles=0)
    assert len(pdbs) == 2
    assert len(parse_atoms(pdbs[1])) == HEAVY_ATOMS["G"] + HEAVY_ATOMS["H"]


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    loaded = EsmForProteinFolding.from_pretrained(tmp_path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    ids = torch.tensor([[3, 4, 5, 6]])
    clone = pickle.loads(pickle.dumps(copy.deepcopy(model)))
    with torch.no_grad():
        a, b, c = (m(ids, num_recycles=1) for m in (model, loaded, clone))
    torch.testing.assert_close(a.positions, b.positions, rtol=0, atol=0)
    torch.testing.assert_close(a.positions, c.positions, rtol=0, atol=0)


def test_language_model_checkpoint_is_refused(tmp_path):
    lm = EsmModel(EsmConfig(**STEM))
    lm.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not an ESMFold configuration"):
        EsmForProteinFolding.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not an ESMFold checkpoint"):
        EsmForProteinFolding.from_pretrained(tmp_path, config=tiny_config())


def _fair_esmfold_file(model: EsmForProteinFolding) -> dict:
    """What fair-esm's esmfold_3B_v1.pt holds, with plain-dict cfg: no stem weights."""
    trunk = model.config.esmfold_config.trunk
    sm = trunk.structure_module
    openfold_sm = {old: getattr(sm, new) for old, new in convert.STRUCTURE_MODULE_KEYS.items()}
    trunk_cfg = {k: getattr(trunk, k) for k in ("num_blocks", "sequence_state_dim", "pairwise_state_dim", "sequence_head_width", "pairwise_head_width", "position_bins", "dropout", "layer_drop", "cpu_grad_checkpoint", "max_recycles", "chunk_size")}  # fmt: skip
    trunk_cfg.update(_name="FoldingTrunkConfig", structure_module=openfold_sm)
    weights = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("esm.")}
    cfg = {"trunk": trunk_cfg, "lddt_head_hid_dim": 16, "fp16_esm": False, "esm_type": "esm2_3B"}
    return {"model": weights, "cfg": {"model": cfg}}


def test_fair_esmfold_conversion(tmp_path):
    model = tiny_model()
    stem_config = EsmConfig(**STEM)
    stem_weights = {
        k[len("esm.") :]: v for k, v in model.state_dict().items() if k.startswith("esm.")
    }
    path = tmp_path / "esmfold_tiny.pt"
    torch.save(_fair_esmfold_file(model), path)

    config, state_dict = convert.load_fair_esmfold(path, stem=(stem_config, stem_weights))
    assert (
        config.esmfold_config.trunk.structure_module
        == model.config.esmfold_config.trunk.structure_module
    )
    assert config.esmfold_config.trunk.num_blocks == 1 and config.hidden_size == 32
    rebuilt = EsmForProteinFolding(config).eval()
    rebuilt.load_hf_state_dict(state_dict)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(
            rebuilt(ids, num_recycles=0).positions, model(ids, num_recycles=0).positions
        )

    # Without a stem: the config describes ESM-2 3B, and there are no esm.* weights.
    config, state_dict = convert.convert_fair_esmfold(_fair_esmfold_file(model))
    assert (config.hidden_size, config.num_hidden_layers) == (2560, 36)
    assert not any(k.startswith("esm.") for k in state_dict)


def test_fair_conversion_refuses_other_checkpoints():
    lm_like = {"model": {"embed_tokens.weight": torch.zeros(33, 4)}, "cfg": {"model": {}}}
    with pytest.raises(ValueError, match="not a fair-esm ESMFold checkpoint"):
        convert.convert_fair_esmfold(lm_like)
    with pytest.raises(ValueError, match="not a fair-esm ESMFold checkpoint"):
        convert.convert_fair_esmfold([1, 2])


def test_fair_esmfold_stem_stored_in_the_file():
    """A stem stored under fair-esm names is converted, and must be ESM-2 3B's."""
    data = _fair_esmfold_file(tiny_model())
    data["model"]["esm.embed_tokens.weight"] = torch.zeros(33, 32)
    data["model"]["esm.layers.0.fc1.weight"] = torch.zeros(64, 32)
    with pytest.raises(ValueError, match=r"not ESM-2 3B's \(\(33, 2560\), 36\)"):
        convert.convert_fair_esmfold(data)
    data["model"]["esm.layers.0.bias_k"] = torch.zeros(32)  # ESM-1 only: not a stem weight
    with pytest.raises(ValueError, match="bias_k"):
        convert.convert_fair_esmfold(data)
