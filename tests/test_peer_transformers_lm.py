"""Reference ESM models vs transformers' ESM, both directions through `save_pretrained` files.

Random-weight models of all four classes, ESM-2 style (rotary, token dropout) and ESM-1b style
(absolute positions, embedding LayerNorm), with biases, LayerNorms and rotary frequencies
perturbed so every parameter shows up in the outputs. Inputs are padded batches containing
`<mask>` tokens. fp32, tolerance MODEL_FP32 (1e-4).
"""

from __future__ import annotations

import pytest
import torch

from esmkernels.core.configuration import EsmConfig
from esmkernels.reference.esm import (
    EsmForMaskedLM,
    EsmForSequenceClassification,
    EsmForTokenClassification,
    EsmModel,
)
from tests._configs import tiny_lm_values
from tests.tolerances import MODEL_FP32

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.peer

CLS, PAD, EOS, MASK = 0, 1, 2, 32
OURS = {
    "EsmModel": EsmModel,
    "EsmForMaskedLM": EsmForMaskedLM,
    "EsmForSequenceClassification": EsmForSequenceClassification,
    "EsmForTokenClassification": EsmForTokenClassification,
}
KINDS = ("esm2", "esm1b")


def config_values(kind: str) -> dict:
    return tiny_lm_values(
        kind,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=40,
        initializer_range=0.2,
        num_labels=3,
    )


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial biases, LayerNorms and contact regression; rotary frequencies that differ from
    the default formula (fp16-rounded, as ESM-2's stored ones are), so loading them is tested."""
    g = torch.Generator().manual_seed(seed)
    for _, p in model.named_parameters():
        p.add_(0.1 * torch.randn(p.shape, generator=g))
    factor = None  # one factor for every layer: real checkpoints hold the same values per layer
    for name, buf in model.named_buffers():
        if name.endswith("inv_freq"):
            if factor is None:
                factor = 1 + 0.3 * torch.rand(buf.shape, generator=g)
            buf.copy_((buf * factor).half().float())


def batch():
    tokens = torch.tensor(
        [
            [CLS, 5, 6, MASK, 7, 8, 9, 10, EOS],
            [CLS, 11, MASK, 12, EOS, PAD, PAD, PAD, PAD],
            [CLS, 4, EOS, PAD, PAD, PAD, PAD, PAD, PAD],
        ]
    )
    return tokens, tokens.ne(PAD).long()


def labels_for(name: str, tokens: torch.Tensor):
    """One or more label sets per class (sequence classification: single- and multi-label)."""
    if name == "EsmForMaskedLM":
        return [torch.where(tokens == MASK, torch.tensor([6, 7, 8])[:, None], -100)]
    if name == "EsmForTokenClassification":
        labels = torch.randint(0, 3, tokens.shape, generator=torch.Generator().manual_seed(1))
        return [labels.masked_fill(tokens == PAD, -100)]
    if name == "EsmForSequenceClassification":
        return [torch.tensor([2, 0, 1]), torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 1]])]
    return [None]


def assert_same_outputs(ours, hf, name: str) -> None:
    """Every output both models give, on the padded batch, with and without labels."""
    tokens, mask = batch()
    kwargs = dict(attention_mask=mask, output_attentions=True, output_hidden_states=True)
    with torch.no_grad():
        for labels in labels_for(name, tokens):
            if hasattr(hf.config, "problem_type"):
                hf.config.problem_type = None  # transformers caches the inferred type
            extra = {} if labels is None else {"labels": labels}
            a = ours(tokens, **kwargs, **extra)
            b = hf(tokens, **kwargs, **extra)
            fields = ["hidden_states", "attentions"]
            fields += ["last_hidden_state", "pooler_output"] if name == "EsmModel" else ["logits"]
            fields += ["loss"] if labels is not None else []
            for field in fields:
                x, y = getattr(a, field), getattr(b, field)
                assert x is not None and y is not None, field
                if isinstance(x, tuple):
                    assert len(x) == len(y), field
                    for i, (xi, yi) in enumerate(zip(x, y)):
                        torch.testing.assert_close(xi, yi, **MODEL_FP32, msg=f"{field}[{i}]")
                else:
                    torch.testing.assert_close(x, y, **MODEL_FP32, msg=field)
        if name in ("EsmModel", "EsmForMaskedLM"):
            torch.testing.assert_close(
                ours.predict_contacts(tokens, mask), hf.predict_contacts(tokens, mask), **MODEL_FP32
            )


def hf_model(name: str, kind: str, seed: int):
    torch.manual_seed(seed)
    config = transformers.EsmConfig(**config_values(kind))
    config._attn_implementation = "eager"  # attention probabilities are returned only by eager
    model = getattr(transformers, name)(config).eval()
    perturb(model, seed)
    return model


def ours_model(name: str, kind: str, seed: int):
    torch.manual_seed(seed)
    model = OURS[name](EsmConfig(**config_values(kind))).eval()
    perturb(model, seed)
    return model


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(OURS))
def test_transformers_checkpoint_loads_into_reference(name, kind, tmp_path):
    hf = hf_model(name, kind, seed=10)
    hf.save_pretrained(tmp_path)
    ours = OURS[name].from_pretrained(tmp_path)
    assert type(ours) is OURS[name] and not ours.training
    assert_same_outputs(ours, hf, name)
    if kind == "esm2":  # the stored (perturbed, fp16-rounded) frequencies are used as they are
        stored = dict(hf.named_buffers())
        shared = next(v for k, v in stored.items() if k.endswith("inv_freq"))
        for layer in (ours if name == "EsmModel" else ours.esm).encoder.layer:
            assert torch.equal(layer.attention.self.rotary_embeddings.inv_freq, shared)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(OURS))
def test_reference_checkpoint_loads_into_transformers(name, kind, tmp_path):
    ours = ours_model(name, kind, seed=20)
    ours.save_pretrained(tmp_path)
    hf, info = getattr(transformers, name).from_pretrained(
        tmp_path, attn_implementation="eager", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    assert_same_outputs(ours, hf.eval(), name)


@pytest.mark.parametrize("kind", KINDS)
def test_transformers_state_dict_loads_unchanged(kind):
    """`load_state_dict(hf.state_dict())` works as is (strict), including transformers 5's
    model-level rotary buffer; the outputs then match."""
    hf = hf_model("EsmForMaskedLM", kind, seed=30)
    ours = EsmForMaskedLM(EsmConfig(**config_values(kind))).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)
    assert_same_outputs(ours, hf, "EsmForMaskedLM")


def test_inputs_embeds_match_without_padding():
    """Without padding and <mask> tokens, transformers 5 and we agree on inputs_embeds (5.x skips
    the embedding module for them; we only replace the lookup, see reference/esm.py)."""
    hf = hf_model("EsmModel", "esm2", seed=40)
    ours = EsmModel(EsmConfig(**config_values("esm2"))).eval()
    ours.load_state_dict(hf.state_dict())
    embeds = torch.randn(2, 7, 32)
    with torch.no_grad():
        a = ours(inputs_embeds=embeds).last_hidden_state
        b = hf(inputs_embeds=embeds).last_hidden_state
    torch.testing.assert_close(a, b, **MODEL_FP32)


@pytest.mark.parametrize("kind", KINDS)
def test_explicit_position_ids_match(kind):
    """Explicit position_ids: absolute embedding ids (ESM-1b) or rotary positions (ESM-2, where
    transformers 5 uses them too); reversed positions so that they really differ from default."""
    hf = hf_model("EsmModel", kind, seed=50)
    ours = EsmModel(EsmConfig(**config_values(kind))).eval()
    ours.load_state_dict(hf.state_dict())
    tokens, mask = batch()
    pos = (torch.arange(tokens.shape[1]).flip(0) + 2)[None].expand(len(tokens), -1)
    with torch.no_grad():
        a = ours(tokens, mask, position_ids=pos).last_hidden_state
        b = hf(tokens, attention_mask=mask, position_ids=pos).last_hidden_state
        default = ours(tokens, mask).last_hidden_state
    torch.testing.assert_close(a, b, **MODEL_FP32)
    assert (a - default).abs().max() > 1e-2


@pytest.mark.parametrize("kind", KINDS)
def test_mlm_gradients_match(kind):
    """Training step (dropout 0): the loss gradients of every parameter agree."""
    hf = hf_model("EsmForMaskedLM", kind, seed=60).train()
    ours = EsmForMaskedLM(EsmConfig(**config_values(kind))).train()
    ours.load_state_dict(hf.state_dict())
    tokens, mask = batch()
    labels = labels_for("EsmForMaskedLM", tokens)[0]
    ours(tokens, mask, labels=labels).loss.backward()
    hf(tokens, attention_mask=mask, labels=labels).loss.backward()
    theirs = {k: p.grad for k, p in hf.named_parameters()}
    checked = 0
    for key, p in ours.named_parameters():
        if p.grad is None:  # the contact head takes no part in the loss
            assert theirs.get(key) is None, key
            continue
        torch.testing.assert_close(p.grad, theirs[key], **MODEL_FP32, msg=key)
        checked += 1
    assert checked > 20
