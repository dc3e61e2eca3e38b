"""The README's Python examples run as written, on tiny random checkpoints (paths and the device
substituted), so the documented API cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from esmkernels.reference import esm as ref
from esmkernels.tokenization import EsmTokenizer
from tests._configs import tiny_lm_config as lm_config
from tests.test_models_esmfold import tiny_model

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_examples_run(tmp_path):
    blocks = python_blocks()
    assert len(blocks) >= 2, "README lost its usage examples"
    lm_dir, fold_dir = tmp_path / "esm2", tmp_path / "esmfold"
    torch.manual_seed(0)
    ref.EsmForMaskedLM(lm_config()).save_pretrained(lm_dir)
    EsmTokenizer().save_pretrained(lm_dir)
    tiny_model().save_pretrained(fold_dir)
    for code in blocks:
        code = (
            code.replace('"path/to/esm2_t33_650M_UR50D"', repr(str(lm_dir)))
            .replace('"path/to/esmfold_v1"', repr(str(fold_dir)))
            .replace('"cuda"', '"cpu"')
        )
        scope: dict = {}
        exec(compile(code, str(README), "exec"), scope)  # noqa: S102 - our own README
        if "out" in scope and hasattr(scope["out"], "logits"):
            assert scope["out"].logits.shape[:2] == scope["batch"]["input_ids"].shape
            assert scope["scores"].shape == (2,)
            assert scope["contacts"].dim() == 3
        if "pdb" in scope:
            assert scope["pdb"].count(" CA ") == len("MKTVRQERLKSIVRILERSKEPVSGAQ")
