"""Fast models against transformers' ESM (SDPA) on the CPU: same outputs on skewed batches.

Speed is not asserted here: a wall-clock ratio depends on the machine and its load, so it lives
in the benchmark `bench/test_bench_models.py` (CPU ratio vs transformers), not in `make test`.
"""

from __future__ import annotations

import pytest
import torch

from esmkernels.core.configuration import EsmConfig
from esmkernels.models import esm as fast
from tests.tolerances import MODEL_FP32

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.peer

PAD = 1


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pair(hidden, layers, heads, inter, style="esm2"):
    kw = dict(
        vocab_size=33, pad_token_id=PAD, mask_token_id=32, hidden_size=hidden,
        num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=inter,
        layer_norm_eps=1e-5, max_position_embeddings=1026, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    if style == "esm2":
        kw.update(position_embedding_type="rotary", token_dropout=True, emb_layer_norm_before=False)
    else:
        kw.update(
            position_embedding_type="absolute", token_dropout=False, emb_layer_norm_before=True
        )
    torch.manual_seed(0)
    ours = fast.EsmForMaskedLM(EsmConfig(**kw), backend="torch").eval()
    hf_config = transformers.EsmConfig(**kw)
    hf_config._attn_implementation = "sdpa"
    hf = transformers.EsmForMaskedLM(hf_config).eval()
    missing, unexpected = hf.load_state_dict(ours.state_dict(), strict=False)
    assert not missing and not unexpected
    return ours, hf


def skewed_batch(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.full((len(lengths), max(lengths) + 2), PAD)
    for b, n in enumerate(lengths):
        tokens[b, 0], tokens[b, n + 1] = 0, 2
        tokens[b, 1 : n + 1] = torch.randint(4, 24, (n,), generator=g)
        tokens[b, 1 : n + 1][torch.rand(n, generator=g) < 0.1] = 32
    return tokens, tokens.ne(PAD).long()


@pytest.mark.parametrize("style", ["esm2", "esm1b"])
def test_same_logits_as_transformers(style):
    ours, hf = pair(64, 2, 4, 128, style)
    tokens, mask = skewed_batch([3, 17, 9])
    keep = mask.bool()
    with torch.no_grad():
        got = ours(tokens, attention_mask=mask).logits
        want = hf(input_ids=tokens, attention_mask=mask).logits
    torch.testing.assert_close(got[keep], want[keep], **MODEL_FP32)
