"""fair-esm `.pt` checkpoints: ESM-1b / ESM-1v (`args`) and ESM-2 (`cfg`) into HF names.

Files are constructed here: by hand with the released files' key names (always), and from
fair-esm's own `ESM2` / `ProteinBertModel` modules when fair-esm is installed. The end-to-end
peer test runs fair-esm and transformers on the converted weights and compares logits, which
checks the config constants (LayerNorm eps, positions, token dropout) as well as the key map.
"""

from __future__ import annotations

import argparse
import warnings

import pytest
import torch

from esmkernels.core.checkpoint import load_checkpoint
from esmkernels.core.fair_esm import fair_esm_to_hf
from esmkernels.core.hf_checkpoint import save_checkpoint
from tests._ckpt_models import TinyEsmForMaskedLM, TinyEsmModel

H, FFN, LAYERS, HEADS, VOCAB = 16, 24, 2, 2, 33

# Released-file name (under `encoder.sentence_encoder.`) -> HF name, written out by hand.
_LAYER_NAMES = {
    "self_attn.q_proj": "attention.self.query",
    "self_attn.k_proj": "attention.self.key",
    "self_attn.v_proj": "attention.self.value",
    "self_attn.out_proj": "attention.output.dense",
    "self_attn_layer_norm": "attention.LayerNorm",
    "fc1": "intermediate.dense",
    "fc2": "output.dense",
    "final_layer_norm": "LayerNorm",
}


def _hand_built(kind: str, ffn: int = FFN) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Raw fair-esm file keys with distinct random tensors, and the HF name each must get."""
    g = torch.Generator().manual_seed(0)
    raw: dict[str, torch.Tensor] = {}
    expect: dict[str, str] = {}

    def put(name: str, shape: tuple[int, ...], hf: str) -> None:
        raw[name] = torch.randn(shape, generator=g)
        expect[name] = hf

    body = "encoder.sentence_encoder."
    put(body + "embed_tokens.weight", (VOCAB, H), "esm.embeddings.word_embeddings.weight")
    if kind == "esm1b":
        put(body + "embed_positions.weight", (1026, H), "esm.embeddings.position_embeddings.weight")
        put(body + "emb_layer_norm_before.weight", (H,), "esm.embeddings.layer_norm.weight")
        put(body + "emb_layer_norm_before.bias", (H,), "esm.embeddings.layer_norm.bias")
    for i in range(LAYERS):
        for fair, hf in _LAYER_NAMES.items():
            rows, cols = {"fc1": (ffn, H), "fc2": (H, ffn)}.get(fair, (H, H))
            shape = (H,) if "layer_norm" in fair else (rows, cols)
            put(f"{body}layers.{i}.{fair}.weight", shape, f"esm.encoder.layer.{i}.{hf}.weight")
            put(f"{body}layers.{i}.{fair}.bias", (shape[0],), f"esm.encoder.layer.{i}.{hf}.bias")
        if kind == "esm2":
            put(
                f"{body}layers.{i}.self_attn.rot_emb.inv_freq",
                (H // HEADS // 2,),
                f"esm.encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq",
            )
    put(body + "emb_layer_norm_after.weight", (H,), "esm.encoder.emb_layer_norm_after.weight")
    put(body + "emb_layer_norm_after.bias", (H,), "esm.encoder.emb_layer_norm_after.bias")
    put("encoder.lm_head.dense.weight", (H, H), "lm_head.dense.weight")
    put("encoder.lm_head.dense.bias", (H,), "lm_head.dense.bias")
    put("encoder.lm_head.layer_norm.weight", (H,), "lm_head.layer_norm.weight")
    put("encoder.lm_head.layer_norm.bias", (H,), "lm_head.layer_norm.bias")
    raw["encoder.lm_head.weight"] = raw[body + "embed_tokens.weight"]  # tied in fair-esm
    expect["encoder.lm_head.weight"] = "lm_head.decoder.weight"
    put("encoder.lm_head.bias", (VOCAB,), "lm_head.bias")
    raw[body + "version"] = torch.tensor([2.0])  # fairseq bookkeeping, no weight
    return raw, expect


def _esm2_file(path, raw, **cfg):
    model_cfg = argparse.Namespace(
        encoder_layers=LAYERS,
        encoder_embed_dim=H,
        encoder_attention_heads=HEADS,
        token_dropout=True,
    )
    vars(model_cfg).update(cfg)
    torch.save({"model": raw, "cfg": {"model": model_cfg, "task": None}}, path)
    return path


def _esm1b_file(path, raw, ffn: int = FFN, **args):
    ns = argparse.Namespace(
        arch="roberta_large",
        encoder_layers=LAYERS,
        encoder_embed_dim=H,
        encoder_ffn_embed_dim=ffn,
        encoder_attention_heads=HEADS,
        max_positions=1024,
        token_dropout=True,
    )
    vars(ns).update(args)
    torch.save({"model": raw, "args": ns}, path)
    return path


def _regression(path, prefix="contact_head."):
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(1, LAYERS * HEADS, generator=g), torch.randn(1, generator=g)
    torch.save({"model": {prefix + "regression.weight": w, prefix + "regression.bias": b}}, path)
    return w, b


def _check_map(state, raw, expect):
    assert set(state) >= set(expect.values())
    for name, hf in expect.items():
        assert torch.equal(state[hf], raw[name]), (name, hf)


def test_esm2_cfg_file(tmp_path):
    raw, expect = _hand_built("esm2", ffn=4 * H)
    path = _esm2_file(tmp_path / "esm2_t2_tiny.pt", raw)
    w, b = _regression(tmp_path / "esm2_t2_tiny-contact-regression.pt")
    config, state, fmt = load_checkpoint(path)
    assert fmt == "fair-esm-cfg"
    _check_map(state, raw, expect)
    assert torch.equal(state["esm.contact_head.regression.weight"], w)
    assert torch.equal(state["esm.contact_head.regression.bias"], b)
    assert len(state) == len(expect) + 2  # + regression weight and bias; `version` dropped
    assert (config.vocab_size, config.mask_token_id, config.pad_token_id) == (33, 32, 1)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (H, 2, 2)
    assert config.intermediate_size == 4 * H
    assert config.position_embedding_type == "rotary"
    assert config.emb_layer_norm_before is False
    assert config.token_dropout is True
    assert config.layer_norm_eps == 1e-5
    assert config.max_position_embeddings == 1026
    assert config.hidden_dropout_prob == 0.0 and config.attention_probs_dropout_prob == 0.0


def test_esm1b_args_file(tmp_path):
    raw, expect = _hand_built("esm1b")
    path = _esm1b_file(tmp_path / "esm1b_t2_tiny.pt", raw)
    _regression(tmp_path / "esm1b_t2_tiny-contact-regression.pt", prefix="")  # `regression.*`
    config, state, fmt = load_checkpoint(path)
    assert fmt == "fair-esm-args"
    words = raw["encoder.sentence_encoder.embed_tokens.weight"]
    assert torch.equal(state["esm.embeddings.word_embeddings.weight"][:32], words[:32])
    # fair-esm zeroes the <mask> row of ESM-1b when loading; the converted weights carry it too
    assert torch.equal(state["esm.embeddings.word_embeddings.weight"][32], torch.zeros(H))
    assert torch.equal(
        state["lm_head.decoder.weight"], state["esm.embeddings.word_embeddings.weight"]
    )
    del expect["encoder.sentence_encoder.embed_tokens.weight"], expect["encoder.lm_head.weight"]
    _check_map(state, raw, expect)
    assert "esm.contact_head.regression.weight" in state
    assert config.position_embedding_type == "absolute"
    assert config.max_position_embeddings == 1026
    assert config.emb_layer_norm_before is True
    assert config.intermediate_size == FFN
    assert config.token_dropout is True and config.layer_norm_eps == 1e-5


def test_esm1v_without_regression_loads_into_a_model(tmp_path):
    raw, _ = _hand_built("esm1b")
    path = _esm1b_file(tmp_path / "esm1v_t2_tiny_1.pt", raw, token_dropout=False)
    config, state, _ = load_checkpoint(path)
    assert not any("contact_head" in k for k in state)
    assert config.token_dropout is False
    with warnings.catch_warnings():
        warnings.simplefilter(
            "error"
        )  # no tied-weight disagreement: the mask row is zeroed in both
        model = TinyEsmForMaskedLM.from_pretrained(path)  # contact head may be missing (ESM-1v)
    assert torch.equal(
        model.esm.embeddings.position_embeddings.weight,
        raw["encoder.sentence_encoder.embed_positions.weight"],
    )
    assert torch.equal(
        model.esm.embeddings.layer_norm.bias,
        raw["encoder.sentence_encoder.emb_layer_norm_before.bias"],
    )


def test_fair_esm_into_model_classes_and_back_to_hf(tmp_path):
    raw, expect = _hand_built("esm2", ffn=4 * H)
    path = _esm2_file(tmp_path / "esm2_t2_tiny.pt", raw)
    _regression(tmp_path / "esm2_t2_tiny-contact-regression.pt")
    mlm = TinyEsmForMaskedLM.from_pretrained(path)
    state = mlm.state_dict()
    _check_map(state, raw, expect)
    base = TinyEsmModel.from_pretrained(path)
    assert torch.equal(
        base.encoder.layer[1].intermediate.dense.weight,
        raw["encoder.sentence_encoder.layers.1.fc1.weight"],
    )
    mlm.save_pretrained(tmp_path / "hf")
    config, again, fmt = load_checkpoint(tmp_path / "hf")
    assert fmt == "hf-safetensors" and config.position_embedding_type == "rotary"
    for key, value in again.items():
        assert torch.equal(value, state[key]), key


def test_save_checkpoint_converts_a_pt_without_a_model_class(tmp_path):
    raw, expect = _hand_built("esm1b")
    config, state, _ = load_checkpoint(_esm1b_file(tmp_path / "m.pt", raw))
    save_checkpoint(tmp_path / "hf", config, state)
    config2, state2, _ = load_checkpoint(tmp_path / "hf")
    assert config2 == config
    assert set(state2) == set(state) and all(torch.equal(state2[k], state[k]) for k in state)


def test_stripped_key_names_are_accepted_too():
    raw, expect = _hand_built("esm2")
    stripped = {}
    for key, value in raw.items():
        stripped[key.removeprefix("encoder.sentence_encoder.").removeprefix("encoder.")] = value
    out = fair_esm_to_hf(stripped)
    for name, hf in expect.items():
        assert torch.equal(out[hf], raw[name])


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------


def test_unsupported_architectures_and_keys(tmp_path):
    raw, _ = _hand_built("esm1b")
    with pytest.raises(ValueError, match="arch 'protein_bert_base' is not supported"):
        load_checkpoint(_esm1b_file(tmp_path / "esm1.pt", raw, arch="protein_bert_base"))
    with pytest.raises(ValueError, match="arch 'msa_transformer' is not supported"):
        load_checkpoint(_esm1b_file(tmp_path / "msa.pt", raw, arch="msa_transformer"))
    raw["encoder.sentence_encoder.layers.0.self_attn.bias_k"] = torch.zeros(1, 1, H)
    with pytest.raises(
        ValueError, match=r"1 key\(s\) are not ESM-1b / ESM-1v / ESM-2 weights: .*bias_k"
    ):
        load_checkpoint(_esm1b_file(tmp_path / "esm1b.pt", raw))


def test_pt_that_is_neither_format(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(
        ValueError, match=r"other\.pt is neither a fair-esm checkpoint.*\['state_dict'\]"
    ):
        load_checkpoint(tmp_path / "other.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="found list"):
        load_checkpoint(tmp_path / "list.pt")
    raw, _ = _hand_built("esm2")
    torch.save({"model": raw}, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="without 'args' or 'cfg'"):
        load_checkpoint(tmp_path / "bare.pt")
    (tmp_path / "trunc.pt").write_bytes((_esm2_file(tmp_path / "ok.pt", raw)).read_bytes()[:300])
    with pytest.raises(ValueError, match=r"trunc\.pt is not a readable torch checkpoint"):
        load_checkpoint(tmp_path / "trunc.pt")


def test_args_disagreeing_with_weights(tmp_path):
    raw, _ = _hand_built("esm1b")
    with pytest.raises(ValueError, match="encoder_ffn_embed_dim=99 but the weights have 24"):
        load_checkpoint(_esm1b_file(tmp_path / "m.pt", raw, ffn=99))
    torch.save({"model": raw, "args": argparse.Namespace(arch="roberta_large")}, tmp_path / "n.pt")
    with pytest.raises(ValueError, match="lack encoder_attention_heads"):
        load_checkpoint(tmp_path / "n.pt")


def test_regression_file_checks(tmp_path):
    raw, _ = _hand_built("esm2", ffn=4 * H)
    path = _esm2_file(tmp_path / "esm2_x.pt", raw)
    torch.save(
        {"model": {"contact_head.regression.weight": torch.zeros(1, 4), "other": torch.zeros(1)}},
        tmp_path / "esm2_x-contact-regression.pt",
    )
    with pytest.raises(ValueError, match="unexpected entry 'other'"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="contact-regression file; pass the model .pt"):
        load_checkpoint(tmp_path / "esm2_x-contact-regression.pt")


def test_two_source_keys_for_one_weight_are_refused(tmp_path):
    """Issue 22: a file naming one weight twice (e.g. the released prefix and the stripped name
    fair-esm's modules use) must not load with whichever came last, even when the two agree."""
    body = "encoder.sentence_encoder."
    for extra, hf in (
        ("embed_tokens.weight", "esm.embeddings.word_embeddings.weight"),
        ("layers.1.fc2.bias", "esm.encoder.layer.1.output.dense.bias"),
        ("lm_head.weight", "lm_head.decoder.weight"),
    ):
        raw, _ = _hand_built("esm2", ffn=4 * H)
        source = raw["encoder.lm_head.weight" if extra == "lm_head.weight" else body + extra]
        raw[extra] = source.clone()
        with pytest.raises(ValueError, match=f"two fair-esm keys map to '{hf}'"):
            fair_esm_to_hf(raw)
        with pytest.raises(ValueError, match="two fair-esm keys map to"):
            load_checkpoint(_esm2_file(tmp_path / "twice.pt", raw))

    raw, _ = _hand_built("esm2", ffn=4 * H)
    path = _esm2_file(tmp_path / "esm2_y.pt", raw)
    w, b = torch.zeros(1, LAYERS * HEADS), torch.zeros(1)
    torch.save(
        {
            "model": {
                "regression.weight": w,
                "contact_head.regression.weight": w + 1,
                "regression.bias": b,
            }
        },
        tmp_path / "esm2_y-contact-regression.pt",
    )
    with pytest.raises(ValueError, match="two entries map to 'esm.contact_head.regression.weight'"):
        load_checkpoint(path)
    # the model file and its regression file disagreeing on one weight
    raw["encoder.contact_head.regression.weight"] = w + 2
    raw["encoder.contact_head.regression.bias"] = b
    path = _esm2_file(tmp_path / "esm2_z.pt", raw)
    _regression(tmp_path / "esm2_z-contact-regression.pt")
    with pytest.raises(ValueError, match="hold different tensors for 'esm.contact_head.regression"):
        load_checkpoint(path)


class _NamespaceSubclass(argparse.Namespace):
    """A subclass is a different global: refused like any other class."""


def test_namespace_is_the_only_extra_class_allowed(tmp_path):
    raw, _ = _hand_built("esm2")
    torch.save(
        {"model": raw, "cfg": {"model": _NamespaceSubclass(encoder_attention_heads=2)}},
        tmp_path / "sub.pt",
    )
    with pytest.raises(ValueError, match="refusing to load .*sub.pt.*_NamespaceSubclass"):
        load_checkpoint(tmp_path / "sub.pt")


# ------------------------------------------------------------------------------------------
# fair-esm peer: its own modules' state dicts, and logits through transformers
# ------------------------------------------------------------------------------------------


def _raw_from_module(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        ("encoder." if k.startswith("lm_head") else "encoder.sentence_encoder.") + k: v
        for k, v in module.state_dict().items()
        if not k.startswith("contact_head")
    }


def _fair_models():
    esm = pytest.importorskip("esm")
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    torch.manual_seed(0)
    esm2 = esm.model.esm2.ESM2(
        num_layers=LAYERS, embed_dim=H, attention_heads=HEADS, alphabet=alphabet
    )
    module_args = argparse.Namespace(
        arch="roberta_large", layers=LAYERS, embed_dim=H, ffn_embed_dim=FFN,
        attention_heads=HEADS, max_positions=30, emb_layer_norm_before=True, token_dropout=True,
    )  # fmt: skip
    esm1b = esm.model.esm1.ProteinBertModel(module_args, alphabet)
    file_args = argparse.Namespace(
        arch="roberta_large", encoder_layers=LAYERS, encoder_embed_dim=H, encoder_ffn_embed_dim=FFN,
        encoder_attention_heads=HEADS, max_positions=30, token_dropout=True,
    )  # fmt: skip
    with torch.no_grad():
        for model in (esm2, esm1b):
            for p in model.parameters():
                p.normal_(0.0, 0.5)
            model.eval()
        esm1b.embed_tokens.weight[alphabet.mask_idx] = 0  # as fair-esm's loader leaves it
        esm2.contact_head.regression.weight.normal_()
    return esm2, esm1b, file_args


@pytest.mark.peer
def test_fair_esm_module_state_dicts_convert_completely(tmp_path):
    esm2, esm1b, file_args = _fair_models()
    _esm2_file(tmp_path / "esm2_t2.pt", _raw_from_module(esm2))
    torch.save(
        {"model": {k: v for k, v in esm2.state_dict().items() if k.startswith("contact_head")}},
        tmp_path / "esm2_t2-contact-regression.pt",
    )
    torch.save({"model": _raw_from_module(esm1b), "args": file_args}, tmp_path / "esm1b_t2.pt")
    for name, module, n_keys in (("esm2_t2", esm2, 0), ("esm1b_t2", esm1b, 1)):
        model = TinyEsmForMaskedLM.from_pretrained(
            tmp_path / f"{name}.pt"
        )  # strict: every key used
        assert model.config.num_hidden_layers == LAYERS
        fair = module.state_dict()
        ours = model.state_dict()
        assert torch.equal(ours["lm_head.decoder.weight"], fair["lm_head.weight"])
        assert torch.equal(
            ours["esm.encoder.layer.1.attention.output.dense.weight"],
            fair["layers.1.self_attn.out_proj.weight"],
        )
        assert n_keys == int("esm.embeddings.position_embeddings.weight" in ours)
    assert torch.equal(
        TinyEsmModel.from_pretrained(tmp_path / "esm2_t2.pt").contact_head.regression.weight,
        esm2.contact_head.regression.weight,
    )


@pytest.mark.peer
@pytest.mark.parametrize("kind", ["esm2", "esm1b"])
def test_logits_match_fair_esm_through_transformers(tmp_path, kind):
    transformers = pytest.importorskip("transformers")
    esm2, esm1b, file_args = _fair_models()
    module = esm2 if kind == "esm2" else esm1b
    if kind == "esm2":
        path = _esm2_file(tmp_path / "m.pt", _raw_from_module(module))
    else:
        path = tmp_path / "m.pt"
        torch.save({"model": _raw_from_module(module), "args": file_args}, path)
    config, state, _ = load_checkpoint(path)
    save_checkpoint(tmp_path / "hf", config, state)
    hf = transformers.EsmForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    # <cls> A G V <mask> E R <eos> <pad> <pad> and a full-length row
    tokens = torch.tensor([[0, 5, 6, 7, 32, 9, 10, 2, 1, 1], [0, 4, 4, 12, 13, 14, 15, 16, 17, 2]])
    with torch.no_grad():
        expected = module(tokens)["logits"]
        got = hf(input_ids=tokens, attention_mask=(tokens != 1).long()).logits
    keep = tokens != 1
    torch.testing.assert_close(got[keep], expected[keep], rtol=1e-5, atol=1e-5)
