"""`esmkernels convert`: fair-esm `.pt` files (ESM-2, ESM-1b, ESMFold with its stem) become HF
directories that esmkernels and transformers load to the same numbers; the checkpoint readers
import each other in one direction only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from esmkernels.core.configuration import EsmConfig
from esmkernels.reference.esm import EsmForMaskedLM, EsmModel
from esmkernels.reference.esmfold.modeling import EsmForProteinFolding
from tests._cli import run
from tests.test_checkpoint_fairesm import _esm1b_file, _esm2_file, _hand_built
from tests.test_esmfold_model import STEM, _fair_esmfold_file, tiny_model

ROOT = Path(__file__).resolve().parents[1]
IDS = torch.tensor([[0, 5, 6, 7, 8, 9, 10, 2]])


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("kind", ["esm2", "esm1b"])
def test_language_model_round_trip(kind, tmp_path, capsys):
    raw, _ = _hand_built(kind, ffn=64 if kind == "esm2" else 24)
    for key in raw:  # the standard rotary frequencies (transformers recomputes them)
        if key.endswith("inv_freq"):
            dim = 2 * raw[key].numel()
            raw[key] = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    pt = (_esm2_file if kind == "esm2" else _esm1b_file)(tmp_path / f"{kind}_tiny.pt", raw)
    out = tmp_path / "hf"
    assert run("convert", pt, out) == 0
    assert "EsmForMaskedLM" in capsys.readouterr().err
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "vocab.txt"}
    direct = logits(EsmForMaskedLM.from_pretrained(pt))
    converted = EsmForMaskedLM.from_pretrained(out)
    assert converted.config.architectures == ["EsmForMaskedLM"]
    torch.testing.assert_close(logits(converted), direct, rtol=0, atol=0)
    transformers = pytest.importorskip("transformers")
    peer = transformers.EsmForMaskedLM.from_pretrained(out).eval()
    with torch.no_grad():
        theirs = peer(input_ids=IDS).logits
    torch.testing.assert_close(theirs, direct, atol=2e-5, rtol=2e-5)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok("MKT")["input_ids"] == [0, 20, 15, 11, 2]


def test_esmfold_with_its_stem(tmp_path, capsys):
    model = tiny_model()
    pt = tmp_path / "esmfold_tiny.pt"
    torch.save(_fair_esmfold_file(model), pt)
    stem = EsmModel(EsmConfig(**STEM), add_pooling_layer=False)
    stem.load_state_dict(model.esm.state_dict())
    stem.save_pretrained(tmp_path / "stem")
    assert run("convert", pt, tmp_path / "no_stem") == 2
    assert "pass --stem" in capsys.readouterr().err
    out = tmp_path / "hf"
    assert run("convert", pt, out, "--stem", tmp_path / "stem") == 0
    loaded = EsmForProteinFolding.from_pretrained(out)
    assert loaded.config.architectures == ["EsmForProteinFolding"]
    with torch.no_grad():
        want = model.infer("MKTAYIAK", num_recycles=1).positions
        got = loaded.infer("MKTAYIAK", num_recycles=1).positions
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert run("convert", pt, out, "--stem", tmp_path / "stem") == 2  # will not overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert run("convert", pt, out, "--stem", tmp_path / "stem", "--overwrite") == 0
    assert run("convert", tmp_path / "missing.pt", tmp_path / "x") == 2


def _imports(name: str) -> set[str]:
    tree = ast.parse((ROOT / "esmkernels" / "core" / f"{name}.py").read_text())
    found = set()
    for node in ast.walk(tree):  # function-level imports count too
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def test_checkpoint_readers_import_in_one_direction():
    assert "esmkernels.core.convert_esmfold" in _imports("checkpoint")
    assert "esmkernels.core.checkpoint" not in _imports("convert_esmfold")
    assert not {"esmkernels.core.checkpoint", "esmkernels.core.convert_esmfold"} & _imports(
        "fair_esm"
    )
