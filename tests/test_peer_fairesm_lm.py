"""Reference ESM models vs fair-esm, through fair-esm `.pt` files.

Tiny random fair-esm models (ESM-2: `esm.model.esm2.ESM2`; ESM-1b: `ProteinBertModel` with
arch "roberta_large") are written as the released files are laid out: weights under
`encoder.sentence_encoder.` (body) and `encoder.` (LM head), hyper-parameters in `cfg["model"]`
(ESM-2) or `args` (ESM-1b) with fairseq's `encoder_*` names, and the contact regression in a
`<name>-contact-regression.pt` beside it. fair-esm's own loader reads the same files, so the
files are valid for it; `EsmForMaskedLM.from_pretrained` reads them for us. Logits, every
representation and contacts must agree within MODEL_FP32 on a padded batch with `<mask>` tokens.
"""

from __future__ import annotations

import argparse

import pytest
import torch

from esmkernels.reference.esm import EsmForMaskedLM, EsmModel
from tests.tolerances import MODEL_FP32

esm = pytest.importorskip("esm")
pytestmark = pytest.mark.peer

LAYERS, DIM, HEADS = 2, 32, 4


def alphabet():
    return esm.data.Alphabet.from_architecture("ESM-1b")


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int) -> None:
    """Noise on every weight (biases and LayerNorms matter) and, for ESM-2, the same fp16-rounded
    change to every layer's rotary frequencies (stored values must be used, not recomputed)."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(0.2 * torch.randn(p.shape, generator=g))
    factor = 1 + 0.3 * torch.rand(DIM // HEADS // 2, generator=g)
    for name, buf in model.named_buffers():
        if name.endswith("inv_freq"):
            buf.copy_((buf * factor).half().float())


def write_fair_esm_files(model: torch.nn.Module, path, meta: dict) -> None:
    """`path` (.pt) with the model in the released layout, and its contact-regression file.

    The tied `lm_head.weight` shares storage with `embed_tokens.weight`, as in the released
    pickles (fair-esm zeroes the ESM-1b <mask> row in place, which then reaches both)."""
    weights, regression = {}, {}
    for key, value in model.state_dict().items():
        if key.startswith("contact_head."):
            regression[key] = value
        elif key.startswith("lm_head."):
            weights["encoder." + key] = value
        else:
            weights["encoder.sentence_encoder." + key] = value
    torch.save({"model": weights, **meta}, path)
    torch.save({"model": regression}, path.with_name(path.stem + "-contact-regression.pt"))


def load_with_fair_esm(path):
    """fair-esm's own loader on our files (torch.load without weights_only: test-made files)."""
    data = torch.load(path, map_location="cpu", weights_only=False)
    reg_path = path.with_name(path.stem + "-contact-regression.pt")
    regression = torch.load(reg_path, map_location="cpu", weights_only=False)
    model, _ = esm.pretrained.load_model_and_alphabet_core(path.stem, data, regression)
    return model.eval()


def esm2_files(tmp_path):
    torch.manual_seed(0)
    model = esm.model.esm2.ESM2(
        num_layers=LAYERS, embed_dim=DIM, attention_heads=HEADS, alphabet=alphabet()
    )
    perturb(model, seed=1)
    cfg = argparse.Namespace(
        encoder_layers=LAYERS,
        encoder_embed_dim=DIM,
        encoder_ffn_embed_dim=4 * DIM,
        encoder_attention_heads=HEADS,
        token_dropout=True,
    )
    path = tmp_path / "esm2_t2_tiny.pt"
    write_fair_esm_files(model, path, {"cfg": {"model": cfg}})
    return path


def esm1b_files(tmp_path):
    torch.manual_seed(0)
    model_args = dict(
        arch="roberta_large",
        layers=LAYERS,
        embed_dim=DIM,
        ffn_embed_dim=48,
        attention_heads=HEADS,
        max_positions=30,
        emb_layer_norm_before=True,
    )
    model = esm.model.esm1.ProteinBertModel(argparse.Namespace(**model_args), alphabet())
    perturb(model, seed=2)
    args = {
        ("encoder_" + k if k not in ("arch", "max_positions") else k): v
        for k, v in model_args.items()
    }
    args.pop("encoder_emb_layer_norm_before")  # fair-esm infers it from the weights
    path = tmp_path / "esm1b_t2_tiny.pt"
    write_fair_esm_files(model, path, {"args": argparse.Namespace(**args)})
    return path


def tokens():
    a = alphabet()
    batch = [("a", "MKT<mask>AYIAKQRQ"), ("b", "GS<mask>LE"), ("c", "W")]
    _, _, toks = a.get_batch_converter()(batch)
    assert toks.eq(a.padding_idx).any() and toks.eq(a.mask_idx).any()
    return toks


@pytest.mark.parametrize("make_files", [esm2_files, esm1b_files], ids=["esm2", "esm1b"])
def test_fair_esm_checkpoint_matches_fair_esm(make_files, tmp_path):
    path = make_files(tmp_path)
    theirs = load_with_fair_esm(path)
    ours = EsmForMaskedLM.from_pretrained(path)
    toks = tokens()
    with torch.no_grad():
        ref = theirs(toks, repr_layers=list(range(LAYERS + 1)), return_contacts=True)
        out = ours(toks, output_hidden_states=True, output_attentions=True)
        contacts = ours.predict_contacts(toks)
    torch.testing.assert_close(out.logits, ref["logits"], **MODEL_FP32)
    for i in range(LAYERS + 1):
        torch.testing.assert_close(
            out.hidden_states[i], ref["representations"][i], **MODEL_FP32, msg=f"layer {i}"
        )
    keep = toks.ne(1).float()
    pair = keep[:, None, None, :, None] * keep[:, None, None, None, :]  # fair-esm zeroes padding
    attentions = torch.stack(out.attentions, 1) * pair
    torch.testing.assert_close(attentions, ref["attentions"], **MODEL_FP32)
    torch.testing.assert_close(contacts, ref["contacts"], **MODEL_FP32)
    # the base model reads the same file (LM head dropped) and gives the same representations
    base = EsmModel.from_pretrained(path)
    with torch.no_grad():
        hidden = base(toks).last_hidden_state
    torch.testing.assert_close(hidden, ref["representations"][LAYERS], **MODEL_FP32)
