"""EsmTokenizer: ids, padding, truncation, special tokens, strict mode, files, fast == slow path.

Expected ids come from `ESM_VOCAB` by hand (index of each letter), never from the tokenizer.
"""

import doctest
import json
import random

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import esmkernels.core.tokenization
import esmkernels.core.tokenizer_encoding
from esmkernels.core.configuration import ESM_VOCAB
from esmkernels.core.tokenization import EsmTokenizer

TOK = EsmTokenizer()
LETTERS = "".join(t for t in ESM_VOCAB if len(t) == 1)  # LAGVSERTIDPKQNFYMHWCXBUZO.-
SPECIALS = [t for t in ESM_VOCAB if len(t) > 1]
CLS, PAD, EOS, UNK, MASK = 0, 1, 2, 3, 32
WS = " \t\n\r\x0b\x0c\x1c\xa0\u2003"
# Not in the vocabulary; none of them can join neighbours into an inline token.
INVALID = "0129*#_xzbjé>?\x01\x7fΩ<"

residues = st.text(alphabet=LETTERS, max_size=40)


def vocab_id(token):
    return ESM_VOCAB.index(token)


# Texts built from pieces whose ids are known independently: a piece is a vocabulary letter, an
# inline special token, whitespace (no token) or an unknown character (one <unk>).
piece = st.one_of(
    st.sampled_from(LETTERS).map(lambda c: (c, [vocab_id(c)])),
    st.sampled_from(SPECIALS).map(lambda t: (t, [vocab_id(t)])),
    st.sampled_from(WS).map(lambda c: (c, [])),
    st.sampled_from(INVALID).map(lambda c: (c, [UNK])),
)
pieces = st.lists(piece, max_size=30)


def assemble(ps):
    return "".join(p for p, _ in ps), [i for _, ids in ps for i in ids]


# ----------------------------------------------------------------------------- ids


def test_known_ids():
    assert TOK("MKTAYIAK")["input_ids"] == [0, 20, 15, 11, 5, 19, 12, 5, 15, 2]
    assert TOK("M<mask>K")["input_ids"] == [0, 20, 32, 15, 2]
    assert TOK("BXZUO.-")["input_ids"] == [0, 25, 24, 27, 26, 28, 29, 30, 2]
    assert TOK(" M\tK\n")["input_ids"] == [0, 20, 15, 2]
    assert TOK("M<null_1>K")["input_ids"] == [0, 20, 31, 15, 2]
    # One <unk> per unknown character, also for runs (transformers would give one in total).
    assert TOK("mkt")["input_ids"] == [0, 3, 3, 3, 2]
    assert TOK("M9*K")["input_ids"] == [0, 20, 3, 3, 15, 2]
    # A broken inline token is unknown characters and letters, not a token.
    assert TOK("<MASK>")["input_ids"] == [0, 3, 20, 5, 8, 15, 3, 2]
    assert TOK("M<mask")["input_ids"] == [0, 20, 3, 3, 3, 3, 3, 2]


def test_empty_sequence_is_cls_eos():
    assert TOK("")["input_ids"] == [CLS, EOS]
    assert TOK(" \n")["input_ids"] == [CLS, EOS]
    assert TOK("", add_special_tokens=False)["input_ids"] == []
    assert TOK(["", "A"], padding=True)["input_ids"] == [[CLS, EOS, PAD], [CLS, 5, EOS]]


@pytest.mark.parametrize("return_tensors", [None, "np", "pt"])
def test_an_empty_batch_is_a_clear_error(return_tensors):
    with pytest.raises(ValueError, match="the batch is empty"):
        TOK([], return_tensors=return_tensors, padding=True)


def test_lower_case_becomes_unk_with_one_warning_naming_the_count():
    with pytest.warns(UserWarning, match=r"3 lower-case letter\(s\) became <unk>") as seen:
        ids = TOK(["mkT<mask>", "a"], padding=True)["input_ids"]
    assert len(seen) == 1  # once per call, not per sequence
    assert ids == [
        [CLS, UNK, UNK, 11, MASK, EOS],
        [CLS, UNK, EOS, PAD, PAD, PAD],
    ]  # as transformers


def test_inline_tokens_and_upper_case_do_not_warn(recwarn):
    TOK(["MKT<mask><pad>", "A<unk>", "M9*"])
    TOK("mkt", strict=False, uppercase=True)
    assert not [w for w in recwarn if "lower-case" in str(w.message)]


def test_uppercase_option_keeps_inline_tokens():
    assert TOK("mk<mask>t", uppercase=True)["input_ids"] == TOK("MK<mask>T")["input_ids"]
    assert TOK.upper("a<mask>c<eos>") == "A<mask>C<eos>"
    assert TOK.lowercase_unknown(["mk<mask>", "<cls>T", "é"]) == 2


def test_strict_names_lower_case_and_the_option():
    with pytest.raises(ValueError, match="upper-case"):
        TOK("Mk", strict=True)


@given(pieces)
@example([("M", [20]), ("<mask>", [32]), ("é", [3]), ("\x01", [3])])
@example([("<", [3]), ("<mask>", [32]), (">", [3])])
def test_ids_match_pieces_on_both_paths(ps):
    text, ids = assemble(ps)
    assert TOK(text)["input_ids"] == [CLS, *ids, EOS]
    assert TOK(text, add_special_tokens=False)["input_ids"] == ids
    assert TOK._encode_slow(text) == ids
    assert TOK.convert_tokens_to_ids(TOK.tokenize(text)) == ids


@given(st.text(max_size=60).filter(lambda s: "<" not in s))
@example("mkt9*")
@example("\x00\x01\x02\x1b\x7f\x80\uffff")
def test_one_token_per_character_without_inline_tokens(text):
    expected = [vocab_id(c) if c in LETTERS else UNK for c in text if not c.isspace()]
    assert TOK(text)["input_ids"] == [CLS, *expected, EOS]
    compact = "".join(c for c in text if not c.isspace())
    assert len(TOK(compact)["input_ids"]) == len(compact) + 2


@given(residues)
@example("")
@example(".-.")
def test_decode_round_trip(seq):
    ids = TOK.encode(seq)
    assert TOK.decode(ids, skip_special_tokens=True).replace(" ", "") == seq
    assert TOK.decode(ids) == " ".join(["<cls>", *seq, "<eos>"])
    assert TOK.decode(np.array(ids)) == TOK.decode(torch.tensor(ids)) == TOK.decode(ids)


def test_decode_forms():
    assert TOK.decode([0, 5, 1, 31, 3, 32, 2], skip_special_tokens=True) == "A <null_1>"
    assert TOK.decode(5) == "A"
    assert TOK.decode([]) == ""
    assert TOK.batch_decode(torch.tensor([[0, 5, 2], [0, 6, 1]])) == [
        "<cls> A <eos>",
        "<cls> G <pad>",
    ]
    with pytest.raises(ValueError, match="33"):
        TOK.decode([0, 33])
    with pytest.raises(ValueError, match="-1"):
        TOK.convert_ids_to_tokens([-1])
    with pytest.raises(TypeError):
        TOK.decode(["A"])


def test_token_conversions_and_properties():
    assert TOK.convert_tokens_to_ids("A") == 5
    assert TOK.convert_tokens_to_ids(["<mask>", "zz", "C"]) == [32, UNK, 23]
    assert TOK.convert_ids_to_tokens(32) == "<mask>"
    assert TOK.convert_ids_to_tokens([0, 5, 2], skip_special_tokens=True) == ["A"]
    assert (TOK.cls_token_id, TOK.pad_token_id, TOK.eos_token_id) == (CLS, PAD, EOS)
    assert (TOK.unk_token_id, TOK.mask_token_id) == (UNK, MASK)
    assert TOK.vocab_size == len(TOK) == 33
    assert TOK.get_vocab() == {t: i for i, t in enumerate(ESM_VOCAB)}
    assert TOK.all_special_tokens == ["<eos>", "<unk>", "<pad>", "<cls>", "<mask>"]
    assert TOK.all_special_ids == [EOS, UNK, PAD, CLS, MASK]
    assert TOK.tokenize("MK <mask>x") == ["M", "K", "<mask>", "x"]


# ----------------------------------------------------------------------------- batches


@given(
    st.lists(residues, min_size=1, max_size=5),
    st.sampled_from([True, "longest", "max_length"]),
    st.integers(2, 30),
    st.sampled_from([None, 1, 4, 8]),
    st.booleans(),
)
@example(["", "A"], "max_length", 2, None, True)
def test_padding_invariants(seqs, padding, max_length, multiple, specials):
    enc = TOK(
        seqs, padding=padding, max_length=max_length, pad_to_multiple_of=multiple,
        add_special_tokens=specials,
    )  # fmt: skip
    n_special = 2 if specials else 0
    real = [len(s) + n_special for s in seqs]
    target = max(real) if padding != "max_length" else max_length
    if multiple:
        target = -(-target // multiple) * multiple
    for seq, ids, mask, n in zip(seqs, enc.input_ids, enc.attention_mask, real, strict=True):
        assert len(ids) == len(mask) == max(n, target)  # padding never truncates
        assert sum(mask) == n
        assert mask == [1] * n + [0] * (len(mask) - n)
        assert [i for i, m in zip(ids, mask) if m == 0] == [PAD] * (len(ids) - n)
        core = [vocab_id(c) for c in seq]
        assert ids[:n] == ([CLS, *core, EOS] if specials else core)
    if all(len(ids) == len(enc.input_ids[0]) for ids in enc.input_ids):
        for kind, cls in (("np", np.ndarray), ("pt", torch.Tensor)):
            arr = TOK(
                seqs, padding=padding, max_length=max_length, pad_to_multiple_of=multiple,
                add_special_tokens=specials, return_tensors=kind,
            )  # fmt: skip
            assert isinstance(arr["input_ids"], cls) and arr["input_ids"].dtype in (
                np.int64, torch.int64,
            )  # fmt: skip
            assert arr["input_ids"].tolist() == enc.input_ids
            assert arr["attention_mask"].tolist() == enc.attention_mask


@given(st.lists(residues, min_size=1, max_size=5), st.integers(2, 12), st.booleans())
@example(["MKTAYI"], 2, True)
def test_truncation_keeps_special_tokens(seqs, max_length, pad):
    enc = TOK(seqs, truncation=True, max_length=max_length, padding="max_length" if pad else False)
    for seq, ids in zip(seqs, enc.input_ids, strict=True):
        kept = [vocab_id(c) for c in seq[: max_length - 2]]
        assert ids[: len(kept) + 2] == [CLS, *kept, EOS]
        assert len(ids) == (max_length if pad else len(kept) + 2)
    plain = TOK(seqs, truncation=True, max_length=max_length, add_special_tokens=False)
    assert plain.input_ids == [[vocab_id(c) for c in s[:max_length]] for s in seqs]


def test_truncation_defaults_follow_transformers():
    long = "MKTAYIAK"
    assert TOK(long, max_length=4).input_ids == [CLS, 20, 15, EOS]  # max_length alone truncates
    assert len(TOK(long, max_length=4, truncation=False).input_ids) == 10
    assert len(TOK([long], max_length=4, padding=True).input_ids[0]) == 10
    assert TOK(long, truncation=True).input_ids == TOK(long).input_ids  # no limit known
    limited = EsmTokenizer(model_max_length=5)
    assert limited(long, truncation=True).input_ids == [CLS, 20, 15, 11, EOS]
    assert limited([long, "A"], padding="max_length", truncation=True).input_ids[1] == [
        CLS, 5, EOS, PAD, PAD,
    ]  # fmt: skip


def test_single_string_shapes():
    enc = TOK("MK")
    assert enc.input_ids == [CLS, 20, 15, EOS] and enc.attention_mask == [1, 1, 1, 1]
    pt = TOK("MK", return_tensors="pt")
    assert pt.input_ids.shape == (1, 4) and pt.input_ids.dtype == torch.int64
    assert pt.to("cpu") is pt
    assert "attention_mask" not in TOK("MK", return_attention_mask=False)
    with pytest.raises(AttributeError):
        _ = enc.token_type_ids


def test_ragged_tensors_raise():
    with pytest.raises(ValueError, match="padding=True"):
        TOK(["MK", "MKT"], return_tensors="pt")
    with pytest.raises(ValueError, match="padding=True"):
        TOK(
            ["MK", "MKTAYI"],
            padding="max_length",
            max_length=4,
            truncation=False,
            return_tensors="np",
        )


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"padding": "left"}, ValueError, "padding='left'"),
        ({"truncation": "only_second"}, ValueError, "truncation='only_second'"),
        ({"return_tensors": "tf"}, ValueError, "return_tensors='tf'"),
        ({"padding": "max_length"}, ValueError, "max_length"),
        ({"truncation": True, "max_length": 1}, ValueError, "max_length=1"),
        ({"max_length": -1}, ValueError, "max_length=-1"),
        ({"max_length": 3.0}, TypeError, "max_length"),
        ({"pad_to_multiple_of": 0, "padding": True}, ValueError, "pad_to_multiple_of=0"),
        (
            {"padding": True, "truncation": True, "max_length": 10, "pad_to_multiple_of": 4},
            ValueError,
            "pad_to_multiple_of=4",
        ),
    ],
)
def test_option_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        TOK(["MK"], **kwargs)


@pytest.mark.parametrize("bad", [None, b"MK", 3, ["MK", 3], ("MK", None), np.array(["MK"])])
def test_non_str_input_is_type_error(bad):
    with pytest.raises(TypeError):
        TOK(bad)


# ----------------------------------------------------------------------------- special tokens


@given(st.lists(st.integers(4, 30), max_size=8), st.lists(st.integers(4, 30), max_size=8))
def test_special_tokens_helpers(ids0, ids1):
    assert TOK.build_inputs_with_special_tokens(ids0) == [CLS, *ids0, EOS]
    assert TOK.build_inputs_with_special_tokens(ids0, ids1) == [CLS, *ids0, EOS, *ids1, EOS]
    assert TOK.get_special_tokens_mask(ids0) == [1] + [0] * len(ids0) + [1]
    assert TOK.get_special_tokens_mask(ids0, ids1) == [1, *[0] * len(ids0), 1, *[0] * len(ids1), 1]
    assert TOK.create_token_type_ids_from_sequences(ids0) == [0] * (len(ids0) + 2)
    assert TOK.create_token_type_ids_from_sequences(ids0, ids1) == [0] * (len(ids0) + 2) + [1] * (
        len(ids1) + 1
    )
    full = [CLS, *ids0, PAD, MASK, UNK, 31, EOS]
    expected = [1, *[0] * len(ids0), 1, 1, 1, 0, 1]  # <null_1> (31) is not special
    assert TOK.get_special_tokens_mask(full, already_has_special_tokens=True) == expected
    with pytest.raises(ValueError, match="token_ids_1"):
        TOK.get_special_tokens_mask(ids0, ids1, already_has_special_tokens=True)


# ----------------------------------------------------------------------------- strict


@pytest.mark.parametrize(
    "text, match",
    [
        ("MKtA", r"'t' at position 2 is not .*upper-case"),
        ("<mask>AB*", r"'\*' at position 8 "),
        ("M K é", r"'é' at position 4 "),
        ("M<mask", r"'<' at position 1 "),
        ("MK\x01", r"'\\x01' at position 2 "),
    ],
)
def test_strict_names_character_and_position(text, match):
    with pytest.raises(ValueError, match=match):
        TOK(text, strict=True)
    assert TOK(text).input_ids.count(UNK) >= 1  # not strict: mapped to <unk>


def test_strict_batch_names_sequence():
    with pytest.raises(ValueError, match=r"'x' at position 1 of sequence 2"):
        TOK(["MK", "A<mask>", "Mx", "é"], strict=True)
    with pytest.raises(ValueError, match=r"'é' at position 0 of sequence 1"):
        TOK(["MK", "é", "Mx"], strict=True)
    valid = ["MK<mask>", " A C", "", "<null_1>.-"]
    assert TOK(valid, strict=True) == TOK(valid)


# ----------------------------------------------------------------------------- fast == slow


def _random_texts(n, seed=0):
    rng = random.Random(seed)
    alphabet = list(LETTERS) * 8 + SPECIALS + list(WS) + list(INVALID) + ["<mas", "k>"]
    texts = []
    for k in range(n):
        length = rng.randint(0, 60)
        if k % 3 == 0:  # plain residues: the all-fast batch layout
            texts.append("".join(rng.choices(LETTERS, k=length)))
        else:
            texts.append("".join(rng.choices(alphabet, k=length)))
    return texts


def test_vectorised_equals_slow_path():
    texts = _random_texts(2000)
    slow = [[CLS, *TOK._encode_slow(t), EOS] for t in texts]
    assert TOK(texts).input_ids == slow
    plain = texts[::3]  # only letters: one vectorised call, no scatter
    assert TOK(plain).input_ids == [slow[k] for k in range(0, 2000, 3)]
    arr = TOK(texts, padding=True, return_tensors="np")
    for k in range(0, 2000, 97):
        n = len(slow[k])
        assert arr["input_ids"][k, :n].tolist() == slow[k]
        assert (arr["input_ids"][k, n:] == PAD).all() and arr["attention_mask"][k].sum() == n


def test_many_multi_char_tokens_fall_back_to_slow_path(tmp_path):
    # More multi-character tokens than stand-in characters: those texts take the slow path.
    extra = [f"<t{i}>" for i in range(40)]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join([*ESM_VOCAB, *extra]))
    tok = EsmTokenizer.from_pretrained(path)
    assert tok.vocab_size == 73
    assert tok("A<t5>C<mask>x").input_ids == [CLS, 5, 38, 23, MASK, UNK, EOS]
    assert tok(["A<t39>", "AC"]).input_ids == [[CLS, 5, 72, EOS], [CLS, 5, 23, EOS]]


# ----------------------------------------------------------------------------- files


def test_vocab_save_load_round_trip(tmp_path):
    files = TOK.save_pretrained(tmp_path / "tok")
    vocab_text = (tmp_path / "tok" / "vocab.txt").read_text()
    assert vocab_text.split("\n") == list(ESM_VOCAB)
    assert any(f.endswith("tokenizer_config.json") for f in files)
    again = EsmTokenizer.from_pretrained(tmp_path / "tok")
    assert again.get_vocab() == TOK.get_vocab()
    (path,) = TOK.save_vocabulary(tmp_path, filename_prefix="esm2")
    assert path.endswith("esm2-vocab.txt")
    assert EsmTokenizer.from_pretrained(path).get_vocab() == TOK.get_vocab()


def test_vocab_file_order_defines_ids(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(reversed(ESM_VOCAB)) + "\n")
    tok = EsmTokenizer(path)
    assert tok.cls_token_id == 32 and tok.mask_token_id == 0
    assert tok("L").input_ids == [32, 28, 30]
    assert tok(["A", "<mask>"], padding=True).input_ids[0] == [32, 27, 30]


def test_model_max_length_from_config(tmp_path):
    EsmTokenizer(model_max_length=1024).save_pretrained(tmp_path)
    assert EsmTokenizer.from_pretrained(tmp_path).model_max_length == 1024
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"model_max_length": 1000000000000000019884624838656}))
    assert EsmTokenizer.from_pretrained(tmp_path).model_max_length is None


@pytest.mark.parametrize(
    "lines, match",
    [
        ([*ESM_VOCAB, "A"], "'A' on line 34 repeats line 6"),
        ([t for t in ESM_VOCAB if t != "<mask>"], "<mask>"),
        ([*ESM_VOCAB[:5], "", *ESM_VOCAB[5:]], "line 6"),
    ],
)
def test_bad_vocab_files(tmp_path, lines, match):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=match):
        EsmTokenizer(path)


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        EsmTokenizer.from_pretrained(tmp_path / "facebook" / "esm2_t6_8M_UR50D")
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        EsmTokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "module", [esmkernels.core.tokenization, esmkernels.core.tokenizer_encoding]
)
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
