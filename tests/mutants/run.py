"""`make mutants`: apply each mutant of `tests/mutants/mutants.py` to a scratch copy of the tree,
one at a time, run the tests it names fail-fast, and report the kill rate and the survivors.

    python -m tests.mutants.run                 # all mutants
    python -m tests.mutants.run ax- rot-dq      # mutants whose name starts with these prefixes
    python -m tests.mutants.run --list          # names, kinds and files
    python -m tests.mutants.run --tests-from REV   # the test suite as of a git revision

The working tree is never modified. The scratch copy holds the tracked and untracked
(not ignored) files of this checkout; `esmkernels/{ops,models,reference}` are symlinked there to
the copy's `ops/`, `models/` and `reference/`, so the copy imports its own (mutated) code ahead
of any editable install, and `tests/conftest.py`'s tree guard accepts it. Bytecode is not
written, so a restored file can never be shadowed by a mutant's stale `.pyc`.

Outcome per mutant: killed (a test failed; the first failure is named), survived (every
selected test passed), timeout (counted as killed, as mutation tools do), error (pytest could
not run the tests, e.g. none collected: not counted as killed; a mutant that breaks an import is
killed by the collection error), stale (the snippet is gone:
not counted; fix the list). Exit status 0 when the kill rate reaches --target (default 95%).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.mutants.mutants import MUTANTS, Mutant  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
LINKS = {
    "ops": "ops",
    "models": "models",
    "reference": "reference",
}  # esmkernels/<name> -> ../<dir>


def scratch_copy(dest: Path, tests_from: str | None) -> None:
    """Copy the checkout's tracked and untracked (not ignored) files to dest."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for rel in filter(None, listed):
        src = ROOT / rel
        if tests_from is not None and rel.startswith("tests/"):
            continue
        if src.is_file() and not src.is_symlink():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    if tests_from is not None:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", tests_from, "tests"],
            cwd=ROOT, check=True, capture_output=True,
        ).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    for name, target in LINKS.items():
        link = dest / "esmkernels" / name
        if link.exists() or link.is_symlink():
            raise SystemExit(f"scratch copy already has {link}: cannot link the layer there")
        link.symlink_to(Path("..") / target, target_is_directory=True)


def exists(tree: Path, test: str) -> bool:
    """A test file, or a `file::function` node whose function the file defines."""
    path, _, node = test.partition("::")
    if not (tree / path).is_file():
        return False
    return not node or f"def {node.split('[')[0]}(" in (tree / path).read_text()


def run_stages(tree: Path, tests: list[str], timeout: float) -> tuple[str, str, float]:
    """The named test functions first (the likely killers), then the whole files."""
    nodes = [t for t in tests if "::" in t]
    files = list(dict.fromkeys(t.partition("::")[0] for t in tests))
    spent = 0.0
    if nodes:
        outcome, detail, spent = run_tests(tree, nodes, timeout)
        if outcome != "survived":
            return outcome, detail, spent
    outcome, detail, dt = run_tests(tree, files, max(1.0, timeout - spent))
    return outcome, detail, spent + dt


def apply(m: Mutant, tree: Path) -> tuple[str, str] | None:
    """(original text, mutated text) of m's file, or None when the snippet is stale."""
    path = tree / m.path
    if not path.is_file():
        return None
    text = path.read_text()
    count = text.count(m.old)
    if count == 0 or (m.nth is None and count > 1) or (m.nth is not None and m.nth >= count):
        return None
    start = -1
    for _ in range((m.nth or 0) + 1):
        start = text.index(m.old, start + 1)
    mutated = text[:start] + m.new + text[start + len(m.old) :]
    compile(mutated, str(path), "exec")  # a mutant must be valid Python: no syntax-error kills
    return text, mutated


def pytest_command(tests: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "pytest", "-x", "-q", "-rf", "-p", "no:cacheprovider",
        "-m", "not slow and not gpu", "--no-header", *tests,
    ]  # fmt: skip


def run_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(TRITON_INTERPRET="1", PYTHONDONTWRITEBYTECODE="1", ESMKERNELS_DEBUG_POISON="1")
    env.setdefault("HYPOTHESIS_PROFILE", "ci")
    env.pop("ESMKERNELS_BACKEND", None)
    env.pop("PYTHONPATH", None)
    return env


def run_tests(tree: Path, tests: list[str], timeout: float) -> tuple[str, str, float]:
    """(outcome, detail, seconds) of one fail-fast pytest run in `tree`."""
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            pytest_command(tests), cwd=tree, env=run_env(), capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return "timeout", f"> {timeout:.0f} s", time.monotonic() - t0
    dt = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return "survived", "", dt
    if proc.returncode == 1:
        failed = re.findall(r"^FAILED (\S+)", out, flags=re.M)
        return "killed", failed[0] if failed else "a test failed", dt
    errors = re.findall(r"^(?:ERROR|E  ) .*$", out, flags=re.M) or out.splitlines()[-1:] or [""]
    if proc.returncode in (2, 3):  # collection / internal error: the mutant broke an import
        return "killed", f"pytest exit {proc.returncode}: {errors[0]}", dt
    return "error", f"pytest exit {proc.returncode}: {errors[0]}", dt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prefixes", nargs="*", help="run only mutants whose name starts so")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--tests-from", metavar="REV", help="use tests/ as of this git revision")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant")
    parser.add_argument("--target", type=float, default=95.0, help="kill rate (%%) to pass")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: the running pytest is killed and the scratch copy removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    names = [m.name for m in MUTANTS]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise SystemExit(f"duplicate mutant names: {sorted(dupes)}")
    chosen = [m for m in MUTANTS if not args.prefixes or m.name.startswith(tuple(args.prefixes))]
    if args.list:
        for m in chosen:
            print(f"{m.name:40s} {m.kind:18s} {m.path}")
        return 0
    if not chosen:
        raise SystemExit(f"no mutant matches {args.prefixes}")

    tmp = Path(tempfile.mkdtemp(prefix="esmk-mutants-"))
    tree = tmp / "tree"
    tree.mkdir()
    started = time.monotonic()
    try:
        scratch_copy(tree, args.tests_from)
        selected = {m.name: [t for t in m.tests if exists(tree, t)] for m in chosen}
        print(f"scratch copy: {tree}; {len(chosen)} mutants; tests from "
              f"{args.tests_from or 'the working tree'}; load average {os.getloadavg()[0]:.2f}",
              flush=True)  # fmt: skip
        if not args.no_baseline:
            union = list(
                dict.fromkeys(t.partition("::")[0] for ts in selected.values() for t in ts)
            )
            outcome, detail, dt = run_tests(tree, union, timeout=4 * args.timeout)
            print(f"baseline (unmutated, {len(union)} files): {outcome} {detail} [{dt:.0f} s]",
                  flush=True)  # fmt: skip
            if outcome != "survived":
                print("the unmutated tree fails its own tests: kills would mean nothing")
                return 2
        results: dict[str, tuple[str, str]] = {}
        for m in chosen:
            texts = apply(m, tree)
            if texts is None:
                results[m.name] = ("stale", "snippet not found (or not unique)")
                print(f"STALE     {m.name}", flush=True)
                continue
            path = tree / m.path
            path.write_text(texts[1])
            try:
                if not selected[m.name]:
                    outcome, detail, dt = "survived", "no selected test file exists", 0.0
                else:
                    outcome, detail, dt = run_stages(tree, selected[m.name], args.timeout)
            finally:
                path.write_text(texts[0])
            results[m.name] = (outcome, detail)
            print(f"{outcome.upper():9s} {m.name:40s} [{dt:4.0f} s] {detail}", flush=True)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    counted = {n: r for n, r in results.items() if r[0] != "stale"}
    dead = [n for n, (o, _) in counted.items() if o in ("killed", "timeout")]
    survivors = [m for m in chosen if results[m.name][0] in ("survived", "error")]
    stale = [n for n, (o, _) in results.items() if o == "stale"]
    rate = 100.0 * len(dead) / max(1, len(counted))
    minutes = (time.monotonic() - started) / 60
    print(f"\nkill rate: {len(dead)}/{len(counted)} = {rate:.1f}% in {minutes:.1f} min "
          f"(load average now {os.getloadavg()[0]:.2f})")  # fmt: skip
    for m in survivors:
        print(f"  {results[m.name][0]}: {m.name} ({m.kind}, {m.path}): {m.why}")
    for n in stale:
        print(f"  stale: {n}")
    return 0 if rate >= args.target and not stale else 1


if __name__ == "__main__":
    sys.exit(main())
