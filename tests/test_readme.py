"""The examples of the README and of every page of docs/ run as written, in order, on tiny random
checkpoints: Python blocks (paths and the device substituted) and every `esmkernels ...` line of
the bash blocks (model names substituted), each document in a fresh working directory, so the
documented API and command line cannot drift from the code.
`make` lines are the Makefile's; the `torchrun` lines are run by tests/test_cli_torchrun.py."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from esmkernels.cli import main
from esmkernels.jobs.fasta import write_fasta
from tests._cli import fold_checkpoint, lm_checkpoint
from tests.test_checkpoint_fairesm import _esm2_file, _hand_built

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))


def code_blocks(document: Path = README) -> list[tuple[str, str]]:
    return re.findall(r"```(python|bash)\n(.*?)```", document.read_text(), flags=re.S)


def shell_commands(block: str) -> list[list[str]]:
    text = block.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in text.splitlines() if line.strip()]


def test_readme_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 200, "the README is the front door: at most 200 lines"
    blocks = code_blocks()
    assert sum(lang == "python" for lang, _ in blocks) >= 3, "README lost its usage examples"
    setup = next(code for lang, code in blocks if lang == "bash" and "make test" in code)
    assert setup.splitlines()[0].startswith("make demo")  # the main job comes first
    for link in re.findall(r"\]\(((?:docs|bench)/[^)#]+)\)", text):
        assert (ROOT / link).exists(), f"README links to a missing {link}"
    assert "ARCHITECTURE.md" in text


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("checkpoints")
    return lm_checkpoint(tmp, seed=0), lm_checkpoint(tmp, seed=1), fold_checkpoint(tmp)


RAN: set[str] = set()


@pytest.mark.parametrize("document", [README, *DOCS], ids=lambda p: p.name)
def test_documented_examples_run(document, checkpoints, tmp_path, monkeypatch):
    blocks = code_blocks(document)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    lm, lm2, fold = checkpoints
    models = {
        "facebook/esm2_t33_650M_UR50D": lm,
        "facebook/esm1v_t33_650M_UR90S_1": lm,
        "facebook/esm1v_t33_650M_UR90S_2": lm2,
        "facebook/esmfold_v1": fold,
    }
    write_fasta(
        [("sp|P69905|HBA_HUMAN hemoglobin alpha", "MVLSPADKTNVKAAWGKV"), ("p2", "MKTAYIAKQR")],
        "proteins.fasta",
    )
    write_fasta([("a", "MKTAYIAK"), ("b", "MVLSPADK"), ("c", "GGAAKK")], "proteome.fasta")
    Path("dms.csv").write_text("mutant,DMS_score\nK2A,0.1\nT3G:A4C,-0.4\n")
    raw, _ = _hand_built("esm2", ffn=64)
    _esm2_file("esm2_t33_650M_UR50D.pt", raw)

    ran: list[str] = []
    for lang, code in blocks:
        if lang == "bash":
            for argv in shell_commands(code):
                if argv[0] in ("make", "torchrun"):
                    continue
                assert argv[0] == "esmkernels", argv
                argv = [models.get(a, a) for a in argv[1:]]
                assert main([str(a) for a in argv]) == 0, argv
                ran.append(argv[0])
            continue
        code = (
            code.replace('"path/to/esm2_t33_650M_UR50D"', repr(str(lm)))
            .replace('"path/to/esmfold_v1"', repr(str(fold)))
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
        if "store" in scope:
            assert scope["X"].shape == (2, 32) and scope["ids"][0] == "sp|P69905|HBA_HUMAN"
            assert scope["record"]["mean_representations"][2].shape == (32,)
    RAN.update(ran)
    if "fold" in ran:
        assert (work / "structures" / "summary.tsv").is_file()
    if "score" in ran:
        assert (work / "scores.csv").is_file()
    if "convert" in ran:
        assert (work / "esm2_t33_650M_UR50D" / "model.safetensors").is_file()


def test_every_command_is_documented_with_a_running_example():
    """Runs after the documents (file order): the main commands appear in some example."""
    if len(RAN) == 0:
        pytest.skip("the document examples did not run in this session (-k / -x)")
    assert {"embed", "fold", "score", "convert"} <= RAN
