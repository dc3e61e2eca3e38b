"""Build a model without allocating or initialising its parameters, then fill it from a checkpoint.

`PreTrainedMixin.from_pretrained` (in `esmkernels.core.modeling_utils`) loads in three steps:

1. **Build empty** (`empty_parameters`): inside the context every `nn.Parameter` a constructor
   registers is moved to the meta device at once, so it owns no memory and its initialisation
   (`reset_parameters`, `_init_weights`, an in-place `normal_`) runs on meta tensors, which
   costs nothing. Buffers stay real: the constructors compute them as usual (rotary `inv_freq`,
   ESMFold's residue constants and `af2_to_esm`, position ids), so a buffer the checkpoint does
   not hold, persistent or not, has its right value with no extra code.
2. **Fill** (`assign`, with `place` for each tensor): each checkpoint tensor becomes the
   parameter or buffer itself, in its final dtype and on its final device, tensor by tensor
   (a few threads convert at once). A tensor already in the final dtype on the CPU is used
   as it is: for a memory-mapped
   file (safetensors, `torch.load(mmap=True)`) the parameter is a copy-on-write view of the
   file, so loading reads nothing and writing to the parameter never changes the file. For a
   GPU each tensor is copied in its stored dtype and cast there: no CPU copy of the model in
   another dtype is made on the way. Once a tensor has been converted (dtype or device), the
   file pages it was read from leave the resident set at once (`_FilePages`), so the peak
   RSS of a converting load is the result plus a few tensors, not the result plus the file.
3. **Initialise what the checkpoint lacks** (`init_fresh`): a parameter the model may leave
   fresh (a new classifier head, a pooler, strict=False) gets the initialisation its
   constructor gives it, `_init_weights` of the nearest module above it that has one, run on
   the CPU in float32. Where no module has one, or it leaves a value unset (every parameter is
   filled with NaN first, to see), `init_fresh` returns None and the caller builds the model
   the ordinary way instead, so initial values are never guessed.

The patch `empty_parameters` applies (to `nn.Module.register_parameter`) is process-wide while
the context is open, as in `accelerate.init_empty_weights`: do not build models in other
threads at the same time.

This module is a foundation leaf: it imports nothing from `models/`, `ops/` or `reference/`.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import math
import mmap
import os
import sys
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(
    dtype: torch.dtype | str | None,
    state_dict: Mapping[str, Tensor] | None = None,
    skip: Callable[[str], bool] = lambda key: False,
) -> torch.dtype | None:
    """`torch.dtype` for a dtype argument: a dtype, a name ("bf16", "float16", ...), "auto" or None.

    "auto" means the dtype most of the checkpoint's floating tensors are stored in (keys for
    which `skip` is true, e.g. rotary `inv_freq`, are not counted); None stays None.
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if not isinstance(dtype, str):
        raise TypeError(f"dtype must be a torch.dtype or a string, got {type(dtype).__name__}")
    name = dtype.removeprefix("torch.").lower()
    if name == "auto":
        counts: dict[torch.dtype, int] = {}
        for key, t in (state_dict or {}).items():
            if t.is_floating_point() and not skip(key):
                counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
        return max(counts, key=counts.get) if counts else None
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)} or 'auto'")
    return _DTYPES[name]


def resolve_device(device: Any = None, device_map: Any = None) -> torch.device:
    """The one device a model is loaded onto.

    Args:
        device: None (CPU), a `torch.device`, a string ("cpu", "cuda", "cuda:1") or a GPU index.
        device_map: transformers' argument, for a single device only: a device as above,
            "auto" (the current GPU when CUDA is available, else the CPU) or `{"": device}`.
            Maps that spread a model over several devices are refused.

    Raises:
        ValueError: an unknown device, "meta", a multi-device map, or `device` and `device_map`
            that disagree.
    """
    if device_map is not None:
        if isinstance(device_map, Mapping):
            if set(device_map) != {""}:
                raise ValueError(
                    f"device_map={dict(device_map)!r}: only a single device is supported, e.g. "
                    "device_map='cuda' or {'': 'cuda:0'}"
                )
            device_map = device_map[""]
        if device_map == "auto":
            device_map = "cuda" if torch.cuda.is_available() else "cpu"
        mapped = _device(device_map, "device_map")
        if device is not None and _device(device, "device") != mapped:
            raise ValueError(f"device={device!r} and device_map={device_map!r} disagree")
        return mapped
    return torch.device("cpu") if device is None else _device(device, "device")


def _device(value: Any, name: str) -> torch.device:
    if isinstance(value, bool) or not isinstance(value, (str, int, torch.device)):
        raise TypeError(f"{name} must be a string, an int or a torch.device, got {value!r}")
    try:
        device = torch.device("cuda", value) if isinstance(value, int) else torch.device(value)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"unknown {name} {value!r}: {err}") from None
    if device.type == "meta":
        raise ValueError(f"{name}='meta' would leave the model without weights")
    return device


@contextlib.contextmanager
def empty_parameters() -> Iterator[None]:
    """Within the context, every parameter a module registers lives on the meta device.

    Constructors run as usual, but their parameters own no memory and initialising them costs
    nothing; buffers are real. Fill the model with `assign` afterwards.

    Example:
        >>> with empty_parameters():  # doctest: +SKIP
        ...     model = EsmForMaskedLM(config)
        >>> rotary = model.esm.encoder.layer[0].attention.self.rotary_embeddings
        >>> model.lm_head.dense.weight.device, rotary.inv_freq.device  # doctest: +SKIP
        (device(type='meta'), device(type='cpu'))
    """
    original = nn.Module.register_parameter

    def register_parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
    try:
        with _SkipMetaInit():
            yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


# In-place ops that only write values: the initialisers (`torch.nn.init` and the tensor methods
# they and `_init_weights` use). Ops that change a tensor's metadata (`requires_grad_`,
# `resize_`, `transpose_`, ...) are not here: they must run on meta tensors too.
_VALUE_OPS = frozenset(
    {
        *("normal_", "uniform_", "bernoulli_", "random_", "exponential_", "log_normal_"),
        *("cauchy_", "geometric_", "zero_", "fill_", "copy_", "masked_fill_", "index_fill_"),
        *("fill_diagonal_", "add_", "sub_", "mul_", "div_", "clamp_", "clamp_min_"),
        *("clamp_max_", "erfinv_", "exp_", "sqrt_", "trunc_normal_", "kaiming_uniform_"),
        *("kaiming_normal_", "xavier_uniform_", "xavier_normal_", "constant_", "ones_"),
        *("zeros_", "eye_", "dirac_", "orthogonal_", "sparse_"),
    }
)


class _SkipMetaInit(TorchFunctionMode):
    """Initialisers on meta tensors (`_VALUE_OPS`) return at once. They would write nothing
    anyway, but some go through torch's reference implementations, whose first use imports the
    compiler stack (about a second)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # torch.nn.init passes its tensor by keyword
        target = args[0] if args else kwargs.get("tensor", kwargs.get("input"))
        if (
            getattr(func, "__name__", "") in _VALUE_OPS
            and isinstance(target, Tensor)
            and target.is_meta
        ):
            return target
        return func(*args, **kwargs)


def meta_parameters(module: nn.Module) -> list[list[str]]:
    """Names of the parameters still on the meta device, one list per parameter (its aliases:
    a tied parameter has several names)."""
    groups: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if p.is_meta:
            groups.setdefault(id(p), []).append(name)
    return list(groups.values())


def place(value: Tensor, dtype: torch.dtype, device: torch.device) -> Tensor:
    """`value` as a contiguous `dtype` tensor on `device`; `value` itself when it already is one.

    To another device the tensor travels in its stored dtype and is cast there, so no copy in
    the final dtype is made on the CPU first.
    """
    value = value.detach()
    if value.device != device:
        value = value.to(device)
    return value.to(dtype).contiguous()


def assign(
    module: nn.Module,
    values: Mapping[str, Tensor],
    dtype_of: Callable[[str, Tensor], torch.dtype],
    device: torch.device,
    owned_elsewhere: Collection[int] = (),
) -> None:
    """Make each tensor of `values` the parameter or buffer of that name, placed by `place`.

    `dtype_of(name, current)` is the final dtype, `current` being the module's tensor (possibly
    on meta). A tensor already in its final dtype, on `device` and contiguous is installed as it
    is, without a copy; the others are converted by a few threads at once (like transformers'
    loader: reading a mapped file and casting overlap), and installed in order. A tied
    parameter is installed once, under all its names. A result that shares memory with one
    installed before it (one stored tensor used for two keys), or whose data pointer is in
    `owned_elsewhere` (tensors the caller passed in and may still use), is cloned, so that two
    parameters never share storage unless they are tied. `requires_grad` is kept.

    When a tensor was converted (another dtype or device), its source's pages of a
    memory-mapped file are dropped from this process's resident memory at once
    (`_FilePages`), so converting a model, or moving it to a GPU, never holds the whole file in
    RAM beside the result. Sources whose pointer is in `owned_elsewhere` are left alone.

    Raises KeyError for a name that is neither a parameter nor a buffer.
    """
    aliases: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)
    plan: list[tuple[str, nn.Module, str, Tensor, Tensor, torch.dtype]] = []
    claimed: set[int] = set()
    for name, value in values.items():
        owner, attr = _owner(module, name)
        if attr in owner._parameters:
            current = owner._parameters[attr]
            if id(current) in claimed:
                continue  # a tied alias installs it
            claimed.add(id(current))
        elif attr in owner._buffers:
            current = owner._buffers[attr]
        else:
            raise KeyError(f"{name} is neither a parameter nor a buffer of {type(module).__name__}")
        plan.append((name, owner, attr, current, value, dtype_of(name, current)))

    pages = _FilePages()

    def convert(value: Tensor, dtype: torch.dtype) -> Tensor:
        tensor = place(value, dtype, device)
        if tensor.numel() and tensor.data_ptr() != value.data_ptr():
            if value.data_ptr() not in owned_elsewhere:
                pages.release(value)
        return tensor

    def as_is(value: Tensor, dtype: torch.dtype) -> bool:
        return value.dtype == dtype and value.device == device and value.is_contiguous()

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        pending = {
            i: pool.submit(convert, value, dtype)
            for i, (_, _, _, _, value, dtype) in enumerate(plan)
            if not as_is(value, dtype)
        }
        used: set[int] = set(owned_elsewhere)
        for i, (_, owner, attr, current, value, _) in enumerate(plan):
            tensor = pending.pop(i).result() if i in pending else value.detach()
            if tensor.numel():
                if tensor.data_ptr() in used:
                    tensor = tensor.clone()
                used.add(tensor.data_ptr())
            if attr in owner._buffers:
                owner._buffers[attr] = tensor
                continue
            new = nn.Parameter(tensor, requires_grad=current.requires_grad)
            for alias in aliases[id(current)]:
                alias_owner, alias_attr = _owner(module, alias)
                alias_owner._parameters[alias_attr] = new


class _FilePages:
    """Drops the pages of memory-mapped checkpoint tensors from the resident set (Linux).

    `release(t)` applies `madvise(MADV_DONTNEED)` to the whole pages inside a contiguous CPU
    tensor that lies in a private file mapping (the copy-on-write maps of safetensors and
    `torch.load(mmap=True)`, listed once from /proc/self/maps). Clean pages of such a mapping
    come back from the file on the next access, so the tensor keeps its values; only its RSS
    goes. Anything else (anonymous memory, whose pages would come back as zeros; shared
    mappings; other systems) is left alone. The loaders never write into these tensors, so no
    page holds a private change that dropping would lose.
    """

    _MADV_DONTNEED = 4

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int]] = []
        self.madvise: Callable[..., int] | None = None
        if not sys.platform.startswith("linux"):
            return
        try:
            with open("/proc/self/maps") as fh:
                for line in fh:
                    fields = line.split()
                    # address perms offset dev inode path: a private mapping of a real file
                    if len(fields) >= 6 and fields[1][3] == "p" and fields[5].startswith("/"):
                        start, end = (int(x, 16) for x in fields[0].split("-"))
                        self.ranges.append((start, end))
            libc = ctypes.CDLL(None, use_errno=True)
            libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
            self.madvise = libc.madvise
        except (OSError, AttributeError, ValueError, IndexError):
            self.ranges, self.madvise = [], None
        self.ranges.sort()
        self.page = mmap.PAGESIZE

    def release(self, t: Tensor) -> None:
        if self.madvise is None or t.device.type != "cpu" or not t.is_contiguous():
            return
        start = t.data_ptr()
        end = start + t.numel() * t.element_size()
        i = bisect.bisect_right(self.ranges, (start, float("inf"))) - 1
        if i < 0 or not (self.ranges[i][0] <= start and end <= self.ranges[i][1]):
            return
        first = -(-start // self.page) * self.page  # whole pages only: a page at either end
        last = end // self.page * self.page  # may hold a neighbouring tensor still in use
        if last > first:
            self.madvise(first, last - first, self._MADV_DONTNEED)


def init_fresh(module: nn.Module, names: list[str]) -> dict[str, Tensor] | None:
    """Initial values (CPU, the parameter's dtype) for the meta parameters `names`.

    Each parameter's owner module is initialised by `_init_weights` of the nearest module on its
    path (the owner itself or an ancestor; the model classes of `esmkernels.reference` define
    it), as their constructors do; only the named parameters are real while it runs, so the
    others are not touched. Returns None when a parameter has no such initialiser or a value
    is left unset by it (the caller then builds the model with its constructors).
    """
    by_owner: dict[str, list[str]] = {}
    for name in names:
        owner_name, _, attr = name.rpartition(".")
        by_owner.setdefault(owner_name, []).append(attr)
    out: dict[str, Tensor] = {}
    for owner_name, attrs in by_owner.items():
        initializer = _initializer(module, owner_name)
        if initializer is None:
            return None
        owner = module.get_submodule(owner_name) if owner_name else module
        saved = {attr: owner._parameters[attr] for attr in attrs}
        try:
            for attr, p in saved.items():
                owner._parameters[attr] = nn.Parameter(
                    torch.full(p.shape, math.nan, dtype=p.dtype), requires_grad=p.requires_grad
                )
            with torch.no_grad():
                initializer(owner)
            values = {attr: owner._parameters[attr].detach() for attr in attrs}
        finally:
            owner._parameters.update(saved)
        for attr, value in values.items():
            if value.is_floating_point() and bool(value.isnan().any()):
                return None
            out[f"{owner_name}.{attr}" if owner_name else attr] = value
    return out


def _initializer(module: nn.Module, owner_name: str) -> Callable[[nn.Module], None] | None:
    found = getattr(module, "_init_weights", None)
    current = module
    for part in owner_name.split(".") if owner_name else ():
        current = getattr(current, part)
        found = getattr(current, "_init_weights", found)
    return found if callable(found) else None


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    owner_name, _, attr = name.rpartition(".")
    return (module.get_submodule(owner_name) if owner_name else module), attr


__all__ = [
    "assign",
    "empty_parameters",
    "init_fresh",
    "meta_parameters",
    "place",
    "resolve_device",
    "resolve_dtype",
]
