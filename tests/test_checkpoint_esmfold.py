"""fair-esm ESMFold `.pt` loading: the stem from its own checkpoint, omegaconf configs, refusals.

A tiny random ESMFold (`tests.test_esmfold_model.tiny_model`) is written the way fair-esm's
`esmfold_3B_v1.pt` is: `{"model": trunk + heads (no esm.*), "cfg": {"model": cfg}}`, with the
cfg as plain dicts or, when omegaconf is installed, as an omegaconf `DictConfig` written by a
subprocess (so this process never imports omegaconf, and the loader is proven not to need it).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from esmkernels.core.checkpoint import load_checkpoint
from esmkernels.core.configuration import EsmConfig
from esmkernels.core.convert_esmfold import convert_fair_esmfold
from esmkernels.core.fair_esm import torch_load_safe
from esmkernels.reference.esm import EsmModel
from esmkernels.reference.esmfold.modeling import EsmForProteinFolding
from tests.test_esmfold_model import STEM, _fair_esmfold_file, tiny_model
from tests.test_esmfold_trunk import one_torch_thread  # noqa: F401  (autouse fixture)

IDS = torch.tensor([[1, 2, 3, 4, 5, 19]])


def _positions(model: EsmForProteinFolding) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS, num_recycles=1).positions


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(model, fair-esm ESMFold .pt with plain cfg, stem as an HF directory)."""
    root = tmp_path_factory.mktemp("esmfold_ckpt")
    model = tiny_model()
    torch.save(_fair_esmfold_file(model), root / "esmfold_tiny.pt")
    stem = EsmModel(EsmConfig(**STEM), add_pooling_layer=False)  # the stem's own checkpoint
    stem.load_state_dict(model.esm.state_dict())
    stem.save_pretrained(root / "stem")
    return model, root / "esmfold_tiny.pt", root / "stem"


# ------------------------------------------------------------------------------------------------
# The stem from its own checkpoint
# ------------------------------------------------------------------------------------------------


def test_from_pretrained_with_stem_matches_the_original(files):
    model, pt, stem = files
    loaded = EsmForProteinFolding.from_pretrained(pt, stem=stem)
    want = model.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    torch.testing.assert_close(_positions(loaded), _positions(model), rtol=0, atol=0)

    config, state, fmt = load_checkpoint(pt, stem=stem)
    assert fmt == "fair-esm-esmfold" and config.is_folding_model
    assert (config.hidden_size, config.num_hidden_layers) == (STEM["hidden_size"], 2)
    # a loaded (config, state_dict) pair works as well as a path
    pair = load_checkpoint(stem)[:2]
    config2, state2, _ = load_checkpoint(pt, stem=pair)
    assert config2.to_dict() == config.to_dict() and state2.keys() == state.keys()


def test_without_stem_a_clear_error_unless_not_strict(files):
    model, pt, _ = files
    with pytest.raises(ValueError, match=r"trunk and heads only.*stem='esm2_t36_3B_UR50D\.pt'"):
        EsmForProteinFolding.from_pretrained(pt, config=model.config)
    config, state, fmt = load_checkpoint(pt)
    assert fmt == "fair-esm-esmfold" and not any(k.startswith("esm.") for k in state)
    # the stem's config defaults to ESM-2 3B, ESMFold v1's stem
    assert (config.hidden_size, config.num_hidden_layers) == (2560, 36)
    with pytest.warns(UserWarning, match=r"missing key\(s\): esm\."):
        loaded = EsmForProteinFolding.from_pretrained(pt, config=model.config, strict=False)
    for key, value in model.state_dict().items():
        if not key.startswith("esm."):
            assert torch.equal(loaded.state_dict()[key], value), key


def test_stem_that_does_not_fit_is_refused(files, tmp_path):
    _, pt, _ = files
    small = EsmModel(EsmConfig(**{**STEM, "num_hidden_layers": 1}))
    small.save_pretrained(tmp_path / "one_layer")
    with pytest.raises(ValueError, match=r"\(layers, hidden size\) = \(1, 32\).*\(2, 32\)"):
        EsmForProteinFolding.from_pretrained(pt, stem=tmp_path / "one_layer")
    with pytest.raises(ValueError, match="stem is an ESMFold checkpoint"):
        load_checkpoint(pt, stem=(tiny_model().config, {}))
    with pytest.raises(ValueError, match="stem is an ESMFold checkpoint"):
        load_checkpoint(pt, stem=pt)
    with pytest.raises(TypeError, match="stem must be an ESM-2 checkpoint path"):
        load_checkpoint(pt, stem=42)


def test_stem_for_other_formats_is_an_error(files):
    _, _, stem = files
    with pytest.raises(ValueError, match="stem= is only for fair-esm ESMFold .pt files"):
        load_checkpoint(stem, stem=stem)


def test_esmfold_heads_are_never_freshly_initialised(files, tmp_path):
    """Unlike a classifier on a language model, ESMFold's heads are pretrained: missing = error."""
    model, _, stem = files
    data = _fair_esmfold_file(model)
    data["model"] = {k: v for k, v in data["model"].items() if not k.startswith("lddt_head.")}
    torch.save(data, tmp_path / "no_lddt.pt")
    with pytest.raises(ValueError, match=r"missing key\(s\): lddt_head\.0\.bias"):
        EsmForProteinFolding.from_pretrained(tmp_path / "no_lddt.pt", stem=stem)


def test_file_without_the_af2_to_esm_buffer_loads(files, tmp_path):
    """The buffer is a constant of the vocabulary; a file may leave it out."""
    model, _, stem = files
    data = _fair_esmfold_file(model)
    del data["model"]["af2_to_esm"]
    torch.save(data, tmp_path / "no_buffer.pt")
    loaded = EsmForProteinFolding.from_pretrained(tmp_path / "no_buffer.pt", stem=stem)
    assert torch.equal(loaded.af2_to_esm, model.af2_to_esm)


def test_two_sources_for_one_stem_weight_are_refused(files):
    """Issue 22: stem keys with and without the `esm.` prefix, or a stem in the file and one
    given, map to the same `esm.*` weights; neither may silently win."""
    model, pt, stem = files
    config, weights = load_checkpoint(stem)[:2]
    both = dict(weights)
    key = "embeddings.word_embeddings.weight"
    both["esm." + key] = weights[key].clone()
    with pytest.raises(ValueError, match=f"two keys that map to 'esm.{key}'"):
        load_checkpoint(pt, stem=(config, both))
    data = _fair_esmfold_file(model)
    data["model"]["esm.embed_tokens.weight"] = torch.zeros(33, 32)
    with pytest.raises(ValueError, match="stores its own ESM-2 stem .* and a stem is given too"):
        convert_fair_esmfold(data, stem=(config, weights))


# ------------------------------------------------------------------------------------------------
# omegaconf configs (the published files), read without omegaconf
# ------------------------------------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import os, sys, types, torch
    from omegaconf import OmegaConf
    out = sys.argv[1]
    plain = torch.load(os.path.join(out, "plain.pt"), weights_only=True)
    cfg = OmegaConf.create({"model": plain["cfg"]["model"], "task": {"_name": "fold", "l": [1, 2.5]}})
    data = {"model": plain["model"], "cfg": cfg}
    torch.save(data, os.path.join(out, "omega.pt"))
    torch.save(data, os.path.join(out, "omega_legacy.pt"), _use_new_zipfile_serialization=False)

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + os.path.join(out, "pwned"),))

    for name, extra in (
        ("system", Payload()),
        ("namespace", types.SimpleNamespace(a=1)),
        ("bare_marker", dict),
    ):
        bad = {**data, "extra": extra}
        torch.save(bad, os.path.join(out, name + ".pt"))
        torch.save(bad, os.path.join(out, name + "_legacy.pt"), _use_new_zipfile_serialization=False)
    """
)


@pytest.fixture(scope="module")
def omega_files(files, tmp_path_factory):
    pytest.importorskip("omegaconf")
    model, _, stem = files
    out = tmp_path_factory.mktemp("omega")
    torch.save(_fair_esmfold_file(model), out / "plain.pt")
    subprocess.run([sys.executable, "-c", _WRITER, str(out)], check=True, timeout=120)
    return model, out, stem


@pytest.fixture
def no_omegaconf(monkeypatch):
    """Any `import omegaconf` in this process fails from here on."""
    for name in [m for m in sys.modules if m == "omegaconf" or m.startswith("omegaconf.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "omegaconf", None)


@pytest.mark.parametrize("name", ["omega.pt", "omega_legacy.pt"])
def test_omegaconf_file_loads_without_omegaconf(omega_files, no_omegaconf, name):
    model, out, stem = omega_files
    data = torch_load_safe(out / name)
    cfg = data["cfg"]
    assert type(cfg) is dict and type(cfg["model"]["trunk"]) is dict
    assert cfg["task"] == {"_name": "fold", "l": [1, 2.5]}
    assert cfg["model"]["trunk"]["structure_module"]["no_heads_ipa"] == (
        model.config.esmfold_config.trunk.structure_module.num_heads_ipa
    )

    loaded = EsmForProteinFolding.from_pretrained(out / name, stem=stem)
    fold, want = loaded.config.esmfold_config, model.config.esmfold_config
    assert fold.trunk.to_dict() == want.trunk.to_dict() and fold.esm_type == "esm2_3B"
    torch.testing.assert_close(_positions(loaded), _positions(model), rtol=0, atol=0)
    assert sys.modules["omegaconf"] is None  # the loader never imported it


@pytest.mark.parametrize("suffix", ["", "_legacy"])
def test_omegaconf_file_with_other_globals_is_refused(omega_files, no_omegaconf, suffix):
    _, out, _ = omega_files
    with pytest.raises(ValueError, match=r"refusing to load .*class (posix|os|nt)\.system"):
        torch_load_safe(out / f"system{suffix}.pt")
    with pytest.raises(ValueError, match=r"refusing to load .*class types\.SimpleNamespace"):
        torch_load_safe(out / f"namespace{suffix}.pt")
    # `dict` is allowed only as a type marker inside omegaconf metadata
    with pytest.raises(ValueError, match=r"builtins\.dict appears outside an omegaconf config"):
        torch_load_safe(out / f"bare_marker{suffix}.pt")
    assert not (Path(out) / "pwned").exists()
