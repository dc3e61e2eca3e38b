"""Training with the tools people already use, on the fast classes and on patched transformers
models: PEFT LoRA, `transformers.Trainer` (labels, evaluation, gradient checkpointing) and
mixed precision (autocast and bf16 weights).

The kernels run under the interpreter ("triton") where a test says so, and count their launches.
"""

from __future__ import annotations

import copy

import pytest
import torch

import esmkernels
from esmkernels import EsmForSequenceClassification, EsmForTokenClassification
from esmkernels.reference import esm as reference
from tests import _launches as L
from tests.test_peer_transformers_lm import config_values
from tests.tolerances import MODEL_FP32, assert_within_rule

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
pytestmark = pytest.mark.peer

PAD = 1


def values(**overrides) -> dict:
    # Two 16-wide heads (the attention kernels' smallest), no dropout.
    return {**config_values("esm2"), "num_attention_heads": 2, "num_labels": 2, **overrides}


def ours(cls, seed=0, backend="triton"):
    torch.manual_seed(seed)
    return cls(esmkernels.EsmConfig(**values()), backend=backend)


def patched(name: str, seed=0, backend="triton"):
    torch.manual_seed(seed)
    model = getattr(transformers, name)(transformers.EsmConfig(**values()))
    return esmkernels.accelerate(model, backend=backend)


def toy_rows(n: int = 16, seed: int = 0) -> list[dict]:
    """Sequences of random residues; the sequence label says whether token 5 occurs, the token
    labels whether each token is 5 or 6."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        body = torch.randint(4, 12, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g)
        ids = torch.cat([torch.tensor([0]), body, torch.tensor([2])])
        token_labels = ((ids == 5) | (ids == 6)).long()
        token_labels[0] = token_labels[-1] = -100
        rows.append({"input_ids": ids, "labels": int((body == 5).any()), "tok": token_labels})
    return rows


def collate(rows: list[dict], token_labels: bool = False) -> dict:
    """Right-padded batch; padding labels are -100, as data collators make them. Rows hold
    "input_ids" and "labels" (the sequence label) or "tok" (token labels)."""
    L_ = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), L_), PAD)
    labels = torch.full((len(rows), L_), -100)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = r["input_ids"]
        if token_labels:
            labels[i, : len(r["tok"])] = r["tok"]
    if not token_labels:
        labels = torch.tensor([r["labels"] for r in rows])
    return {"input_ids": ids, "attention_mask": ids.ne(PAD).long(), "labels": labels}


# ------------------------------------------------------------------------------------------------
# PEFT LoRA
# ------------------------------------------------------------------------------------------------

# The interpreted kernels run in one case (the patched model, whose kernel path is the least
# direct); the fast classes train on their torch path, packed (varlen) as on a GPU.
LORA_CASES = {
    "ours-sequence": lambda: ours(EsmForSequenceClassification, backend="torch"),
    "ours-token": lambda: ours(EsmForTokenClassification, backend="torch"),
    "patched-transformers-sequence": lambda: patched("EsmForSequenceClassification"),
}


@pytest.mark.parametrize("case", list(LORA_CASES))
def test_lora_trains_and_its_adapter_reloads(case, tmp_path):
    token_labels = "token" in case
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "key", "value"], modules_to_save=["classifier"]
    )
    model = peft.get_peft_model(LORA_CASES[case](), config)
    lora = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    assert any(".query." in n for n in lora) and any(".value." in n for n in lora)
    batch = collate(toy_rows(6), token_labels)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    losses = []
    with L.launches() as seen:
        for _ in range(5):
            loss = model(**batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    if case.startswith("patched"):  # the kernels trained, fed by the LoRA layers
        seen.expect(*L.ROTARY_FWD, *L.ROTARY_BWD)
    else:
        assert seen.fallbacks["rotary_attention_varlen"] == 2 * 5 and not seen.kernels, seen
    assert losses[-1] < 0.7 * losses[0], losses

    model.eval()
    model.save_pretrained(tmp_path)
    reloaded = peft.PeftModel.from_pretrained(LORA_CASES[case](), tmp_path).eval()
    with torch.no_grad():
        want = model(**batch).logits
        got = reloaded(**batch).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_adapter_trained_on_our_class_loads_on_the_patched_transformers_class(tmp_path):
    """Same parameter names: an adapter moves between the two as it is."""
    config = peft.LoraConfig(r=4, target_modules=["query", "key", "value"])
    base = ours(EsmForSequenceClassification, backend="torch")
    base.save_pretrained(tmp_path / "base")
    model = peft.get_peft_model(base, config)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # a trained-looking adapter (lora_B starts at zero)
    model.save_pretrained(tmp_path / "adapter")
    hf = transformers.EsmForSequenceClassification.from_pretrained(tmp_path / "base")
    hf = peft.PeftModel.from_pretrained(
        esmkernels.accelerate(hf, backend="torch"), tmp_path / "adapter"
    )
    batch = collate(toy_rows(4))
    with torch.no_grad():
        torch.testing.assert_close(
            hf.eval()(**batch).logits, model.eval()(**batch).logits, **MODEL_FP32
        )


# ------------------------------------------------------------------------------------------------
# transformers.Trainer
# ------------------------------------------------------------------------------------------------


def run_trainer(model, tmp_path, gradient_checkpointing: bool):
    # Trainer drops the columns the model's forward does not take ("tok") before collating.
    rows = toy_rows(16)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=1e-2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        seed=0,
        gradient_checkpointing=gradient_checkpointing,
        disable_tqdm=True,
    )

    def metrics(prediction):
        logits, labels = prediction
        return {"accuracy": float((logits.argmax(-1) == labels).mean())}

    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=rows,
        eval_dataset=rows,
        data_collator=lambda rs: collate(rs),
        compute_metrics=metrics,
    )
    # The first module of the first layer: run again when the backward recomputes the layer
    # (a hook on the layer itself may not be: recomputation stops once it has what it needs).
    first = trainer.model.esm.encoder.layer[0].attention.LayerNorm
    calls = []
    handle = first.register_forward_hook(lambda *_: calls.append(1))
    trainer.train()
    handle.remove()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return losses, trainer.evaluate(), len(calls)


@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_trainer_on_our_class_matches_the_transformers_class(tmp_path, gradient_checkpointing):
    torch.manual_seed(0)
    hf = transformers.EsmForSequenceClassification(transformers.EsmConfig(**values()))
    hf.save_pretrained(tmp_path / "base")
    fast = EsmForSequenceClassification.from_pretrained(tmp_path / "base", backend="torch")
    want = run_trainer(hf, tmp_path / "hf", gradient_checkpointing)
    got = run_trainer(fast, tmp_path / "ours", gradient_checkpointing)
    assert len(got[0]) == 3
    torch.testing.assert_close(torch.tensor(got[0]), torch.tensor(want[0]), **MODEL_FP32)
    for key in ("eval_loss", "eval_accuracy"):
        torch.testing.assert_close(got[1][key], want[1][key], **MODEL_FP32, msg=key)
    assert fast.is_gradient_checkpointing == gradient_checkpointing
    # Three training steps: one layer call each, two with recomputation in the backward pass.
    assert got[2] == want[2] == (6 if gradient_checkpointing else 3)


def test_activation_checkpointing_options_are_checked():
    model = ours(EsmForSequenceClassification, backend="torch")
    with pytest.raises(TypeError, match="preserve_rng_state"):
        model.gradient_checkpointing_enable({"preserve_rng_state": False})
    with pytest.raises(ValueError, match="every_n_layers=2"):
        model.activation_checkpointing_enable(every_n_layers=2)
    model.gradient_checkpointing_enable({"use_reentrant": True})
    assert model.is_gradient_checkpointing


# ------------------------------------------------------------------------------------------------
# Mixed precision
# ------------------------------------------------------------------------------------------------


def _grads_and_logits(model, batch, mode: str | None):
    model.zero_grad()
    if mode == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(**batch)
    else:
        out = model(**batch)
    out.loss.backward()
    grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
    return out.logits.float().detach(), grads


@pytest.mark.parametrize("mode", ["autocast", "cast"])
@pytest.mark.parametrize("which", ["ours", "patched"])
def test_bf16_gradients_within_the_tolerance_rule(mode, which):
    """bf16 (autocast, or weights cast with `.to`) vs fp32: the kernels' error in logits and
    gradients is at most twice plain PyTorch's at bf16 (the reference model) plus atol."""
    torch.manual_seed(0)
    ref32 = reference.EsmForSequenceClassification(esmkernels.EsmConfig(**values())).train()
    ref_low = copy.deepcopy(ref32)
    if which == "ours":
        fast = EsmForSequenceClassification(esmkernels.EsmConfig(**values()), backend="triton")
        fast.load_state_dict(ref32.state_dict())
    else:
        fast = patched("EsmForSequenceClassification")
        fast.load_state_dict(ref32.state_dict(), strict=False)  # 5.x keeps one inv_freq
    fast.train()
    if mode == "cast":
        fast.to(torch.bfloat16), ref_low.to(torch.bfloat16)
    batch = collate(toy_rows(4))
    want = _grads_and_logits(ref32, batch, None)
    low = _grads_and_logits(ref_low, batch, mode)
    with L.launches() as seen:
        got = _grads_and_logits(fast, batch, mode)
    seen.expect(*L.ROTARY_FWD, *L.ROTARY_BWD)
    assert got[1].shape == want[1].shape
    assert_within_rule(got[0], low[0], want[0], torch.bfloat16, "logits")
    assert_within_rule(got[1], low[1], want[1], torch.bfloat16, "gradients")
