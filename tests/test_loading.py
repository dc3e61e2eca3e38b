"""`from_pretrained` builds without initialising and fills the model from the checkpoint.

Parity: for every model class (reference and fast; ESM-2 / ESM-1b language models and ESMFold)
and every checkpoint format, the new path gives bit-identical parameters and buffers (the
non-persistent ones too), the same dtypes, ties and `requires_grad`, and identical outputs to
the old path (build with the constructors, copy the state dict in, cast), whose code is kept as
`load_hf_state_dict` on an ordinarily built model. Then: no random initialisation while loading
(counted at the dispatcher), the initialisation a fresh task head does get, the fallback for
classes without `_init_weights`, dtype and device arguments, memory-mapped parameters and no
storage shared between parameters that are not tied. Errors for corrupt or mismatched
checkpoints are tested in `test_checkpoint*.py`; they run through the same path.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from esmkernels.core import materialize
from esmkernels.core.checkpoint import load_checkpoint
from esmkernels.core.configuration import EsmConfig
from esmkernels.core.materialize import empty_parameters, place, resolve_dtype
from esmkernels.models import esm as fast
from esmkernels.models import esmfold as fast_fold
from esmkernels.reference import esm as ref
from esmkernels.reference.esmfold.modeling import EsmForProteinFolding
from tests._ckpt_models import TinyEsmForMaskedLM, randomize
from tests._configs import tiny_lm_config
from tests.test_checkpoint import _write_shards
from tests.test_checkpoint_fairesm import _esm1b_file, _esm2_file, _hand_built, _regression
from tests.test_esmfold_model import STEM, _fair_esmfold_file, tiny_model
from tests.test_esmfold_trunk import one_torch_thread  # noqa: F401  (autouse fixture)

LM_CLASSES = {
    f"{side}.{name}": getattr(module, name)
    for side, module in (("ref", ref), ("fast", fast))
    for name in (
        "EsmModel",
        "EsmForMaskedLM",
        "EsmForSequenceClassification",
        "EsmForTokenClassification",
    )
}
LM_FORMATS = (
    "hf-safetensors",
    "hf-safetensors-sharded",
    "hf-bin",
    "hf-bin-sharded",
    "fair-esm-cfg",
    "fair-esm-args",
)
FOLD_CLASSES = {"ref": EsmForProteinFolding, "fast": fast_fold.EsmForProteinFolding}
FOLD_FORMATS = ("hf-safetensors", "fair-esm-esmfold", "fair-esm-esmfold-stem-pair")
IDS = torch.tensor([[0, 5, 6, 7, 8, 2, 1], [0, 9, 10, 11, 2, 1, 1]])
RANDOM_OPS = {
    "normal_",
    "uniform_",
    "bernoulli_",
    "random_",
    "exponential_",
    "geometric_",
    "log_normal_",
    "cauchy_",
    "normal",
    "randn",
    "rand",
    "randint",
    "randperm",
}


# ------------------------------------------------------------------------------------------
# Checkpoint files, one per format
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lm_files")
    model = randomize(ref.EsmForMaskedLM(tiny_lm_config()))
    model.save_pretrained(root / "hf-safetensors")
    model.save_pretrained(root / "hf-bin", safe_serialization=False)
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.decoder.weight"}
    for fmt, suffix in (("hf-safetensors-sharded", "safetensors"), ("hf-bin-sharded", "bin")):
        (root / fmt).mkdir()
        model.config.save_pretrained(root / fmt)
        _write_shards(root / fmt, state, suffix)
    files = {fmt: root / fmt for fmt in LM_FORMATS[:4]}
    raw, _ = _hand_built("esm2", ffn=4 * 16)
    files["fair-esm-cfg"] = _esm2_file(root / "esm2_t2_tiny.pt", raw)
    _regression(root / "esm2_t2_tiny-contact-regression.pt")
    raw, _ = _hand_built("esm1b")
    files["fair-esm-args"] = _esm1b_file(root / "esm1b_t2_tiny.pt", raw)
    _regression(root / "esm1b_t2_tiny-contact-regression.pt")
    return files


@pytest.fixture(scope="module")
def fold_files(tmp_path_factory) -> dict[str, tuple[Path, object]]:
    """format -> (path, stem argument)."""
    root = tmp_path_factory.mktemp("fold_files")
    model = tiny_model()
    model.save_pretrained(root / "hf")
    torch.save(_fair_esmfold_file(model), root / "esmfold_tiny.pt")
    stem = ref.EsmModel(EsmConfig(**STEM), add_pooling_layer=False)
    stem.load_state_dict(model.esm.state_dict())
    stem.save_pretrained(root / "stem")
    pair = load_checkpoint(root / "stem")[:2]
    return {
        "hf-safetensors": (root / "hf", None),
        "fair-esm-esmfold": (root / "esmfold_tiny.pt", root / "stem"),
        "fair-esm-esmfold-stem-pair": (root / "esmfold_tiny.pt", pair),
    }


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------


def _quiet():
    context = warnings.catch_warnings()
    context.__enter__()
    warnings.simplefilter("ignore")  # fresh heads are announced; tested elsewhere
    return context


def _old_path(cls, path, *, dtype=None, stem=None, backend=None):
    """`from_pretrained` as it was: constructors (with their initialisation), copy, cast."""
    config, state, fmt = load_checkpoint(path, stem=stem)
    model = cls(config)
    model.tie_weights()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.load_hf_state_dict(state, source=f"{path} ({fmt})")
    model.to_device_dtype(dtype=resolve_dtype(dtype, state))
    if backend is not None:
        model.backend = backend
    return model.eval()


def _new_path(cls, path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls.from_pretrained(path, **kwargs)


def _fresh(model) -> set[str]:
    """Keys no checkpoint here holds: task heads and the pooler (freshly initialised)."""
    return {
        k
        for k in model.state_dict()
        if k.startswith("classifier.") or k.startswith("pooler.") or ".pooler." in k
    }


def _tie_groups(model) -> set[frozenset[str]]:
    groups: dict[int, set[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), set()).add(name)
    return {frozenset(g) for g in groups.values()}


def _assert_identical(new, old, fresh=frozenset()):
    new_p = dict(new.named_parameters(remove_duplicate=False))
    old_p = dict(old.named_parameters(remove_duplicate=False))
    assert new_p.keys() == old_p.keys()
    for key, value in old_p.items():
        got = new_p[key]
        assert (got.dtype, got.device, got.shape) == (value.dtype, value.device, value.shape), key
        assert got.requires_grad == value.requires_grad, key
        assert got.is_contiguous(), key
        if key not in fresh:
            assert torch.equal(got, value), key
    assert _tie_groups(new) == _tie_groups(old)
    new_b, old_b = dict(new.named_buffers()), dict(old.named_buffers())
    assert new_b.keys() == old_b.keys()  # non-persistent buffers included
    for key, value in old_b.items():
        assert new_b[key].dtype == value.dtype and torch.equal(new_b[key], value), key
    # parameters that are not tied never share memory
    starts = [p.data_ptr() for p in new.parameters() if p.numel()]
    assert len(starts) == len(set(starts))


def _copy_fresh(new, old, fresh):
    with torch.no_grad():
        old_state = old.state_dict()
        for key, value in new.state_dict().items():
            if key in fresh:
                old_state[key].copy_(value)


def _lm_output(model) -> torch.Tensor:
    with torch.no_grad():
        out = model(IDS, attention_mask=IDS.ne(1).long(), return_dict=True)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits


class CountRandom(TorchDispatchMode):
    """Elements written by random-number ops on real (not meta) tensors."""

    def __init__(self):
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ in RANDOM_OPS and torch.is_tensor(out) and not out.is_meta:
            self.elements += out.numel()
        return out


# ------------------------------------------------------------------------------------------
# Parity with the old path: every class, every format
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", LM_FORMATS)
@pytest.mark.parametrize("name", sorted(LM_CLASSES))
def test_language_models_load_as_before(lm_files, name, fmt):
    cls = LM_CLASSES[name]
    backend = "torch" if name.startswith("fast.") else None
    kwargs = {} if backend is None else {"backend": backend}
    new = _new_path(cls, lm_files[fmt], **kwargs)
    old = _old_path(cls, lm_files[fmt], backend=backend)
    fresh = _fresh(new)
    _assert_identical(new, old, fresh)
    _copy_fresh(new, old, fresh)
    assert torch.equal(_lm_output(new), _lm_output(old))


@pytest.mark.parametrize(
    "fmt", ["hf-safetensors", "hf-bin-sharded", "fair-esm-cfg", "fair-esm-args"]
)
@pytest.mark.parametrize("name", ["ref.EsmForMaskedLM", "fast.EsmModel"])
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_loads_as_before(lm_files, name, fmt, dtype):
    """Stored float32, loaded in half precision: cast once per tensor, inv_freq kept float32."""
    cls = LM_CLASSES[name]
    new = _new_path(cls, lm_files[fmt], dtype=dtype)
    old = _old_path(cls, lm_files[fmt], dtype=dtype)
    fresh = _fresh(new)
    _assert_identical(new, old, fresh)
    want = resolve_dtype(dtype)
    assert {p.dtype for p in new.parameters()} == {want}
    inv = [b for k, b in new.named_buffers() if k.endswith("inv_freq")]
    assert all(b.dtype == torch.float32 for b in inv)


@pytest.mark.parametrize("fmt", FOLD_FORMATS)
@pytest.mark.parametrize("side", sorted(FOLD_CLASSES))
def test_esmfold_loads_as_before(fold_files, side, fmt):
    cls = FOLD_CLASSES[side]
    path, stem = fold_files[fmt]
    backend = "torch" if side == "fast" else None
    kwargs = {} if backend is None else {"backend": backend}
    new = _new_path(cls, path, stem=stem, **kwargs)
    old = _old_path(cls, path, stem=stem, backend=backend)
    _assert_identical(new, old)
    # the structure module's residue constants and af2_to_esm are buffers the file lacks
    buffers = dict(new.named_buffers())
    assert "trunk.structure_module.default_frames" in buffers and "af2_to_esm" in buffers
    assert not new.esm.embeddings.word_embeddings.weight.requires_grad  # the stem is frozen
    ids = torch.tensor([[1, 2, 3, 4, 5, 19]])
    with torch.no_grad():
        a, b = new(ids, num_recycles=0), old(ids, num_recycles=0)
    assert torch.equal(a.positions, b.positions) and torch.equal(a.plddt, b.plddt)


def test_esmfold_half_precision_keeps_the_constants_float32(fold_files):
    path, _ = fold_files["hf-safetensors"]
    new = _new_path(EsmForProteinFolding, path, dtype="bf16")
    old = _old_path(EsmForProteinFolding, path, dtype="bf16")
    _assert_identical(new, old)
    assert new.trunk.structure_module.default_frames.dtype == torch.float32


# ------------------------------------------------------------------------------------------
# No initialisation while loading; the initialisation a fresh head gets
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["hf-safetensors", "fair-esm-cfg"])
def test_loading_draws_no_random_numbers(lm_files, fmt):
    """Fails if the model is built with its constructors' initialisation (the old path draws
    a random value for every weight)."""
    with CountRandom() as counter:
        model = _new_path(fast.EsmForMaskedLM, lm_files[fmt])
    assert counter.elements == 0
    with CountRandom() as counter:
        _old_path(fast.EsmForMaskedLM, lm_files[fmt])
    assert counter.elements >= model.num_parameters() // 2  # the counter does see init


def test_esmfold_loading_draws_no_random_numbers(fold_files):
    path, stem = fold_files["fair-esm-esmfold"]
    with CountRandom() as counter:
        _new_path(EsmForProteinFolding, path, stem=stem)
    assert counter.elements == 0


def test_building_inside_empty_parameters_allocates_no_weights():
    config = tiny_lm_config()
    with CountRandom() as counter, empty_parameters():
        model = ref.EsmForMaskedLM(config)
    assert counter.elements == 0
    assert all(p.is_meta for p in model.parameters())
    inv = model.esm.encoder.layer[0].attention.self.rotary_embeddings.inv_freq
    assert not inv.is_meta  # buffers are computed by the constructors
    assert torch.equal(
        inv, model.esm.encoder.layer[0].attention.self.rotary_embeddings.default_inv_freq()
    )
    assert not torch.nn.Linear(2, 2).weight.is_meta  # the patch is gone afterwards


@pytest.mark.parametrize("name", ["EsmForSequenceClassification", "EsmForTokenClassification"])
def test_fresh_head_gets_init_weights_and_nothing_else_does(lm_files, caplog, name):
    cls = getattr(ref, name)
    with (
        CountRandom() as counter,
        caplog.at_level(logging.INFO),
        pytest.warns(UserWarning, match="newly initialised"),
    ):
        model = cls.from_pretrained(lm_files["hf-safetensors"], num_labels=3)
    assert "building the model with its constructors" not in caplog.text  # no fallback
    weights = [
        p for k, p in model.named_parameters() if k.startswith("classifier.") and p.dim() == 2
    ]
    biases = [
        p for k, p in model.named_parameters() if k.startswith("classifier.") and p.dim() == 1
    ]
    assert counter.elements == sum(w.numel() for w in weights)  # only the head's weights
    std = model.config.initializer_range
    for w in weights:
        assert w.requires_grad and 0.5 * std < float(w.detach().std()) < 1.5 * std
    assert biases and all(torch.equal(b, torch.zeros_like(b)) for b in biases)


def test_a_class_without_init_weights_is_built_with_its_constructors(lm_files, tmp_path, caplog):
    # TinyEsmForMaskedLM has no _init_weights: it falls back to the constructors. The reference
    # EsmForMaskedLM initialises its LM head's own bias in _init_weights (as HF does), so a
    # base-only checkpoint loads it on the fast path, drawing random numbers for the head only.
    base = ref.EsmModel.from_pretrained(lm_files["hf-safetensors"])
    base.save_pretrained(tmp_path / "base")
    for cls, fallback in ((TinyEsmForMaskedLM, True), (ref.EsmForMaskedLM, False)):
        caplog.clear()
        with caplog.at_level(logging.INFO), pytest.warns(UserWarning, match="newly initialised"):
            model = cls.from_pretrained(tmp_path / "base", config=tiny_lm_config())
        assert ("building the model with its constructors" in caplog.text) is fallback, cls
        assert not any(p.is_meta for p in model.parameters())
        assert torch.equal(model.lm_head.bias, torch.zeros_like(model.lm_head.bias))


def test_init_fresh_leaves_loaded_parameters_alone():
    config = tiny_lm_config(num_labels=2)
    with empty_parameters():
        model = ref.EsmForSequenceClassification(config)
    values = materialize.init_fresh(model, ["classifier.dense.weight"])
    assert values is not None and set(values) == {"classifier.dense.weight"}
    assert model.classifier.dense.weight.is_meta and model.classifier.dense.bias.is_meta
    assert materialize.init_fresh(model, ["esm.encoder.layer.0.attention.self.query.weight"])
    with empty_parameters():
        tiny = TinyEsmForMaskedLM(tiny_lm_config())
    assert materialize.init_fresh(tiny, ["lm_head.dense.weight"]) is None  # no _init_weights


# ------------------------------------------------------------------------------------------
# dtype and device
# ------------------------------------------------------------------------------------------


def test_device_and_dtype_arguments(lm_files, monkeypatch):
    path = lm_files["hf-safetensors"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for kwargs in (
        dict(device="cpu"),
        dict(device=torch.device("cpu")),
        dict(device_map="cpu"),
        dict(device_map={"": "cpu"}),
        dict(device_map="auto"),
        dict(device="cpu", device_map="cpu"),
    ):
        model = _new_path(ref.EsmForMaskedLM, path, **kwargs)
        assert {p.device.type for p in model.parameters()} == {"cpu"}, kwargs
    model = _new_path(ref.EsmForMaskedLM, path, torch_dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="'meta' would leave the model without weights"):
        ref.EsmForMaskedLM.from_pretrained(path, device="meta")
    with pytest.raises(ValueError, match="only a single device"):
        ref.EsmForMaskedLM.from_pretrained(path, device_map={"esm": "cpu", "lm_head": "cpu"})
    with pytest.raises(ValueError, match="disagree"):
        ref.EsmForMaskedLM.from_pretrained(path, device="cpu", device_map="cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        ref.EsmForMaskedLM.from_pretrained(path, device="gpu0")
    with pytest.raises(TypeError, match="device must be"):
        ref.EsmForMaskedLM.from_pretrained(path, device=1.5)
    with pytest.raises(ValueError, match="dtype='fp16' and torch_dtype='bf16' disagree"):
        ref.EsmForMaskedLM.from_pretrained(path, dtype="fp16", torch_dtype="bf16")


def test_place_moves_before_it_casts():
    """To another device a tensor travels in its stored dtype and is cast there: no copy in
    the final dtype is made on the CPU (the meta device stands in for a GPU)."""
    value = torch.randn(64, 32)
    made_on_cpu = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if torch.is_tensor(out) and out.device.type == "cpu" and out.dtype == torch.bfloat16:
                made_on_cpu.append(func)
            return out

    with Record():
        out = place(value, torch.bfloat16, torch.device("meta"))
    assert out.is_meta and out.dtype == torch.bfloat16 and out.shape == value.shape
    assert made_on_cpu == []
    assert place(value, torch.float32, torch.device("cpu")) is not None
    assert place(value, torch.float32, torch.device("cpu")).data_ptr() == value.data_ptr()


@pytest.mark.gpu
def test_loads_onto_the_gpu_in_half_precision(lm_files, device):
    path = lm_files["hf-safetensors"]
    model = _new_path(fast.EsmForMaskedLM, path, dtype="bf16", device=device)
    cpu = _new_path(fast.EsmForMaskedLM, path, dtype="bf16")
    assert {p.device.type for p in model.parameters()} == {device.type}
    assert all(b.device.type == device.type for b in model.buffers())
    for (key, p), q in zip(model.named_parameters(), cpu.parameters(), strict=True):
        assert torch.equal(p.cpu(), q), key


# ------------------------------------------------------------------------------------------
# Memory: parameters are views of the mapped file; nothing shared that is not tied
# ------------------------------------------------------------------------------------------


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    ranges = []
    with open("/proc/self/maps") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) >= 6 and Path(fields[5]) == path.resolve():
                start, end = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((start, end))
    return ranges


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize(
    "fmt, file", [("hf-safetensors", "model.safetensors"), ("hf-bin", "pytorch_model.bin")]
)
def test_parameters_are_copy_on_write_views_of_the_file(lm_files, fmt, file):
    path = lm_files[fmt] / file
    before = path.read_bytes()
    model = _new_path(ref.EsmForMaskedLM, lm_files[fmt])
    ranges = _mapped_ranges(path)
    weight = model.esm.encoder.layer[1].intermediate.dense.weight
    assert ranges and any(a <= weight.data_ptr() < b for a, b in ranges)
    original = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1.0)  # trainable as usual; the file does not change
    assert path.read_bytes() == before
    again = _new_path(ref.EsmForMaskedLM, lm_files[fmt])
    assert torch.equal(again.esm.encoder.layer[1].intermediate.dense.weight, original)
    assert not torch.equal(weight, original)


def test_one_stored_tensor_for_two_untied_parameters_is_copied(lm_files):
    """fair-esm ESM-1b stores the LM head and the embedding as one tensor; untied, they must
    not share memory (training one would change the other)."""
    path = lm_files["fair-esm-args"]
    model = _new_path(ref.EsmForMaskedLM, path, config=None, tie_word_embeddings=False)
    words = model.esm.embeddings.word_embeddings.weight
    decoder = model.lm_head.decoder.weight
    assert decoder is not words and decoder.data_ptr() != words.data_ptr()
    assert torch.equal(decoder, words)
    tied = _new_path(ref.EsmForMaskedLM, path)
    assert tied.lm_head.decoder.weight is tied.esm.embeddings.word_embeddings.weight


def test_a_callers_stem_tensors_are_not_shared(fold_files):
    path, pair = fold_files["fair-esm-esmfold-stem-pair"]
    model = _new_path(EsmForProteinFolding, path, stem=pair)
    theirs = {t.data_ptr() for t in pair[1].values()}
    assert not theirs & {p.data_ptr() for p in model.esm.parameters()}
    assert torch.equal(
        model.esm.embeddings.word_embeddings.weight, pair[1]["embeddings.word_embeddings.weight"]
    )


def test_a_non_contiguous_stored_tensor_becomes_a_contiguous_parameter(tmp_path):
    """torch.save keeps strides: a column-major weight must not become a strided parameter
    (the kernels take contiguous weights)."""
    model = randomize(ref.EsmForMaskedLM(tiny_lm_config()))
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.decoder.weight"}
    key = "esm.encoder.layer.0.intermediate.dense.weight"
    state[key] = state[key].t().contiguous().t()  # same values, column-major
    assert not state[key].is_contiguous()
    model.config.save_pretrained(tmp_path)
    torch.save(state, tmp_path / "pytorch_model.bin")
    loaded = _new_path(ref.EsmForMaskedLM, tmp_path)
    weight = loaded.esm.encoder.layer[0].intermediate.dense.weight
    assert weight.is_contiguous() and torch.equal(weight, state[key])


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_converting_holds_no_copy_of_the_file_in_memory(tmp_path):
    """A float32 file loaded in bfloat16: each source tensor's file pages are dropped once it is
    converted, so the peak RSS growth stays near the bf16 weights (keeping the mapped pages
    would add the whole float32 file, twice as much again)."""
    from safetensors.torch import save_file

    config = tiny_lm_config(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=6, num_attention_heads=12
    )
    with empty_parameters():
        shapes = ref.EsmForMaskedLM(config).state_dict()
    g = torch.Generator().manual_seed(0)
    state = {
        k: torch.randn(v.shape, generator=g) if v.is_meta else v.clone()
        for k, v in shapes.items()
        if k != "lm_head.decoder.weight"
    }
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(tmp_path)
    del state, shapes
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # VmHWM := VmRSS
    model = _new_path(ref.EsmForMaskedLM, tmp_path, dtype="bf16")
    growth = (_status_kib("VmHWM") - before) * 1024
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert weights > 80 * 2**20
    assert growth < 1.2 * weights + 24 * 2**20, (growth / 2**20, weights / 2**20)


def test_dropping_file_pages_keeps_values_and_never_touches_anonymous_memory(tmp_path):
    from safetensors.torch import load_file, save_file

    anonymous = torch.randn(1 << 16)
    kept = anonymous.clone()
    pages = materialize._FilePages()
    pages.release(anonymous)  # would read back as zeros if it were dropped
    assert torch.equal(anonymous, kept)
    save_file({"w": kept}, str(tmp_path / "w.safetensors"))
    mapped = load_file(tmp_path / "w.safetensors")["w"]
    materialize._FilePages().release(mapped)
    assert torch.equal(mapped, kept)  # clean pages come back from the file


def test_a_callers_modified_stem_tensors_keep_their_values(fold_files):
    """A caller's stem tensors may hold private changes (pages written after mapping): loading
    in another dtype converts them but must not drop their pages."""
    path, _ = fold_files["fair-esm-esmfold"]
    stem_dir = fold_files["fair-esm-esmfold"][1]
    config, weights = load_checkpoint(stem_dir)[:2]
    key = "encoder.layer.0.intermediate.dense.weight"
    with torch.no_grad():
        weights[key].add_(1.0)  # a private change to a mapped tensor
    changed = weights[key].clone()
    model = _new_path(EsmForProteinFolding, path, stem=(config, weights), dtype="bf16")
    assert torch.equal(weights[key], changed)
    assert torch.equal(model.esm.encoder.layer[0].intermediate.dense.weight, changed.bfloat16())
