"""Variant scoring (`esmkernels.core.variants`, `EsmForMaskedLM.score_variants`) against direct loops.

The expected scores are computed here from their definitions (Meier et al. 2021), one
unbatched forward per masked copy through the reference model.
"""

from __future__ import annotations

import pytest
import torch

from esmkernels.core.configuration import EsmConfig
from esmkernels.core.tokenization import EsmTokenizer
from esmkernels.core.variants import METHODS, parse_mutations, score_variants
from esmkernels.models import esm as fast
from esmkernels.reference import esm as ref

SEQUENCE = "MKTAYIAKQRQISFVKSH"
MUTATIONS = ["K2A", "T3G:A4C", "H18W", "M1M", "A7L:K8R:Q9E"]
TOL = {"atol": 1e-4, "rtol": 1e-4}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny shapes: one intra-op thread. On a loaded machine a second OpenMP thread makes each
    small op wait for a descheduled worker (milliseconds per op instead of microseconds)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models():
    tok = EsmTokenizer()
    config = EsmConfig(
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        mask_token_id=tok.mask_token_id,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_dropout_prob=0.1,  # dropout on: scoring must switch it off
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=1e-5,
        position_embedding_type="rotary",
        token_dropout=True,
        emb_layer_norm_before=False,
    )
    torch.manual_seed(0)
    reference = ref.EsmForMaskedLM(config)
    with torch.no_grad():  # larger weights than the init, so scores are far from zero
        for p in reference.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    model = fast.EsmForMaskedLM(config, backend="torch")
    model.load_state_dict(reference.state_dict())
    return tok, reference.eval(), model.eval()


def log_probs(model, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().log_softmax(-1).double()


def direct_scores(model, tok, sequence, mutations, method) -> list[float]:
    """Slow scores from the definitions: one forward per masked copy, no batching."""
    aa = tok.get_vocab()
    wt = [tok.cls_token_id] + [aa[a] for a in sequence] + [tok.eos_token_id]

    cache: dict[tuple[int, ...], torch.Tensor] = {}

    def masked_lp(tokens, i):
        copy = list(tokens)
        copy[i] = tok.mask_token_id
        if tuple(copy) not in cache:
            cache[tuple(copy)] = log_probs(model, copy)[i]
        return cache[tuple(copy)]

    def pll(tokens):
        return sum(masked_lp(tokens, i)[tokens[i]].item() for i in range(1, len(tokens) - 1))

    out = []
    for mutant in mutations:
        sites = [(int(s[1:-1]), s[0], s[-1]) for s in mutant.split(":")]
        if method == "pseudo-ppl":
            mt = list(wt)
            for pos, _, m in sites:
                mt[pos] = aa[m]
            out.append(pll(mt) - pll(wt))
            continue
        total = 0.0
        for pos, w, m in sites:
            lp = masked_lp(wt, pos) if method == "masked-marginals" else log_probs(model, wt)[pos]
            total += (lp[aa[m]] - lp[aa[w]]).item()
        out.append(total)
    return out


@pytest.mark.parametrize("method", METHODS)
def test_scores_match_the_definitions(models, method):
    tok, reference, model = models
    want = torch.tensor(
        direct_scores(reference, tok, SEQUENCE, MUTATIONS, method), dtype=torch.float64
    )
    got = model.score_variants(SEQUENCE, MUTATIONS, method=method, batch_size=4)
    assert got.shape == (len(MUTATIONS),) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, **TOL)
    assert got[3] == 0  # M1M: the wild type itself
    assert want.abs()[[0, 1, 2, 4]].min() > 1e-3  # the check is not vacuous
    # Any batch size, any model (reference or fast), the function or the method: same scores.
    for batch_size in (1, 1000):
        again = score_variants(reference, tok, SEQUENCE, MUTATIONS, method, batch_size=batch_size)
        torch.testing.assert_close(again.double(), want, **TOL)


def test_multi_mutant_marginals_are_sums_of_singles(models):
    tok, _, model = models
    singles = model.score_variants(SEQUENCE, ["A7L", "K8R", "Q9E"])
    triple = model.score_variants(SEQUENCE, "A7L:K8R:Q9E")
    torch.testing.assert_close(triple[0], singles.sum(), **TOL)


def test_triton_backend_scores(models):
    tok, reference, model = models
    model.backend = "triton"
    try:
        got = model.score_variants(SEQUENCE[:10], ["K2A", "T3G:A4C"], batch_size=8)
    finally:
        model.backend = "torch"
    want = torch.tensor(
        direct_scores(reference, tok, SEQUENCE[:10], ["K2A", "T3G:A4C"], "masked-marginals"),
        dtype=torch.float64,
    )
    torch.testing.assert_close(got.double(), want, **TOL)


def test_training_flag_is_restored_and_dropout_is_off(models):
    tok, _, model = models
    model.train()
    try:
        a = model.score_variants(SEQUENCE, MUTATIONS, method="wt-marginals")
        b = model.score_variants(SEQUENCE, MUTATIONS, method="wt-marginals")
        assert model.training
    finally:
        model.eval()
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_parse_mutations():
    assert parse_mutations("MKTAY", "K2A:Y5W") == [(1, "K", "A"), (4, "Y", "W")]
    assert parse_mutations("MKTAY", "m1l") == [(0, "M", "L")]
    assert parse_mutations("mktay", "K2A") == parse_mutations("MKTAY", "k2a") == [(1, "K", "A")]
    with pytest.raises(ValueError, match=r"'M1J'.*'J' is not in the vocabulary"):
        parse_mutations("MKTAY", "M1J", alphabet={"A", "M", "K"})
    assert parse_mutations("MKTAY", "M1J") == [(0, "M", "J")]  # no alphabet: format only


def test_either_case_scores_the_same(models):
    """Lower-case sequences and mutations score as their upper case (issue 18)."""
    _, _, model = models
    want = model.score_variants(SEQUENCE[:12], ["K2A", "T3G:A4C"])
    got = model.score_variants(SEQUENCE[:12].lower(), ["k2a", "t3G:a4C"])
    torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        ("A2G", r"'A2G'.*position 2 is 'K', not 'A'"),
        ("K2A:Y4W", r"'K2A:Y4W'.*position 4 is 'A', not 'Y'"),
        ("K0A", r"'K0A'.*position 0 is outside"),
        ("Y19W", r"'Y19W'.*position 19 is outside"),
        ("K2", r"'K2'.*cannot parse"),
        ("K2A;T3G", r"cannot parse"),
        ("K2A:K2G", r"position 2 is mutated twice"),
    ],
)
def test_bad_mutations_are_named(models, mutation, message):
    _, _, model = models
    with pytest.raises(ValueError, match=message):
        model.score_variants(SEQUENCE, ["K2A", mutation])


def test_other_errors(models):
    tok, _, model = models
    with pytest.raises(ValueError, match="'masked'"):
        model.score_variants(SEQUENCE, "K2A", method="masked")
    with pytest.raises(ValueError, match="batch_size"):
        score_variants(model, tok, SEQUENCE, "K2A", batch_size=0)
    with pytest.raises(ValueError, match=r"\['J'\]"):
        model.score_variants(SEQUENCE, "K2J")
    with pytest.raises(ValueError, match="non-empty"):
        model.score_variants("", "K2A")
    with pytest.raises(TypeError, match="int"):
        model.score_variants(SEQUENCE, [42])
    small = fast.EsmForMaskedLM(
        EsmConfig(vocab_size=25, pad_token_id=1, hidden_size=16, num_hidden_layers=1,
                  num_attention_heads=1, intermediate_size=16, position_embedding_type="rotary")
    )  # fmt: skip
    with pytest.raises(ValueError, match="vocab_size=25"):
        small.score_variants(SEQUENCE, "K2A")
    assert model.score_variants(SEQUENCE, []).shape == (0,)


def test_deep_mutational_scan_is_batched(models):
    """A full DMS of a 300-residue protein: one forward per batch of masked positions."""
    tok, reference, model = models
    g = torch.Generator().manual_seed(0)
    letters = "ACDEFGHIKLMNPQRSTVWY"
    sequence = "".join(letters[i] for i in torch.randint(0, 20, (300,), generator=g).tolist())
    scan = [f"{w}{i + 1}{m}" for i, w in enumerate(sequence) for m in letters if m != w]
    calls = []
    handle = model.register_forward_hook(
        lambda m, args, kwargs, out: calls.append(tuple(kwargs["input_ids"].shape)),
        with_kwargs=True,
    )
    try:
        got = model.score_variants(sequence, scan, batch_size=64)
        assert len(calls) == 5 and calls[0] == (64, 302)  # ceil(300 / 64) forwards
        calls.clear()
        wt = model.score_variants(sequence, scan, method="wt-marginals")
        assert len(calls) == 1
    finally:
        handle.remove()
    assert got.shape == wt.shape == (len(scan),) == (5700,)
    picks = [0, 1234, 5699]
    want = direct_scores(reference, tok, sequence, [scan[i] for i in picks], "masked-marginals")
    torch.testing.assert_close(got[picks].double(), torch.tensor(want, dtype=torch.float64), **TOL)


def test_esm1v_style_model(models):
    """ESM-1v: absolute positions, embedding LayerNorm, token dropout."""
    tok = models[0]
    config = EsmConfig(
        vocab_size=len(tok), pad_token_id=tok.pad_token_id, mask_token_id=tok.mask_token_id,
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        layer_norm_eps=1e-5, position_embedding_type="absolute", token_dropout=True,
        emb_layer_norm_before=True, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(5)
    reference = ref.EsmForMaskedLM(config).eval()
    model = fast.EsmForMaskedLM(config, backend="torch").eval()
    model.load_state_dict(reference.state_dict())
    for method in METHODS:
        want = direct_scores(reference, tok, SEQUENCE, MUTATIONS[:3], method)
        got = model.score_variants(SEQUENCE, MUTATIONS[:3], method=method, batch_size=5)
        torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), **TOL)
