"""HF-format checkpoints and `PreTrainedMixin`: round trips, key fitting, errors, security.

Uses the tiny stand-in classes of `tests/_ckpt_models.py` (HF key structure, no forward), so most
tests do not depend on the reference models; the fine-tuning start (a classifier from a masked-LM
checkpoint) uses the real reference classes. No network: Hub access is monkeypatched.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import pickle
import sys
import types

import pytest
import torch
from safetensors.torch import load_file, save_file

from esmkernels.core import checkpoint as ckpt
from esmkernels.core import hf_checkpoint, modeling_utils
from esmkernels.core.checkpoint import load_checkpoint
from esmkernels.core.configuration import EsmConfig
from esmkernels.core.hf_checkpoint import layer_inv_freq_key, save_checkpoint
from tests._ckpt_models import (
    TinyEsmForMaskedLM,
    TinyEsmModel,
    TinyEsmSharedRotary,
    randomize,
    tiny_config,
)
from tests.tolerances import MODEL_FP32

DECODER = "lm_head.decoder.weight"
WORDS = "esm.embeddings.word_embeddings.weight"


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(expected: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    got = model.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype, key
        assert torch.equal(got[key], value), key


@pytest.fixture
def mlm(tmp_path):
    """A randomized tiny MLM saved as an HF safetensors directory: (model state, directory)."""
    model = randomize(TinyEsmForMaskedLM(tiny_config()))
    model.save_pretrained(tmp_path / "mlm")
    return _state(model), tmp_path / "mlm"


# ------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------


def test_safetensors_round_trip_is_lossless_and_drops_tied_duplicate(mlm):
    state, directory = mlm
    stored = load_file(directory / "model.safetensors")
    assert DECODER not in stored  # tied duplicate dropped, like transformers
    assert json.loads((directory / "config.json").read_text())["architectures"] == [
        "TinyEsmForMaskedLM"
    ]
    model = TinyEsmForMaskedLM.from_pretrained(directory)
    _assert_same(state, model)
    assert model.lm_head.decoder.weight is model.esm.embeddings.word_embeddings.weight
    assert not model.training
    assert not list(directory.glob(".*.tmp"))


def test_bin_round_trip_replaces_an_older_safetensors_save(tmp_path):
    randomize(TinyEsmForMaskedLM(tiny_config()), seed=2).save_pretrained(tmp_path)
    model = randomize(TinyEsmForMaskedLM(tiny_config()), seed=1)
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "pytorch_model.bin").is_file()
    assert not (tmp_path / "model.safetensors").exists()  # would otherwise shadow the new file
    _, _, fmt = load_checkpoint(tmp_path)
    assert fmt == "hf-bin"
    _assert_same(_state(model), TinyEsmForMaskedLM.from_pretrained(tmp_path))


def _write_shards(directory, state, suffix):
    keys = sorted(state)
    halves = {f"model-0000{i + 1}-of-00002.{suffix}": keys[i::2] for i in range(2)}
    weight_map = {}
    for name, names in halves.items():
        part = {k: state[k].contiguous() for k in names}
        if suffix == "safetensors":
            save_file(part, str(directory / name), metadata={"format": "pt"})
        else:
            torch.save(part, directory / name)
        weight_map.update(dict.fromkeys(names, name))
    index = (
        "model.safetensors.index.json"
        if suffix == "safetensors"
        else "pytorch_model.bin.index.json"
    )
    (directory / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory / index


@pytest.mark.parametrize(
    "suffix,fmt", [("safetensors", "hf-safetensors-sharded"), ("bin", "hf-bin-sharded")]
)
def test_sharded_round_trip(tmp_path, mlm, suffix, fmt):
    state, directory = mlm
    stored = load_file(directory / "model.safetensors")
    tiny_config().save_pretrained(tmp_path)
    index = _write_shards(tmp_path, stored, suffix)
    for source in (tmp_path, index):
        _, sd, got_fmt = load_checkpoint(source)
        assert got_fmt == fmt
        assert set(sd) == set(stored)
        assert all(torch.equal(sd[k], stored[k]) for k in stored)
    _assert_same(state, TinyEsmForMaskedLM.from_pretrained(tmp_path))


def test_sharded_errors_name_the_shard(tmp_path, mlm):
    _, directory = mlm
    stored = load_file(directory / "model.safetensors")
    tiny_config().save_pretrained(tmp_path)
    index = _write_shards(tmp_path, stored, "safetensors")
    data = json.loads(index.read_text())

    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        load_checkpoint(tmp_path)

    data["weight_map"]["esm.extra.weight"] = "model-00001-of-00002.safetensors"
    data["weight_map"] = {
        k: v for k, v in data["weight_map"].items() if v == "model-00001-of-00002.safetensors"
    }
    index.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"lacks 1 key.*esm\.extra\.weight"):
        load_checkpoint(tmp_path)

    data["weight_map"] = {"esm.x": "../model.safetensors"}
    index.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="not a plain file name"):
        load_checkpoint(tmp_path)

    # An index listing no tensor at all would load as a model with no weights.
    data["weight_map"] = {}
    index.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="'weight_map' must be a non-empty object"):
        load_checkpoint(tmp_path)


def test_weights_file_path_and_bare_weights_need_config(tmp_path, mlm):
    state, directory = mlm
    _, _, fmt = load_checkpoint(directory / "model.safetensors")
    assert fmt == "hf-safetensors"
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "w.safetensors").write_bytes((directory / "model.safetensors").read_bytes())
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(bare / "w.safetensors")
    model = TinyEsmForMaskedLM.from_pretrained(bare / "w.safetensors", config=tiny_config())
    _assert_same(state, model)


# ------------------------------------------------------------------------------------------
# Key fitting: base prefix, rotary inv_freq layouts, transformers v5 names, tied weights
# ------------------------------------------------------------------------------------------


def test_base_checkpoint_into_head_and_head_into_base(tmp_path, mlm):
    state, directory = mlm
    base = TinyEsmModel.from_pretrained(directory)  # head keys dropped, prefix stripped
    expected = {k[len("esm.") :]: v for k, v in state.items() if k.startswith("esm.")}
    _assert_same(expected, base)

    base.save_pretrained(tmp_path / "base")
    assert all(not k.startswith("esm.") for k in load_file(tmp_path / "base/model.safetensors"))
    # A head the checkpoint lacks entirely is freshly initialised with a warning naming it,
    # strict or not (transformers does the same); the tied decoder comes from the embedding.
    with pytest.warns(UserWarning, match=r"5 weight\(s\) are newly initialised: lm_head\.bias"):
        head = TinyEsmForMaskedLM.from_pretrained(tmp_path / "base")
    for key, value in expected.items():
        assert torch.equal(head.state_dict()["esm." + key], value)
    assert torch.equal(head.lm_head.decoder.weight, expected["embeddings.word_embeddings.weight"])


def test_v5_file_layout_star_key_and_gamma_beta(tmp_path, mlm):
    state, directory = mlm
    stored = load_file(directory / "model.safetensors")
    inv = torch.tensor([1.0, 0.5, 0.25, 0.125]).half().float()
    v5 = {}
    for key, value in stored.items():
        if key.endswith("inv_freq"):
            continue
        if key.endswith("LayerNorm.weight"):
            key = key[: -len("weight")] + "gamma"
        elif key.endswith("LayerNorm.bias"):
            key = key[: -len("bias")] + "beta"
        v5[key] = value
    v5["esm.encoder.layer.*.attention.self.rotary_embeddings.inv_freq"] = inv
    v5dir = tmp_path / "v5"
    v5dir.mkdir()
    save_file(v5, str(v5dir / "model.safetensors"), metadata={"format": "pt"})
    tiny_config().save_pretrained(v5dir)

    _, loaded, _ = load_checkpoint(v5dir)
    assert set(loaded) == set(stored)  # per-layer inv_freq, LayerNorm.weight / .bias
    for key, value in loaded.items():
        assert torch.equal(value, inv if key.endswith("inv_freq") else stored[key]), key

    model = TinyEsmForMaskedLM.from_pretrained(v5dir)
    for i, layer in enumerate(model.esm.encoder.layer):
        assert torch.equal(layer.attention.self.rotary_embeddings.inv_freq, inv), i
        assert torch.equal(
            layer.LayerNorm.weight, stored[f"esm.encoder.layer.{i}.LayerNorm.weight"]
        )
        assert torch.equal(
            layer.attention.LayerNorm.bias,
            stored[f"esm.encoder.layer.{i}.attention.LayerNorm.bias"],
        )


def test_one_key_stored_twice_must_agree(tmp_path, mlm):
    """transformers v4 names (LayerNorm.gamma) next to v5 names (LayerNorm.weight) for the same
    parameter: equal tensors load, different ones are an error naming the key (never "the last
    one wins")."""
    _, directory = mlm
    stored = load_file(directory / "model.safetensors")
    key = "esm.encoder.layer.0.LayerNorm.weight"
    twice = dict(stored)
    twice[key[: -len("weight")] + "gamma"] = stored[key].clone()
    tiny_config().save_pretrained(tmp_path)
    save_file(twice, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    _, loaded, _ = load_checkpoint(tmp_path)
    assert torch.equal(loaded[key], stored[key])

    twice[key[: -len("weight")] + "gamma"] = stored[key] + 1
    save_file(twice, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"two different tensors for '{key}'"):
        load_checkpoint(tmp_path)


def test_model_level_inv_freq_class_loads_and_saves_per_layer(tmp_path):
    config = tiny_config()
    inv = (torch.arange(1, 5) / 7).half().float()
    per_layer = TinyEsmModel(config)
    for layer in per_layer.encoder.layer:
        layer.attention.self.rotary_embeddings.inv_freq.copy_(inv)
    per_layer.save_pretrained(tmp_path / "a")

    shared = TinyEsmSharedRotary.from_pretrained(tmp_path / "a")
    assert torch.equal(shared.rotary_embeddings.inv_freq, inv)
    shared.save_pretrained(tmp_path / "b")
    stored = load_file(tmp_path / "b/model.safetensors")
    for i in range(config.num_hidden_layers):
        assert torch.equal(stored[layer_inv_freq_key("", i)], inv)
    assert "rotary_embeddings.inv_freq" not in stored

    # per-layer values that differ cannot collapse into one buffer
    per_layer.encoder.layer[1].attention.self.rotary_embeddings.inv_freq.mul_(2)
    per_layer.save_pretrained(tmp_path / "c")
    with pytest.raises(ValueError, match="inv_freq differ"):
        TinyEsmSharedRotary.from_pretrained(tmp_path / "c")


def test_missing_inv_freq_is_recomputed_with_a_warning(tmp_path, mlm, caplog):
    _, directory = mlm
    stored = {
        k: v for k, v in load_file(directory / "model.safetensors").items() if "inv_freq" not in k
    }
    save_file(stored, str(directory / "model.safetensors"), metadata={"format": "pt"})
    with caplog.at_level(logging.WARNING, logger="esmkernels.core.modeling_utils"):
        model = TinyEsmForMaskedLM.from_pretrained(directory)
    assert "no rotary inv_freq" in caplog.text
    expected = 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8))
    assert torch.equal(
        model.esm.encoder.layer[0].attention.self.rotary_embeddings.inv_freq, expected
    )


def test_tied_target_stored_differently_warns_and_source_wins(tmp_path, mlm):
    _, directory = mlm
    stored = load_file(directory / "model.safetensors")
    stored[DECODER] = stored[WORDS] + 1
    save_file(stored, str(directory / "model.safetensors"), metadata={"format": "pt"})
    with pytest.warns(UserWarning, match="tie_word_embeddings"):
        model = TinyEsmForMaskedLM.from_pretrained(directory)
    assert torch.equal(model.lm_head.decoder.weight, stored[WORDS])

    untied = TinyEsmForMaskedLM.from_pretrained(directory, tie_word_embeddings=False)
    assert torch.equal(untied.lm_head.decoder.weight, stored[DECODER])
    assert untied.lm_head.decoder.weight is not untied.esm.embeddings.word_embeddings.weight


# ------------------------------------------------------------------------------------------
# Errors: shapes, missing / unexpected keys, overrides
# ------------------------------------------------------------------------------------------


def test_shape_mismatch_names_key_and_both_shapes(mlm):
    _, directory = mlm
    with pytest.raises(ValueError, match="config disagrees with the weights") as err:
        TinyEsmForMaskedLM.from_pretrained(directory, intermediate_size=48)
    assert (
        "esm.encoder.layer.0.intermediate.dense.weight: checkpoint (32, 16) vs model (48, 16)"
        in str(err.value)
    )
    with pytest.raises(ValueError, match="config disagrees"):  # strict=False does not excuse it
        TinyEsmForMaskedLM.from_pretrained(directory, intermediate_size=48, strict=False)


def test_unexpected_and_missing_keys(mlm, caplog):
    state, directory = mlm
    stored = load_file(directory / "model.safetensors")
    del stored["lm_head.dense.bias"]
    for i in range(25):
        stored[f"esm.adapter.{i:02d}.weight"] = torch.zeros(2)
    save_file(stored, str(directory / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError) as err:
        TinyEsmForMaskedLM.from_pretrained(directory)
    message = str(err.value)
    assert "1 missing key(s): lm_head.dense.bias" in message
    assert "25 unexpected key(s): esm.adapter.00.weight" in message
    assert "esm.adapter.19.weight, and 5 more" in message
    assert "esm.adapter.20.weight" not in message

    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match="unexpected key"):
        model = TinyEsmForMaskedLM.from_pretrained(directory, strict=False)
    assert "lm_head.dense.bias" in caplog.text
    for key, value in state.items():
        if key != "lm_head.dense.bias":
            assert torch.equal(model.state_dict()[key], value), key


def test_ignored_keys_pass_strict(tmp_path, mlm):
    state, directory = mlm
    stored = load_file(directory / "model.safetensors")
    stored["esm.pooler.dense.weight"] = torch.zeros(16, 16)
    stored["esm.embeddings.position_ids"] = torch.arange(10)[None]
    stored["esm.embeddings.position_embeddings.weight"] = torch.zeros(1026, 16)  # rotary class
    for key in [k for k in stored if "contact_head" in k]:
        del stored[key]  # ESM-1v ships without a contact head
    save_file(stored, str(directory / "model.safetensors"), metadata={"format": "pt"})
    model = TinyEsmForMaskedLM.from_pretrained(directory)
    assert torch.equal(model.esm.embeddings.word_embeddings.weight, state[WORDS])


def test_config_overrides(mlm):
    _, directory = mlm
    model = TinyEsmForMaskedLM.from_pretrained(directory, token_dropout=False, num_labels=3)
    assert model.config.token_dropout is False and model.config.num_labels == 3
    with pytest.raises(TypeError, match="hidden_sizee"):
        TinyEsmForMaskedLM.from_pretrained(directory, hidden_sizee=8)
    with pytest.raises(TypeError, match="config must be a EsmConfig"):
        TinyEsmForMaskedLM.from_pretrained(directory, config={"hidden_size": 16})


def test_dtype_casts_parameters_but_keeps_inv_freq_fp32(mlm):
    state, directory = mlm
    model = TinyEsmForMaskedLM.from_pretrained(directory, dtype="bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    inv = model.esm.encoder.layer[1].attention.self.rotary_embeddings.inv_freq
    assert inv.dtype == torch.float32
    assert torch.equal(inv, state["esm.encoder.layer.1.attention.self.rotary_embeddings.inv_freq"])
    assert torch.equal(model.lm_head.dense.weight, state["lm_head.dense.weight"].bfloat16())
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        TinyEsmForMaskedLM.from_pretrained(directory, dtype="float8")


def test_dtype_auto_uses_the_stored_dtype(tmp_path):
    model = randomize(TinyEsmForMaskedLM(tiny_config())).to_device_dtype(dtype=torch.float16)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "float16"
    stored = load_file(tmp_path / "model.safetensors")
    assert stored[WORDS].dtype == torch.float16
    assert (
        stored["esm.encoder.layer.0.attention.self.rotary_embeddings.inv_freq"].dtype
        == torch.float32
    )
    loaded = TinyEsmForMaskedLM.from_pretrained(tmp_path, dtype="auto")
    assert loaded.lm_head.bias.dtype == torch.float16
    assert TinyEsmForMaskedLM.from_pretrained(tmp_path).lm_head.bias.dtype == torch.float32


# ------------------------------------------------------------------------------------------
# Broken inputs
# ------------------------------------------------------------------------------------------


def test_corrupt_and_truncated_safetensors(mlm):
    _, directory = mlm
    file = directory / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match=r"model\.safetensors is not a readable safetensors"):
        load_checkpoint(directory)
    file.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        TinyEsmForMaskedLM.from_pretrained(directory)


def test_truncated_bin(tmp_path):
    TinyEsmModel(tiny_config()).save_pretrained(tmp_path, safe_serialization=False)
    file = tmp_path / "pytorch_model.bin"
    file.write_bytes(file.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"pytorch_model\.bin is not a readable torch checkpoint"):
        load_checkpoint(tmp_path)


def test_missing_paths_and_directories_without_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(
        FileNotFoundError, match="looked for model.safetensors, model.safetensors.index.json"
    ):
        load_checkpoint(tmp_path)
    (tmp_path / "esm.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"found \['esm.pt'\]"):
        load_checkpoint(tmp_path)


def test_config_that_is_not_esm(tmp_path, mlm):
    _, directory = mlm
    data = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**data, "model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type='bert'.*not an ESM checkpoint"):
        load_checkpoint(directory)
    (directory / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load_checkpoint(directory)


def test_unknown_file_format_lists_what_was_looked_for(tmp_path):
    file = tmp_path / "weights.h5"
    file.write_bytes(b"\x89HDF")
    with pytest.raises(
        ValueError, match=r"unknown checkpoint format.*weights\.h5.*model\.safetensors"
    ):
        load_checkpoint(file)


class _Payload:
    """Unpickling this runs `os.system`; weights_only must refuse it before anything runs."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # plain pickle.dump file
def test_pickles_with_disallowed_globals_are_refused(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    marker = tmp_path / "pwned"
    with open(tmp_path / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"esm.embeddings.word_embeddings.weight": _Payload(str(marker))}, fh)
    with pytest.raises(ValueError, match="refusing to load .*pytorch_model.bin"):
        load_checkpoint(tmp_path)
    torch.save({WORDS: _Payload(str(marker))}, tmp_path / "pytorch_model.bin")  # zip format
    with pytest.raises(ValueError, match="refusing to load .*pytorch_model.bin.*(posix|os).system"):
        load_checkpoint(tmp_path)
    assert not marker.exists()

    torch.save(
        {"model": {}, "cfg": {"model": types.SimpleNamespace(encoder_layers=1)}}, tmp_path / "x.pt"
    )
    with pytest.raises(ValueError, match="refusing to load .*class types.SimpleNamespace"):
        load_checkpoint(tmp_path / "x.pt")


# ------------------------------------------------------------------------------------------
# Hub ids (monkeypatched; never the network)
# ------------------------------------------------------------------------------------------


def test_hub_id_without_huggingface_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes the import fail
    with pytest.raises(FileNotFoundError, match="huggingface_hub is not installed"):
        load_checkpoint("facebook/esm2_t6_8M_UR50D")


def _fake_hub(monkeypatch, snapshot_download):
    fake = types.ModuleType("huggingface_hub")
    fake.snapshot_download = snapshot_download
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)


def test_hub_id_offline_gives_a_clear_error(monkeypatch):
    def offline(repo_id, **kwargs):
        raise ConnectionError("Max retries exceeded")

    _fake_hub(monkeypatch, offline)
    with pytest.raises(
        OSError,
        match=r"could not download 'facebook/esm2_t6_8M_UR50D': offline\? pass a local path",
    ):
        TinyEsmForMaskedLM.from_pretrained("facebook/esm2_t6_8M_UR50D")


def test_hub_id_downloads_through_snapshot_download(monkeypatch, mlm):
    state, directory = mlm
    calls = []

    def download(repo_id, *, revision, cache_dir, allow_patterns):
        calls.append((repo_id, revision, allow_patterns))
        return str(directory)

    _fake_hub(monkeypatch, download)
    model = TinyEsmForMaskedLM.from_pretrained("org/tiny-esm", revision="v1")
    _assert_same(state, model)
    assert calls[0][:2] == ("org/tiny-esm", "v1") and "model.safetensors" in calls[0][2]


def test_local_looking_paths_never_reach_the_hub(monkeypatch, tmp_path):
    def boom(*args, **kwargs):
        raise AssertionError("hub touched")

    _fake_hub(monkeypatch, boom)
    for missing in ("./org/name", str(tmp_path / "org/name"), "name", "a/b/c", "org/../x"):
        with pytest.raises(FileNotFoundError, match="no checkpoint at"):
            load_checkpoint(missing)


@pytest.mark.parametrize("module", [ckpt, hf_checkpoint, modeling_utils])
def test_import_touches_neither_the_hub_nor_the_peers(module):
    # Static check of module-level imports: network and peer packages are imported lazily only.
    tree = ast.parse(open(module.__file__).read())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module.split(".")[0])
    assert not top & {"huggingface_hub", "transformers", "esm", "requests", "httpx"}
    assert top <= {
        "__future__",
        "argparse",
        "copy",
        "json",
        "logging",
        "os",
        "pickle",
        "re",
        "uuid",
        "warnings",
        "zipfile",
        "collections",
        "pathlib",
        "typing",
        "torch",
        "esmkernels",
    }


# ------------------------------------------------------------------------------------------
# Saving: atomic writes; module helpers
# ------------------------------------------------------------------------------------------


def test_crash_while_saving_keeps_the_previous_file(tmp_path, monkeypatch, mlm):
    state, directory = mlm
    before = (directory / "model.safetensors").read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", crash)
    model = randomize(TinyEsmForMaskedLM(tiny_config()), seed=5)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(directory)
    assert (directory / "model.safetensors").read_bytes() == before
    assert not list(directory.glob(".*.tmp"))
    _assert_same(state, TinyEsmForMaskedLM.from_pretrained(directory))


def test_save_checkpoint_copies_shared_and_non_contiguous_tensors(tmp_path):
    config = tiny_config()
    _, sd, _ = load_checkpoint(_saved(tmp_path / "src", config))
    sd["lm_head.dense.weight"] = sd["lm_head.dense.weight"].t().contiguous().t()  # non-contiguous
    sd["lm_head.extra"] = sd[WORDS]  # same storage as another entry
    save_checkpoint(tmp_path / "dst", config, sd)
    stored = load_file(tmp_path / "dst/model.safetensors")
    assert torch.equal(stored["lm_head.dense.weight"], sd["lm_head.dense.weight"])
    assert torch.equal(stored["lm_head.extra"], sd[WORDS])


def _saved(directory, config):
    randomize(TinyEsmForMaskedLM(config)).save_pretrained(directory)
    return directory


def test_num_parameters_counts_tied_once_and_gradient_checkpointing_flags():
    model = TinyEsmForMaskedLM(tiny_config())
    total = sum(p.numel() for p in model.parameters())
    assert model.num_parameters() == total
    by_name = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert by_name - total == 33 * 16  # the decoder shares the embedding
    assert model.num_parameters(exclude_embeddings=True) == total - 33 * 16
    model.lm_head.bias.requires_grad_(False)
    assert model.num_parameters(only_trainable=True) == total - 33

    assert not model.is_gradient_checkpointing
    model.gradient_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.esm.encoder.layer)
    model.gradient_checkpointing_disable()
    assert not any(layer.gradient_checkpointing for layer in model.esm.encoder.layer)


def test_fresh_model_is_tied_and_untied_when_configured():
    tied = TinyEsmForMaskedLM(tiny_config())
    assert tied.lm_head.decoder.weight is tied.esm.embeddings.word_embeddings.weight
    untied = TinyEsmForMaskedLM(tiny_config(tie_word_embeddings=False))
    assert untied.lm_head.decoder.weight is not untied.esm.embeddings.word_embeddings.weight


# ------------------------------------------------------------------------------------------
# transformers peer: what we save loads there, what it saves loads here
# ------------------------------------------------------------------------------------------


@pytest.mark.peer
def test_transformers_loads_what_we_save(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = randomize(TinyEsmForMaskedLM(tiny_config()))
    inv = torch.tensor([1.0, 0.3, 0.1, 0.03]).half().float()
    for layer in model.esm.encoder.layer:  # transformers keeps one shared buffer
        layer.attention.self.rotary_embeddings.inv_freq.copy_(inv)
    model.save_pretrained(tmp_path)
    hf, info = transformers.EsmForMaskedLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ours = model.state_dict()
    hf_state = hf.state_dict()
    for key, value in hf_state.items():
        if key == "esm.rotary_embeddings.inv_freq":
            assert torch.equal(value, inv)
        else:
            assert torch.equal(value, ours[key]), key
    assert (
        hf.lm_head.decoder.weight.data_ptr() == hf.esm.embeddings.word_embeddings.weight.data_ptr()
    )


@pytest.mark.peer
@pytest.mark.parametrize("head", [True, False])
def test_we_load_what_transformers_saves(tmp_path, head):
    transformers = pytest.importorskip("transformers")
    config = transformers.EsmConfig(**tiny_config().to_dict())
    torch.manual_seed(0)
    cls = transformers.EsmForMaskedLM if head else transformers.EsmModel
    hf = cls(config)
    rotary = hf.esm.rotary_embeddings if head else hf.rotary_embeddings
    with torch.no_grad():  # fp16-rounded values, as in trained ESM-2 files
        rotary.inv_freq.copy_(torch.tensor([1.0, 0.2, 0.04, 0.008]).half().float())
    hf.save_pretrained(tmp_path)
    ours = (TinyEsmForMaskedLM if head else TinyEsmModel).from_pretrained(tmp_path)
    prefix = "esm." if head else ""
    inv = hf.state_dict()[prefix + "rotary_embeddings.inv_freq"]
    got = ours.state_dict()
    for key, value in hf.state_dict().items():
        if key.endswith("rotary_embeddings.inv_freq"):
            for i in range(2):
                assert torch.equal(got[layer_inv_freq_key(prefix, i)], inv)
        elif "pooler" not in key:
            assert torch.equal(got[key], value), key


def test_load_checkpoint_rejects_non_config():
    with pytest.raises(TypeError, match="EsmConfig"):
        load_checkpoint("x", config={"a": 1})  # type: ignore[arg-type]
    assert isinstance(tiny_config(), EsmConfig)


# ------------------------------------------------------------------------------------------
# Fine-tuning start: task heads from a masked-LM checkpoint, with the reference classes
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ref_mlm(tmp_path_factory):
    """A randomized reference EsmForMaskedLM saved as an HF directory: (state, directory)."""
    from esmkernels.reference import esm as ref

    model = randomize(ref.EsmForMaskedLM(tiny_config()))
    directory = tmp_path_factory.mktemp("ref_mlm")
    model.save_pretrained(directory)
    return _state(model), directory


@pytest.mark.parametrize(
    "name, head", [("EsmForSequenceClassification", "classifier.dense.weight"), ("EsmForTokenClassification", "classifier.weight")]
)  # fmt: skip
def test_classifier_from_masked_lm_checkpoint_loads_strictly(ref_mlm, caplog, name, head):
    from esmkernels.reference import esm as ref

    state, directory = ref_mlm
    cls = getattr(ref, name)
    with caplog.at_level(logging.INFO), pytest.warns(UserWarning, match="newly initialised") as rec:
        model = cls.from_pretrained(directory, num_labels=3)  # strict by default
    message = str(rec[0].message)
    assert head in message and "esm." not in message and "lm_head" not in message
    assert "ignoring" in caplog.text and "lm_head.dense.weight" in caplog.text
    assert model.config.num_labels == 3
    got = model.state_dict()
    for key, value in state.items():
        if key.startswith("esm.") and "pooler" not in key:
            assert torch.equal(got[key], value), key
    with torch.no_grad():
        logits = model(torch.tensor([[0, 5, 6, 7, 2]])).logits
    assert logits.shape[-1] == 3 and torch.isfinite(logits).all()


def test_partial_heads_and_missing_base_weights_stay_errors(ref_mlm, tmp_path):
    from esmkernels.reference import esm as ref

    _, directory = ref_mlm
    clf = randomize(ref.EsmForSequenceClassification(tiny_config(num_labels=3)))
    clf.save_pretrained(tmp_path / "clf")
    stored = load_file(tmp_path / "clf/model.safetensors")
    del stored["classifier.out_proj.weight"]  # half a head: a broken file, not a fresh start
    save_file(stored, str(tmp_path / "clf/model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"1 missing key\(s\): classifier\.out_proj\.weight"):
        ref.EsmForSequenceClassification.from_pretrained(tmp_path / "clf")

    stored = load_file(directory / "model.safetensors")
    del stored["esm.encoder.layer.0.output.dense.weight"]
    save_file(stored, str(tmp_path / "mlm.safetensors"), metadata={"format": "pt"})
    with (
        pytest.warns(UserWarning, match="newly initialised"),  # the head is fresh, as before
        pytest.raises(ValueError, match=r"missing key\(s\): esm\.encoder\.layer\.0\.output"),
    ):
        ref.EsmForSequenceClassification.from_pretrained(
            tmp_path / "mlm.safetensors", config=tiny_config(), num_labels=3
        )


@pytest.mark.peer
@pytest.mark.parametrize("name", ["EsmForSequenceClassification", "EsmForTokenClassification"])
def test_classifier_from_transformers_masked_lm_matches_transformers(tmp_path, name):
    """transformers' MLM checkpoint -> our classifier strictly; same logits as transformers'
    classifier from the same file once the (fresh, random) head weights are shared."""
    transformers = pytest.importorskip("transformers")
    from esmkernels.reference import esm as ref

    torch.manual_seed(0)
    hf_mlm = transformers.EsmForMaskedLM(transformers.EsmConfig(**tiny_config().to_dict()))
    with torch.no_grad():
        for p in hf_mlm.parameters():  # transformers' init leaves biases zero: make them count
            p.add_(0.1 * torch.randn_like(p))
    hf_mlm.save_pretrained(tmp_path)
    hf = getattr(transformers, name).from_pretrained(tmp_path, num_labels=3).eval()
    with pytest.warns(UserWarning, match="newly initialised: classifier"):
        ours = getattr(ref, name).from_pretrained(tmp_path, num_labels=3)
    head = {k: v for k, v in hf.state_dict().items() if k.startswith("classifier.")}
    assert head and ours.load_state_dict(head, strict=False).unexpected_keys == []
    ids = torch.tensor([[0, 5, 6, 7, 8, 2, 1], [0, 9, 10, 2, 1, 1, 1]])
    mask = (ids != 1).long()
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want, **MODEL_FP32)


@pytest.mark.parametrize("spec", ["fair/nope.pt", "org/model.safetensors", "a/b/c", "../x/y"])
def test_a_missing_file_path_is_never_sent_to_the_hub(spec, monkeypatch, tmp_path):
    """The API follows the CLI's rule: only a plain `org/name` may be downloaded (issue 18)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ckpt, "_download", lambda *a, **k: pytest.fail(f"download of {spec}"))
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        ckpt.resolve_path(spec)
    assert ckpt.is_hub_id("facebook/esm2_t6_8M_UR50D") and not ckpt.is_hub_id(spec)
