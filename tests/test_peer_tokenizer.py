"""EsmTokenizer against transformers' EsmTokenizer built from our saved vocab.txt.

The guarantee: equal outputs for any text of vocabulary letters, whitespace and inline vocabulary
tokens, and for text whose unknown characters are never adjacent. Runs of unknown characters are
the documented difference (one <unk> per character here, one per run in transformers).
"""

import warnings

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from esmkernels.core.configuration import ESM_VOCAB
from esmkernels.core.tokenization import EsmTokenizer

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.peer

OURS = EsmTokenizer()
LETTERS = [t for t in ESM_VOCAB if len(t) == 1]
SPECIALS = [t for t in ESM_VOCAB if len(t) > 1]
WS = [" ", "\t", "\n", "  ", "\r\n", "\xa0"]
INVALID = list("019*#xzbé?_")

valid_piece = st.one_of(st.sampled_from(LETTERS), st.sampled_from(SPECIALS), st.sampled_from(WS))
valid_text = st.lists(valid_piece, max_size=30).map("".join)


def _isolated(pieces):
    # Unknown characters separated by at least one vocabulary letter or inline token.
    return not any(a in INVALID and b in INVALID for a, b in zip(pieces, pieces[1:]))


mixed_text = (
    st.lists(st.one_of(valid_piece, st.sampled_from(INVALID)), max_size=30)
    .filter(lambda ps: _isolated([p for p in ps if not p.isspace()]))
    .map("".join)
)


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    directory = tmp_path_factory.mktemp("esm_vocab")
    (vocab,) = OURS.save_vocabulary(directory)
    return transformers.EsmTokenizer(vocab)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("esm_tok")
    OURS.save_pretrained(directory)
    return directory


def call_hf(tok, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tok(*args, **kwargs)


@given(st.one_of(valid_text, mixed_text))
@example("M<mask>K<null_1><pad><cls><eos><unk>")
@example("a<mask>b M9K")
@example("<<mask>>")
@example("")
def test_single_text(hf, text):
    theirs = call_hf(hf, text)
    ours = OURS(text)
    assert ours["input_ids"] == theirs["input_ids"]
    assert ours["attention_mask"] == theirs["attention_mask"]
    assert OURS.tokenize(text) == hf.tokenize(text)
    ids = ours["input_ids"]
    assert OURS.decode(ids) == hf.decode(ids)
    assert OURS.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)
    assert (
        OURS(text, add_special_tokens=False)["input_ids"]
        == (call_hf(hf, text, add_special_tokens=False)["input_ids"])
    )


@given(
    st.lists(valid_text, min_size=1, max_size=4),
    st.sampled_from([False, True, "longest", "max_length", "do_not_pad"]),
    st.sampled_from([None, False, True]),
    st.integers(2, 25),
    st.sampled_from([None, 4]),
    st.booleans(),
)
@example(["MKTAYIAK", "M"], "max_length", True, 4, None, True)
@example(["MKTAYIAK", "M"], False, None, 3, None, True)
@example([""], True, True, 2, 4, False)
def test_batch(hf, texts, padding, truncation, max_length, multiple, specials):
    kwargs = dict(
        padding=padding, truncation=truncation, max_length=max_length,
        pad_to_multiple_of=multiple, add_special_tokens=specials,
    )  # fmt: skip
    try:
        theirs = call_hf(hf, texts, **kwargs)
    except ValueError:  # e.g. truncation to a length that is not a multiple of the padding's
        with pytest.raises(ValueError):
            OURS(texts, **kwargs)
        return
    ours = OURS(texts, **kwargs)
    assert ours["input_ids"] == theirs["input_ids"]
    assert ours["attention_mask"] == theirs["attention_mask"]
    if len({len(ids) for ids in ours["input_ids"]}) == 1:
        theirs_np = call_hf(hf, texts, return_tensors="np", **kwargs)
        ours_np = OURS(texts, return_tensors="np", **kwargs)
        np.testing.assert_array_equal(ours_np["input_ids"], theirs_np["input_ids"])
        np.testing.assert_array_equal(ours_np["attention_mask"], theirs_np["attention_mask"])
    assert OURS.batch_decode(ours["input_ids"]) == hf.batch_decode(theirs["input_ids"])


@given(
    st.lists(st.sampled_from(range(33)), max_size=10),
    st.one_of(st.none(), st.lists(st.sampled_from(range(33)), max_size=10)),
)
def test_special_token_helpers(hf, ids0, ids1):
    assert OURS.build_inputs_with_special_tokens(ids0, ids1) == (
        hf.build_inputs_with_special_tokens(ids0, ids1)
    )
    assert OURS.get_special_tokens_mask(ids0, ids1) == hf.get_special_tokens_mask(ids0, ids1)
    assert OURS.get_special_tokens_mask(ids0, already_has_special_tokens=True) == (
        hf.get_special_tokens_mask(ids0, already_has_special_tokens=True)
    )
    assert OURS.create_token_type_ids_from_sequences(ids0, ids1) == (
        hf.create_token_type_ids_from_sequences(ids0, ids1)
    )
    assert OURS.convert_ids_to_tokens(ids0) == hf.convert_ids_to_tokens(ids0)
    assert OURS.convert_ids_to_tokens(ids0, skip_special_tokens=True) == (
        hf.convert_ids_to_tokens(ids0, skip_special_tokens=True)
    )


def test_vocabulary_and_attributes(hf):
    assert OURS.get_vocab() == hf.get_vocab()
    assert OURS.vocab_size == hf.vocab_size and len(OURS) == len(hf)
    assert OURS.all_special_tokens == hf.all_special_tokens
    assert OURS.all_special_ids == hf.all_special_ids
    for name in ("cls", "pad", "eos", "unk", "mask"):
        assert getattr(OURS, f"{name}_token") == getattr(hf, f"{name}_token")
        assert getattr(OURS, f"{name}_token_id") == getattr(hf, f"{name}_token_id")
    tokens = [*ESM_VOCAB, "zz", "a"]
    assert OURS.convert_tokens_to_ids(tokens) == hf.convert_tokens_to_ids(tokens)


def test_transformers_loads_our_saved_directory(hf_dir):
    loaded = transformers.EsmTokenizer.from_pretrained(hf_dir)
    auto = transformers.AutoTokenizer.from_pretrained(hf_dir)
    text = ["MKT<mask>AYI", "Q"]
    expected = OURS(text, padding=True)
    for tok in (loaded, auto):
        assert call_hf(tok, text, padding=True)["input_ids"] == expected["input_ids"]


def test_we_load_transformers_saved_directory(hf, tmp_path):
    hf.save_pretrained(tmp_path)
    again = EsmTokenizer.from_pretrained(tmp_path)
    assert again.get_vocab() == hf.get_vocab()
    assert again.model_max_length is None  # transformers writes int(1e30): no limit


def test_documented_difference_runs_of_unknown_characters(hf):
    # transformers: one <unk> per run, shifting the residues after it; here: one per character.
    assert call_hf(hf, "M9*K")["input_ids"] == [0, 20, 3, 15, 2]
    assert OURS("M9*K")["input_ids"] == [0, 20, 3, 3, 15, 2]
    # Both map lower-case letters to <unk> (the vocabulary is upper case).
    assert call_hf(hf, "MkT")["input_ids"] == OURS("MkT")["input_ids"] == [0, 20, 3, 11, 2]
