"""The op registry (`esmkernels.ops.registry`) and the house's rules that hold for every op in it.

- the registry lists exactly the four ops, and each entry's function is the one
  `esmkernels.ops` exports; its kernels and custom ops exist;
- every op package has the same shape (`__init__`, `op`, `forward`, `backward`);
- the readers of the registry (benchmark cases, `esmkernels info`, the launch counters of the
  tests) list what it lists.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import re
from pathlib import Path

import pytest
import torch
from triton.runtime.autotuner import Autotuner
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

import esmkernels.ops
from esmkernels.ops import _dispatch, registry
from esmkernels.ops.trimul.forward import PARAM_NAMES
from tests import _launches
from tests._launches import launches

OPS = registry.ops()
IDS = [op.name for op in OPS]
MODULES = ("__init__", "op", "forward", "backward")
MAX_LINES = 600


def test_registry_lists_the_four_exported_ops():
    assert IDS == [
        "layer_norm",
        "rotary_attention",
        "triangle_multiplicative_update",
        "axial_attention",
    ]
    assert esmkernels.ops.__all__ == IDS
    for op in OPS:
        assert getattr(esmkernels.ops, op.name) is op.function, op.name
        assert registry.get(op.name) is op
    with pytest.raises(KeyError, match="registered"):
        registry.get("softmax")


def package_shape_problems(folder: Path) -> list[str]:
    """What keeps `folder` from the shape of an op package (empty when it has it): the four
    modules present and each under MAX_LINES lines."""
    problems = []
    for name in MODULES:
        path = folder / f"{name}.py"
        if not path.is_file():
            problems.append(f"{folder.name}: no {name}.py")
        elif len(path.read_text().splitlines()) >= MAX_LINES:
            problems.append(f"{folder.name}/{name}.py has {MAX_LINES}+ lines")
    return problems


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_every_op_package_has_the_shape(op):
    """`ops/<package>/`: the public function and its entry in `__init__`, the custom ops in
    `op`, every listed kernel defined in `forward` or `backward` (and every kernel there listed)."""
    package = importlib.import_module(op.function.__module__)
    assert package.__name__.rsplit(".", 1)[-1] in registry.PACKAGES
    assert package.OP is op and package.__name__ != f"esmkernels.ops.{op.name}"  # not shadowed
    assert package_shape_problems(Path(package.__file__).parent) == []
    defined = set()
    for name in ("forward", "backward"):
        module = importlib.import_module(f"{package.__name__}.{name}")
        for value in vars(module).values():
            if isinstance(value, Autotuner):
                defined.add(value.base_fn.__name__)
            elif isinstance(value, JITFunction | InterpretedFunction):
                defined.add(_launches._kernel_name(value))
    defined = {k for k in defined if k.endswith("_kernel")}  # not the jit helpers
    assert defined == set(op.kernels), (sorted(defined), op.kernels)
    op_module = importlib.import_module(f"{package.__name__}.op")
    for qualified in op.custom_ops:
        namespace, name = qualified.split("::")
        assert namespace == "esmkernels"
        assert hasattr(torch.ops.esmkernels, name), qualified
        assert name in inspect.getsource(op_module), f"{qualified} is not registered in op.py"


def test_shape_check_names_a_missing_module(tmp_path):
    """The shape check fails an op package that lacks one of the four modules."""
    folder = tmp_path / "newop"
    folder.mkdir()
    for name in MODULES:
        (folder / f"{name}.py").write_text('"""x."""\n')
    assert package_shape_problems(folder) == []
    (folder / "backward.py").unlink()
    assert package_shape_problems(folder) == ["newop: no backward.py"]


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_entries_are_usable(op):
    """Each entry's example runs through the function, the reference and the predicate."""
    args, kwargs = op.example(5)
    assert op.unsupported(*args, **kwargs) is None
    out = op.function(*args, **kwargs, backend="torch")
    torch.testing.assert_close(out, op.reference(*args, **kwargs), atol=1e-4, rtol=1e-4)
    assert op.bench_cases and all(isinstance(c, str) for c in op.bench_cases)


def test_launch_counters_and_recorded_configs_name_registry_kernels():
    every = {k for op in OPS for k in op.kernels}
    grouped = (
        _launches.LAYER_NORM + _launches.ROTARY_FWD + _launches.ROTARY_BWD + _launches.AXIAL_FWD
        + _launches.AXIAL_BWD + _launches.AXIAL_DBIAS + _launches.TRIMUL_FWD
    )  # fmt: skip
    assert sorted(grouped) == sorted(every)
    assert set(_launches.autotuned_kernels()) <= every
    from esmkernels.ops import _recorded_configs as rc

    table = json.loads(rc.DEFAULT_PATH.read_text())
    for entry in table["gpus"].values():
        assert set(entry["kernels"]) <= every


def test_benchmark_cases_and_info_come_from_the_registry(capsys):
    from esmkernels.benchmarks import kernels
    from esmkernels.cli import main

    assert kernels.CASES == tuple(c for op in OPS for c in op.bench_cases)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for op in OPS:
        assert f"op {op.name}:" in out and op.custom_ops[0] in out


def test_an_op_without_a_benchmark_case_is_timed_on_its_example(monkeypatch):
    """A fifth op needs no builder in the benchmark suite: its registry entry is enough."""
    from esmkernels.benchmarks import kernels

    layer_norm = registry.get("layer_norm")
    fifth = registry.Op(
        name="scaled_layer_norm",
        function=lambda x, w, b, eps, backend=None: (
            2 * layer_norm.function(x, w, b, eps, backend=backend)
        ),
        reference=lambda x, w, b, eps: 2 * layer_norm.reference(x, w, b, eps),
        custom_ops=(),
        kernels=(),
        unsupported=layer_norm.unsupported,
        example=layer_norm.example,
    )
    monkeypatch.setattr(registry, "ops", lambda: (*OPS, fifth))
    monkeypatch.setattr(kernels, "CASES", (*kernels.CASES, "scaled_layer_norm"))
    cpu = torch.device("cpu")
    for provider in ("reference", "torch", "triton"):
        work = kernels.build(
            "scaled_layer_norm", provider, 8, size="tiny", device=cpu, dtype=torch.float32
        )
        out = work.forward()
        assert out.shape == (2, 8, 64) and len(work.leaves) == 3
    assert kernels.default_lengths("scaled_layer_norm", "tiny") == kernels.SIZES["tiny"].lm_lengths


# ------------------------------------------------------------------------------------------------
# One rule for backend="auto" (esmkernels.ops._dispatch.choose), the same for every op
# ------------------------------------------------------------------------------------------------


def _trimul_too_wide():
    """C = 264 > 256 pair channels (Ch = 8 hidden)."""
    C, ch = 264, 8
    shapes = {"ln_in": (C,), "ln_out": (ch,), "out_proj": (C, ch), "out_gate": (C, C)}
    params = {}
    for name in PARAM_NAMES:
        stem, kind = name.rsplit("_", 1)
        shape = shapes.get(stem, (ch, C))
        params[name] = torch.randn(shape if kind == "weight" else shape[:1]) / 8
    return (torch.randn(1, 3, 3, C), None), {**params, "outgoing": False}


# Inputs each op's kernels cannot take (the registry's predicate names them); one per op.
UNSUPPORTED = {
    "layer_norm": lambda: ((torch.randn(2, 16385), None, None, 1e-5), {}),
    "rotary_attention": lambda: ((*torch.randn(3, 1, 7, 2, 24),), {}),
    "triangle_multiplicative_update": _trimul_too_wide,
    "axial_attention": lambda: (
        (*torch.randn(3, 1, 2, 3, 1, 136),),
        {"gate": torch.randn(1, 2, 3, 1, 136)},
    ),
}


def test_every_op_has_unsupported_inputs_here():
    assert sorted(UNSUPPORTED) == sorted(IDS)


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_auto_rule_is_the_same_for_every_op(op, monkeypatch):
    """As if every tensor were on CUDA (the interpreter runs the kernels): "auto" launches the
    kernels on inputs the predicate accepts, and on inputs it names runs the torch path without
    a launch; "triton" raises a ValueError with the predicate's reason before any launch;
    "torch" never launches."""
    monkeypatch.setattr(_dispatch, "on_fast_device", lambda t: True)
    args, kwargs = op.example(5)
    with torch.no_grad(), launches() as seen:
        op.function(*args, **kwargs, backend="auto")
    assert set(seen.kernels) and set(seen.kernels) <= set(op.kernels), seen
    seen.no_fallback()
    with torch.no_grad(), launches() as seen:
        op.function(*args, **kwargs, backend="torch")
    assert not seen.kernels and seen.fallbacks, seen

    args, kwargs = UNSUPPORTED[op.name]()
    why = op.unsupported(*args, **kwargs)
    assert isinstance(why, str) and why
    with torch.no_grad(), launches() as seen:
        out = op.function(*args, **kwargs, backend="auto")
    assert not seen.kernels and seen.fallbacks, seen
    torch.testing.assert_close(out, op.reference(*args, **kwargs), atol=1e-4, rtol=1e-4)
    with launches() as seen, pytest.raises(ValueError, match=re.escape(why)):
        op.function(*args, **kwargs, backend="triton")
    assert not seen.kernels


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_device_part_of_the_rule(op, monkeypatch):
    """CPU tensors: "auto" takes the torch path (the interpreter is not a fast path); "triton"
    needs the interpreter and names TRITON_INTERPRET when it is off."""
    args, kwargs = op.example(5)
    with torch.no_grad(), launches() as seen:
        op.function(*args, **kwargs, backend="auto")
    assert not seen.kernels and seen.fallbacks, seen
    monkeypatch.setattr(_dispatch, "interpreting", lambda: False)
    with launches() as seen, pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        op.function(*args, **kwargs, backend="triton")
    assert not seen.kernels
    with pytest.raises(ValueError, match="backend='gpu'"):
        op.function(*args, **kwargs, backend="gpu")


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_the_rule_lives_in_dispatch(op):
    """Each public function asks `choose` once and holds no device logic of its own."""
    source = inspect.getsource(op.function)
    assert source.count("choose(") == 1, op.name
    assert "is_cuda" not in source and "interpreting" not in source, op.name


# ------------------------------------------------------------------------------------------------
# One meaning for chunk_size: rows of the pair (query rows for attention), observed per op
# ------------------------------------------------------------------------------------------------


def _spy(monkeypatch, module, name, seen, dim):
    """Record the size along `dim` of the first argument of every call of module.name."""
    real = getattr(module, name)

    def spy(x, *args, **kwargs):
        seen.append(x.shape[dim])
        return real(x, *args, **kwargs)

    monkeypatch.setattr(module, name, spy)


def _trimul_chunks(monkeypatch, op, chunk):
    """Rows per block on each path of the triangle update: the reference (gradients on), the
    lean path (no gradients), the kernels' recomputing backward; and the kernels' channel
    slices derived from the rows."""
    from esmkernels.ops.trimul import channel_slice, torch_path
    from esmkernels.reference.esmfold import trunk_functional

    args, kwargs = op.example(7, requires_grad=True)
    rows = {"reference": [], "lean": [], "kernel backward": []}
    _spy(monkeypatch, trunk_functional, "triangle_update_rows", rows["reference"], 1)
    op.function(*args, **kwargs, chunk_size=chunk, backend="torch")
    _spy(monkeypatch, torch_path, "_output_rows", rows["lean"], 1)
    with torch.no_grad():
        op.function(*args, **kwargs, chunk_size=chunk, backend="torch")
    rows["reference"].clear()  # the kernels' backward recomputes through the reference's rows
    with launches() as seen:
        out = op.function(*args, **kwargs, chunk_size=chunk, backend="triton")
        out.sum().backward()
    rows["kernel backward"] = rows.pop("reference")
    C = args[0].shape[-1]
    slices = -(-C // channel_slice(chunk, 7, C))
    assert seen.kernels["_trimul_proj_kernel"] == slices, (seen, slices)
    return rows


def _axial_chunks(monkeypatch, op, chunk):
    """Queries per block of the torch path; the kernels launch once whatever the chunk."""
    from esmkernels.reference.esmfold import trunk_functional

    args, kwargs = op.example(7)
    queries = []
    _spy(monkeypatch, trunk_functional, "_attend_queries", queries, 2)
    op.function(*args, **kwargs, chunk_size=chunk, backend="torch")
    with launches() as seen:
        op.function(*args, **kwargs, chunk_size=chunk, backend="triton")
    assert seen.kernels["_axial_attn_fwd_kernel"] == 1, seen
    return {"reference queries": queries}


CHUNK_OBSERVERS = {
    "triangle_multiplicative_update": _trimul_chunks,
    "axial_attention": _axial_chunks,
}


def test_every_chunking_op_is_observed():
    chunking = [op.name for op in OPS if "chunk_size" in inspect.signature(op.function).parameters]
    assert sorted(CHUNK_OBSERVERS) == sorted(chunking)
    assert all(registry.get(name).trunk for name in chunking)


@pytest.mark.parametrize("name", sorted(CHUNK_OBSERVERS))
def test_chunk_size_counts_rows_on_every_path(name, monkeypatch):
    """L = 7 rows in chunks of 3 are blocks of 3, 3 and 1 rows (queries for attention) on every
    path that chunks, and one block of 7 without a chunk size."""
    op = registry.get(name)
    for path, sizes in CHUNK_OBSERVERS[name](monkeypatch, op, 3).items():
        assert sizes == [3, 3, 1], (path, sizes)
    monkeypatch.undo()
    for path, sizes in CHUNK_OBSERVERS[name](monkeypatch, op, None).items():
        assert sizes == [7], (path, sizes)


def test_trunk_namespace_offers_the_registry_trunk_ops(monkeypatch):
    """The fast ESMFold's trunk op namespace is built from the registry: one method per trunk
    op, calling the op with the namespace's backend; it pickles with its backend."""
    import pickle

    from esmkernels.models.esmfold import KernelTrunkOps
    from esmkernels.reference.esmfold.trunk_layers import TrunkOps

    trunk = [op for op in OPS if op.trunk]
    assert [op.name for op in trunk] == ["triangle_multiplicative_update", "axial_attention"]
    assert set(TrunkOps._REQUIRED) == {op.name for op in trunk}
    ops = pickle.loads(pickle.dumps(KernelTrunkOps("torch")))
    assert ops.backend == "torch" and TrunkOps(ops).namespace is ops
    for op in trunk:
        args, kwargs = op.example(4)
        with launches() as seen:
            getattr(ops, op.name)(*args, **kwargs)
        assert not seen.kernels and seen.fallbacks
        with launches() as seen:
            getattr(KernelTrunkOps("triton"), op.name)(*args, **kwargs)
        assert set(seen.kernels) <= set(op.kernels) and seen.kernels
    assert not hasattr(ops, "layer_norm")
