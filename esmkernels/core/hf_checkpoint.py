"""HF checkpoint directories: reading and writing `config.json` + safetensors / `.bin` weights.

Layouts (the format name `esmkernels.core.checkpoint.load_checkpoint` reports in brackets): a
directory with `config.json` and `model.safetensors` (`"hf-safetensors"`), a sharded
`model.safetensors.index.json` (`"hf-safetensors-sharded"`), `pytorch_model.bin` (`"hf-bin"`)
or a sharded `pytorch_model.bin.index.json` (`"hf-bin-sharded"`); or one of those files itself.

Weights are not copied into memory while reading: safetensors files are memory-mapped (every
tensor is a copy-on-write view of the file, read from disk only when touched) and zip `.bin`
files are loaded with `torch.load(mmap=True)`, so `PreTrainedMixin.from_pretrained` converts
and places one tensor at a time. `normalize_state_dict` brings the key names of every
transformers version to one form; `save_checkpoint` writes a directory atomically.

This module is a foundation leaf: it imports nothing from `models/`, `ops/` or `reference/`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from esmkernels.core.configuration import CONFIG_NAME, EsmConfig
from esmkernels.core.fair_esm import format_keys, torch_load_safe

logger = logging.getLogger(__name__)

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"

# Looked for in this order in a directory; the first one present wins.
DIR_WEIGHTS: tuple[tuple[str, str], ...] = (
    (SAFE_WEIGHTS_NAME, "hf-safetensors"),
    (SAFE_WEIGHTS_INDEX_NAME, "hf-safetensors-sharded"),
    (WEIGHTS_NAME, "hf-bin"),
    (WEIGHTS_INDEX_NAME, "hf-bin-sharded"),
)

_INV_FREQ = "rotary_embeddings.inv_freq"
_LAYER_INV_FREQ = re.compile(
    r"^(?P<pre>.*?)encoder\.layer\.(?P<i>\d+|\*)\.attention\.self\." + re.escape(_INV_FREQ) + "$"
)


def save_checkpoint(
    save_directory: str | os.PathLike,
    config: EsmConfig,
    state_dict: Mapping[str, Tensor],
    *,
    safe_serialization: bool = True,
) -> Path:
    """Write an HF checkpoint directory: `config.json` + `model.safetensors` (or `pytorch_model.bin`).

    Rotary `inv_freq` is written per layer (transformers v4 layout; transformers 5.23 loads it
    too, renaming it to its shared buffer). Tensors are moved to CPU and made contiguous; tensors
    sharing memory are copied (safetensors refuses shared storage). Each file is written to a
    temporary name and moved into place with `os.replace`, so a crash leaves either the old file
    or the new one, never half of one. Weights files of the other formats (`model.safetensors`,
    `pytorch_model.bin`, their shard indices) left by an earlier save are removed afterwards, so
    they cannot shadow the new file.

    Args:
        save_directory: created if missing.
        config: written as `config.json`.
        state_dict: HF key names -> tensors (tied duplicates already removed).
        safe_serialization: False writes `pytorch_model.bin` (a pickle) instead.

    Returns:
        The directory.

    Example:
        >>> cfg, sd, _ = load_checkpoint("esm2_t6_8M_UR50D.pt")  # doctest: +SKIP
        >>> save_checkpoint("esm2_t6_8M_UR50D_hf", cfg, sd)  # doctest: +SKIP
    """
    directory = Path(save_directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"save_checkpoint: {directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    tensors = _detach_unshared(normalize_state_dict(state_dict, config.num_hidden_layers))
    name = SAFE_WEIGHTS_NAME if safe_serialization else WEIGHTS_NAME
    target = directory / name
    tmp = directory / f".{name}.{uuid.uuid4().hex}.tmp"
    try:
        if safe_serialization:
            from safetensors.torch import save_file

            save_file(tensors, str(tmp), metadata={"format": "pt"})
        else:
            torch.save(tensors, tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    config.save_pretrained(directory)
    # A weights file of another format left from an earlier save would shadow or contradict
    # the new one (the loader takes the first of DIR_WEIGHTS it finds).
    for stale, _ in DIR_WEIGHTS:
        if stale != name and (directory / stale).is_file():
            logger.info("save_checkpoint: removing stale %s", directory / stale)
            (directory / stale).unlink()
    return directory


def _detach_unshared(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for key, value in state.items():
        t = value.detach().to("cpu").contiguous()
        storage = t.untyped_storage()
        if t.numel() and (
            storage.data_ptr() in seen or storage.nbytes() != t.numel() * t.element_size()
        ):
            t = t.clone()  # shares memory with another entry, or is a view of a larger buffer
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


# ---------------------------------------------------------------------------------------------
# Key normalisation
# ---------------------------------------------------------------------------------------------


def normalize_state_dict(state_dict: Mapping[str, Tensor], num_layers: int) -> dict[str, Tensor]:
    """Bring HF-style keys written by any transformers version to one form.

    * `LayerNorm.gamma` / `LayerNorm.beta` -> `LayerNorm.weight` / `LayerNorm.bias`.
    * `...encoder.layer.*.attention.self.rotary_embeddings.inv_freq` (transformers v5 files) and
      a model-level `...rotary_embeddings.inv_freq` -> one key per layer `0..num_layers-1`
      (the same stored tensor for each).

    Args:
        state_dict: key -> tensor.
        num_layers: `config.num_hidden_layers`, the number of per-layer keys to expand to.
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("LayerNorm.gamma"):
            key = key[: -len("gamma")] + "weight"
        elif key.endswith("LayerNorm.beta"):
            key = key[: -len("beta")] + "bias"
        match = _LAYER_INV_FREQ.match(key)
        if match is not None and match["i"] == "*":
            for i in range(num_layers):
                out.setdefault(layer_inv_freq_key(match["pre"], i), value)
            continue
        if match is None and key.endswith(_INV_FREQ) and "encoder.layer." not in key:
            # model-level buffer (transformers v5 in memory): `<pre>rotary_embeddings.inv_freq`
            pre = key[: -len(_INV_FREQ)]
            for i in range(num_layers):
                out.setdefault(layer_inv_freq_key(pre, i), value)
            continue
        if key in out and not torch.equal(out[key], value):
            raise ValueError(f"checkpoint holds two different tensors for {key!r}")
        out[key] = value
    return out


def layer_inv_freq_key(prefix: str, layer: int) -> str:
    """The per-layer rotary key, e.g. `esm.encoder.layer.3.attention.self.rotary_embeddings.inv_freq`."""
    return f"{prefix}encoder.layer.{layer}.attention.self.{_INV_FREQ}"


def is_inv_freq_key(key: str) -> bool:
    return key.endswith(_INV_FREQ)


# ---------------------------------------------------------------------------------------------
# HF formats
# ---------------------------------------------------------------------------------------------


def read_config(directory: Path, config: EsmConfig | None, weights: Path) -> EsmConfig:
    if config is not None:
        return config
    file = directory / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(
            f"{weights} has no {CONFIG_NAME} beside it; pass config=EsmConfig(...) to load bare weights"
        )
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file} holds a JSON {type(data).__name__}, expected an object")
    model_type = data.get("model_type")
    if model_type != "esm":
        raise ValueError(
            f"{file} has model_type={model_type!r}, expected 'esm': this is not an ESM checkpoint"
        )
    return EsmConfig.from_dict(data)


def load_hf_dir(
    directory: Path, config: EsmConfig | None
) -> tuple[EsmConfig, dict[str, Tensor], str]:
    for name, fmt in DIR_WEIGHTS:
        weights = directory / name
        if weights.is_file():
            cfg = read_config(directory, config, weights)
            return cfg, _read_weights(weights, fmt), fmt
    pts = sorted(
        p.name for p in directory.glob("*.pt") if not p.name.endswith("-contact-regression.pt")
    )
    hint = f" (found {pts}: pass the .pt file itself)" if pts else ""
    looked = ", ".join(name for name, _ in DIR_WEIGHTS)
    raise FileNotFoundError(f"no weights in {directory}: looked for {looked}{hint}")


def load_hf_file(path: Path, config: EsmConfig | None) -> tuple[EsmConfig, dict[str, Tensor], str]:
    name = path.name
    if name.endswith(".safetensors.index.json"):
        fmt = "hf-safetensors-sharded"
    elif name.endswith(".bin.index.json"):
        fmt = "hf-bin-sharded"
    elif name.endswith(".safetensors"):
        fmt = "hf-safetensors"
    elif name.endswith(".bin"):
        fmt = "hf-bin"
    else:
        raise ValueError(
            f"unknown checkpoint format: {path}; expected a directory with {CONFIG_NAME} and one of "
            f"{', '.join(n for n, _ in DIR_WEIGHTS)}, a .safetensors / .bin / index .json file, "
            "or a fair-esm .pt file"
        )
    cfg = read_config(path.parent, config, path)
    return cfg, _read_weights(path, fmt), fmt


def _read_weights(path: Path, fmt: str) -> dict[str, Tensor]:
    if fmt == "hf-safetensors":
        return read_safetensors(path)
    if fmt == "hf-bin":
        return _read_bin(path)
    return _read_sharded(path, read_safetensors if fmt == "hf-safetensors-sharded" else _read_bin)


def read_safetensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """All tensors of a `.safetensors` file on CPU; ValueError naming the file when it is corrupt.

    The tensors are copy-on-write views of the memory-mapped file (safetensors' `load_file`):
    nothing is read from disk until a tensor is touched, and writing to one never changes the
    file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing weights file {path}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"{path} is not a readable safetensors file (corrupt or truncated?): {err}"
        ) from None


def _read_bin(path: Path) -> dict[str, Tensor]:
    data = torch_load_safe(path, mmap=True)
    if (
        isinstance(data, Mapping)
        and "state_dict" in data
        and isinstance(data["state_dict"], Mapping)
    ):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not all(isinstance(v, Tensor) for v in data.values()):
        raise ValueError(f"{path} does not hold a flat dict of tensors (a state dict)")
    return {str(k): v for k, v in data.items()}


def _read_sharded(index: Path, read) -> dict[str, Tensor]:
    try:
        data = json.loads(index.read_text())
        weight_map = data["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise ValueError(
            f"{index} is not a shard index (JSON with a 'weight_map'): {err!r}"
        ) from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index}: 'weight_map' must be a non-empty object")
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        # A shard name is a plain file name in the same directory; anything else could read
        # files elsewhere on disk.
        if not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", ".."):
            raise ValueError(f"{index}: shard name {shard!r} is not a plain file name")
    out: dict[str, Tensor] = {}
    for shard in shards:
        file = index.parent / shard
        if not file.is_file():
            raise FileNotFoundError(f"{index} lists shard {shard!r}, which is missing ({file})")
        tensors = read(file)
        wanted = [k for k, s in weight_map.items() if s == shard]
        lost = [k for k in wanted if k not in tensors]
        if lost:
            raise ValueError(
                f"shard {file} lacks {len(lost)} key(s) its index lists: {format_keys(lost)}"
            )
        for key in wanted:
            out[key] = tensors[key]
    return out


__all__ = [
    "DIR_WEIGHTS",
    "SAFE_WEIGHTS_INDEX_NAME",
    "SAFE_WEIGHTS_NAME",
    "WEIGHTS_INDEX_NAME",
    "WEIGHTS_NAME",
    "is_inv_freq_key",
    "layer_inv_freq_key",
    "load_hf_dir",
    "load_hf_file",
    "normalize_state_dict",
    "read_config",
    "read_safetensors",
    "save_checkpoint",
]
