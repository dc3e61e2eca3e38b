"""Known-broken Triton / numpy pairs for the interpreter (esmkernels.ops._compat): one line at
start instead of a failure in every interpreted test.

The boundary (Triton < 3.7 with numpy >= 2.4) was found by running a small kernel interpreted:
Triton 3.6.0 passes with numpy 2.3.5 and fails with 2.4.0, Triton 3.7.0 passes with 2.4.0.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from esmkernels.ops import _compat

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "triton, numpy",
    [("3.6.0", "2.4.0"), ("3.6.0", "2.5.2"), ("3.5.1", "2.4.6"), ("3.6.0+git1a2b", "2.4.0rc1")],
)
def test_known_broken_pairs_are_named_with_the_fix(triton, numpy):
    problem = _compat.interpreter_problem(triton, numpy)
    assert problem is not None
    assert "\n" not in problem
    assert f"Triton {triton}" in problem and f"numpy {numpy}" in problem
    assert "'numpy<2.4'" in problem and "'triton>=3.7'" in problem


@pytest.mark.parametrize(
    "triton, numpy",
    [
        ("3.6.0", "2.3.5"),  # the compat environment (make compat)
        ("3.7.0", "2.4.0"),  # the first Triton whose interpreter squeezes
        ("3.9.0", "2.4.6"),  # the pinned CPU environment (make test)
        ("3.9.0", "2.5.2"),
        ("3.6.0", "1.26.4"),
        (None, "2.4.0"),  # Triton absent (not Linux): nothing to interpret
        ("3.6.0", None),
    ],
)
def test_working_pairs_pass(triton, numpy):
    assert _compat.interpreter_problem(triton, numpy) is None


def test_unreadable_version_is_a_value_error():
    with pytest.raises(ValueError, match="'dev'"):
        _compat.parse_version("dev")


@pytest.fixture
def installed(monkeypatch):
    """Call with {package: version} to make the installed versions read so."""

    def fake(versions: dict) -> None:
        monkeypatch.setattr(_compat, "_installed", versions.get)
        _compat.installed_interpreter_problem.cache_clear()

    yield fake
    _compat.installed_interpreter_problem.cache_clear()


def test_installed_pair_is_read_from_package_metadata(monkeypatch):
    monkeypatch.setattr(_compat, "_installed", {"triton": "3.6.0", "numpy": "2.4.1"}.get)
    problem = _compat.installed_interpreter_problem()
    assert problem.startswith("Triton 3.6.0 with numpy 2.4.1 cannot run")
    monkeypatch.setattr(_compat, "_installed", {"triton": "3.6.0", "numpy": "2.3.5"}.get)
    assert _compat.installed_interpreter_problem() is None


def test_interpreted_op_call_is_refused_with_the_line(monkeypatch):
    """A forced "triton" call on CPU tensors (interpreted) stops before any kernel with the line;
    the torch path and "auto" never ask."""
    from esmkernels.ops import _dispatch, layer_norm

    problem = _compat.interpreter_problem("3.6.0", "2.5.2")
    monkeypatch.setattr(_compat, "INSTALLED_PROBLEM", problem)
    x, w = torch.randn(2, 8), torch.ones(8)
    with pytest.raises(ValueError) as err:
        layer_norm(x, w, w, backend="triton")
    assert problem in str(err.value) and "\n" not in str(err.value)
    assert _dispatch.choose("layer_norm", "torch", (x,), None) == "torch"
    assert _dispatch.choose("layer_norm", "auto", (x,), None) == "torch"
    torch.testing.assert_close(layer_norm(x, w, w, backend="torch"), layer_norm(x, w, w))


def test_this_environment_is_not_a_known_broken_pair():
    """Else every interpreted test of this run would fail (conftest stops the run first)."""
    assert _compat.installed_interpreter_problem() is None


def _run_pytest_with(versions: dict, interpret: str) -> subprocess.CompletedProcess:
    """pytest on one trivial test, in a subprocess whose installed versions read as `versions`."""
    code = textwrap.dedent(
        f"""
        import sys, pytest
        from esmkernels.ops import _compat
        _compat._installed = {versions!r}.get
        sys.exit(pytest.main(["-q", "-p", "no:cacheprovider",
                              "tests/test_compat.py::test_unreadable_version_is_a_value_error"]))
        """
    )
    env = {**__import__("os").environ, "TRITON_INTERPRET": interpret}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_test_session_stops_at_start_with_one_line():
    run = _run_pytest_with({"triton": "3.6.0", "numpy": "2.4.0"}, interpret="1")
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.stdout + run.stderr
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("ERROR: Triton 3.6.0 with numpy 2.4.0 cannot run the Triton")
    assert "numpy<2.4" in lines[0]


def test_compiled_runs_are_not_stopped():
    """TRITON_INTERPRET=0 (a GPU compiles the kernels): numpy's version does not matter."""
    run = _run_pytest_with({"triton": "3.6.0", "numpy": "2.4.0"}, interpret="0")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "1 passed" in run.stdout


@pytest.mark.parametrize(
    "torch, triton, expected",
    [
        ("2.13.0+cpu", "3.9.0", "the pinned CPU set (make test)"),
        ("2.11.0+cu130", "3.6.0", "the GPU image's set (make compat)"),
        ("2.11.0", "3.9.0", None),  # a mix of the two is neither
        ("2.12.1", "3.7.0", None),
        ("2.13.0", None, None),
    ],
)
def test_supported_environment_matches_torch_and_triton(torch, triton, expected):
    assert _compat.supported_environment({"torch": torch, "triton": triton}) == expected


def test_environment_line_names_the_match_and_an_interpreter_break(monkeypatch):
    image = {"python": "3.12.3", "torch": "2.11.0", "triton": "3.6.0", "numpy": "2.5.2"}
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    line = _compat.environment_line(image)
    assert line.startswith(
        "python 3.12.3, torch 2.11.0, triton 3.6.0, numpy 2.5.2: matches the GPU"
    )
    assert "interpreter" not in line  # compiled kernels: numpy does not matter
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "numpy 2.5.2 cannot run the Triton interpreter" in _compat.environment_line(image)
    other = _compat.environment_line({"torch": "2.12.0", "triton": "3.7.0", "numpy": "2.4.0"})
    assert "matches no supported set" in other and "torch 2.11, triton 3.6" in other
    assert "The interpreter works" in other


def _makefile_pins() -> dict[str, str]:
    text = (ROOT / "Makefile").read_text()
    return dict(re.findall(r"^(\w+_SPEC) \?= [\w-]+==(\S+)$", text, flags=re.M))


def test_makefile_pins_are_the_supported_sets():
    """`make test` and `make compat` install what SUPPORTED_ENVIRONMENTS names, and the compat
    numpy is the newest minor release the compat Triton's interpreter accepts."""
    pins = _makefile_pins()
    pinned = {"torch": pins["TORCH_SPEC"], "triton": pins["TRITON_SPEC"]}
    compat = {"torch": pins["COMPAT_TORCH_SPEC"], "triton": pins["COMPAT_TRITON_SPEC"]}
    assert _compat.supported_environment(pinned) == "the pinned CPU set (make test)"
    assert _compat.supported_environment(compat) == "the GPU image's set (make compat)"
    numpy = pins["COMPAT_NUMPY_SPEC"]
    assert _compat.interpreter_problem(compat["triton"], numpy) is None
    major, minor = _compat.parse_version(numpy)
    assert _compat.interpreter_problem(compat["triton"], f"{major}.{minor + 1}.0") is not None
