"""The fast models on the Triton path really run the kernels, at sizes that span several tiles.

A model-level "triton" test that compares outputs with the reference passes just as well when a
layer quietly falls back to PyTorch (the fallback is the reference). Here every kernel launch is
counted by kernel name (`tests/_launches.py`) and the torch paths are watched: the language
models launch each kernel exactly once per layer norm / attention layer, forward and backward,
packed and padded; the full fast ESMFold launches every trunk kernel, chunked (more launches)
and unchunked, with gradients, and matches the reference. Sequence lengths exceed the
interpreter's tiles (16 for rotary attention, 8 for the trunk kernels), with padding inside a
tile.
"""

from __future__ import annotations

import pytest
import torch

from esmkernels.core.configuration import EsmConfig
from esmkernels.models import esm as fast
from esmkernels.models.esmfold import EsmForProteinFolding
from esmkernels.reference import esm as ref
from esmkernels.reference.esmfold.modeling import EsmForProteinFolding as RefFolding
from tests._configs import tiny_lm_config
from tests._launches import (
    AXIAL_BWD,
    AXIAL_DBIAS,
    AXIAL_FWD,
    LAYER_NORM,
    ROTARY_BWD,
    ROTARY_FWD,
    TRIMUL_FWD,
    launches,
)
from tests.test_esmfold_trunk import randomize_, tiny_trunk_config
from tests.tolerances import MODEL_FP32

PAD, CLS, EOS = 1, 0, 2
GRAD_TOL = {"atol": 2e-4, "rtol": 2e-4}


def _lm_tokens(lengths: list[int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.full((len(lengths), max(lengths)), PAD)
    for b, n in enumerate(lengths):
        tokens[b, :n] = torch.randint(4, 24, (n,), generator=g)
        tokens[b, 0], tokens[b, n - 1] = CLS, EOS
    return tokens


@pytest.mark.parametrize("unpad", [True, False], ids=["packed", "padded"])
@pytest.mark.parametrize("style", ["esm2", "esm1b"])
def test_lm_launches_each_kernel_once_per_layer(style, unpad):
    """Masked LM forward + backward: one LayerNorm launch per LayerNorm module and one rotary
    attention launch (each backward kernel too) per layer; no torch path; reference values."""
    config = tiny_lm_config(style, max_position_embeddings=64)
    torch.manual_seed(0)
    reference = ref.EsmForMaskedLM(config)
    randomize_(reference, seed=1)
    model = fast.EsmForMaskedLM(config, backend="triton")
    model.load_state_dict(reference.state_dict())
    model.esm.encoder.unpad = unpad
    tokens = _lm_tokens([40, 23, 7])  # 3, 2 and 1 query tiles of 16; padding inside a tile
    keep = tokens.ne(PAD)
    labels = tokens.masked_fill(~keep, -100)

    with launches() as seen:
        out = model(tokens, labels=labels)
        out.loss.backward()
    n_ln = sum(isinstance(m, fast.EsmLayerNorm) for m in model.modules())
    n_layers = config.num_hidden_layers
    assert n_ln == 2 * n_layers + 2 + (style == "esm1b")  # layers, final, LM head, embeddings
    seen.expect(*LAYER_NORM, exactly=n_ln)
    seen.expect(*ROTARY_FWD, *ROTARY_BWD, exactly=n_layers)

    want = reference(tokens, labels=labels)
    want.loss.backward()
    torch.testing.assert_close(out.logits[keep], want.logits[keep], **MODEL_FP32)
    ref_params = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, **GRAD_TOL, msg=name)


def test_lm_torch_backend_launches_nothing():
    """The other direction: backend="torch" runs no kernel, so counting launches can tell the
    two paths apart."""
    model = fast.EsmForMaskedLM(tiny_lm_config("esm2"), backend="torch").eval()
    with launches() as seen:
        model(_lm_tokens([9, 5]))
    assert not seen.kernels
    assert seen.fallbacks["layer_norm"] > 0 and seen.fallbacks["rotary_attention_varlen"] > 0


# ------------------------------------------------------------------------------------------------
# ESMFold
# ------------------------------------------------------------------------------------------------

_FOLD: list[RefFolding] = []


def _reference_fold() -> RefFolding:
    """Tiny reference ESMFold (stem head dim 16, which the rotary kernel tiles; trunk head
    width 8, one block), non-trivial weights."""
    if not _FOLD:
        stem = dict(
            vocab_size=33, pad_token_id=1, mask_token_id=32, hidden_size=32,
            num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            position_embedding_type="rotary", token_dropout=True, emb_layer_norm_before=False,
            max_position_embeddings=1026, layer_norm_eps=1e-5,
        )  # fmt: skip
        fold = dict(fp16_esm=False, lddt_head_hid_dim=16, trunk=tiny_trunk_config().to_dict())
        config = EsmConfig(**stem, is_folding_model=True, esmfold_config=fold)
        torch.manual_seed(0)
        model = RefFolding(config)
        randomize_(model, seed=2)
        with torch.no_grad():  # keep the structure module's updates small: stable gradients
            for name, p in model.named_parameters():
                if "structure_module" in name and p.dim() > 1:
                    p.mul_(0.3)
        _FOLD.append(model.eval())
    return _FOLD[0]


def _fold_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """One chain of 12 residues (two tiles of 8) whose last 4 are padding (inside a tile)."""
    aatype = torch.randint(0, 20, (1, 12), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(1, 12, dtype=torch.long)
    mask[0, 8:] = 0
    return aatype, mask


def _fold_loss(out, mask: torch.Tensor) -> torch.Tensor:
    """A scalar touching the trunk's pair and sequence states and the structure."""
    real = mask.bool()
    pair = real[:, :, None] & real[:, None, :]
    w = torch.linspace(-1, 1, out.s_z[pair].numel()).view_as(out.s_z[pair])
    return (out.s_z[pair] * w).sum() + out.s_s[real].square().sum() + out.positions[-1][real].sum()


def test_esmfold_runs_every_trunk_kernel_chunked_and_unchunked_with_gradients():
    """The whole fast ESMFold, forward and backward on the Triton path, unchunked and in row
    chunks of 5: every trunk kernel launches (axial attention forward, backward and dbias; the
    triangle multiplication's three forward kernels) as do the stem's, nothing falls back to
    PyTorch, chunking launches the axial kernels more often (it happened), and the structure,
    the states and the trunk's parameter gradients match the reference."""
    reference = _reference_fold()
    model = EsmForProteinFolding(reference.config, backend="triton")
    model.load_state_dict(reference.state_dict())
    model.eval()
    aatype, mask = _fold_inputs()
    real = mask.bool()
    pair = real[:, :, None] & real[:, None, :]
    ref_params = dict(reference.named_parameters())
    fwd_launches = {}
    for chunk_size in (None, 5):
        model.set_chunk_size(chunk_size)
        reference.trunk.set_chunk_size(chunk_size)
        model.zero_grad()
        with launches() as seen:
            out = model(aatype, attention_mask=mask, num_recycles=0)
            _fold_loss(out, mask).backward()
        seen.expect(*TRIMUL_FWD, *AXIAL_FWD, *AXIAL_BWD, *AXIAL_DBIAS, *ROTARY_FWD)
        seen.expect(LAYER_NORM[0])
        fwd_launches[chunk_size] = seen.kernels[AXIAL_FWD[0]]

        reference.zero_grad()
        want = reference(aatype, attention_mask=mask, num_recycles=0)
        _fold_loss(want, mask).backward()
        torch.testing.assert_close(out.s_z[pair], want.s_z[pair], **MODEL_FP32)
        torch.testing.assert_close(out.s_s[real], want.s_s[real], **MODEL_FP32)
        torch.testing.assert_close(out.positions[:, real], want.positions[:, real], **MODEL_FP32)
        checked = 0
        for name, p in model.named_parameters():
            if name.startswith("trunk.blocks") and ref_params[name].grad is not None:
                torch.testing.assert_close(p.grad, ref_params[name].grad, **GRAD_TOL, msg=name)
                checked += 1
        assert checked > 20
    assert fwd_launches[5] > fwd_launches[None]
