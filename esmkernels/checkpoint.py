"""Read every ESM checkpoint format into one form: an `EsmConfig` and an HF-named state dict.

Formats (the name `load_checkpoint` reports in brackets):

* HF directory with `config.json` and `model.safetensors` (`"hf-safetensors"`), a sharded
  `model.safetensors.index.json` (`"hf-safetensors-sharded"`), `pytorch_model.bin`
  (`"hf-bin"`) or a sharded `pytorch_model.bin.index.json` (`"hf-bin-sharded"`).
* fair-esm `.pt` files: ESM-1b / ESM-1v, pickled with an `argparse.Namespace` under `"args"`
  (`"fair-esm-args"`), and ESM-2, with `cfg["model"]` (`"fair-esm-cfg"`). A
  `<name>-contact-regression.pt` file beside the `.pt` is merged in.
* A Hub id such as `facebook/esm2_t6_8M_UR50D` (through `huggingface_hub`, only when installed,
  only when the string is not a local path, and never at import time).

Key conventions of the returned state dict (HF transformers v4 names, the ones published Hub
files use):

* Rotary `inv_freq` is per layer, `...encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq`.
  transformers v5 saves ONE literal key `...encoder.layer.*.attention.self...inv_freq` (its
  reverse key renaming, checked with transformers 5.23) and holds a model-level
  `...rotary_embeddings.inv_freq` in memory; both are expanded to every layer. Stored values are
  used as they are: ESM-2 trained with them rounded through fp16, so recomputing changes numbers.
* transformers 5.23 also writes `LayerNorm.gamma` / `LayerNorm.beta` (its legacy renaming,
  reversed on save); they are read back as `LayerNorm.weight` / `LayerNorm.bias`.
* The base-model prefix (`esm.`) is kept as stored; `PreTrainedMixin.from_pretrained` adds or
  strips it to fit the model class.

Security: pickled files are read only with `torch.load(..., weights_only=True)`, allowing one
extra class, `argparse.Namespace` (fair-esm's `args` and ESM-2's `cfg["model"]` are namespaces of
plain values). Anything else in the pickle is refused with an error that names it.

This module is a foundation leaf: it imports nothing from `models/`, `ops/` or `reference/`.

Example:
    >>> from esmkernels.checkpoint import load_checkpoint
    >>> config, state_dict, fmt = load_checkpoint("esm2_t6_8M_UR50D.pt")  # doctest: +SKIP
    >>> fmt, config.num_hidden_layers, state_dict["esm.embeddings.word_embeddings.weight"].shape
    ('fair-esm-cfg', 6, torch.Size([33, 320]))
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from esmkernels.configuration import CONFIG_NAME, EsmConfig

logger = logging.getLogger(__name__)

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"

# Looked for in this order in a directory; the first one present wins.
_DIR_WEIGHTS: tuple[tuple[str, str], ...] = (
    (SAFE_WEIGHTS_NAME, "hf-safetensors"),
    (SAFE_WEIGHTS_INDEX_NAME, "hf-safetensors-sharded"),
    (WEIGHTS_NAME, "hf-bin"),
    (WEIGHTS_INDEX_NAME, "hf-bin-sharded"),
)
FORMATS = (
    "hf-safetensors",
    "hf-safetensors-sharded",
    "hf-bin",
    "hf-bin-sharded",
    "fair-esm-args",
    "fair-esm-cfg",
)

_INV_FREQ = "rotary_embeddings.inv_freq"
_LAYER_INV_FREQ = re.compile(
    r"^(?P<pre>.*?)encoder\.layer\.(?P<i>\d+|\*)\.attention\.self\." + re.escape(_INV_FREQ) + "$"
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------


def load_checkpoint(
    path_or_id: str | os.PathLike,
    *,
    config: EsmConfig | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[EsmConfig, dict[str, Tensor], str]:
    """Load any supported ESM checkpoint as `(config, state_dict, format_name)`.

    Args:
        path_or_id: a checkpoint directory, a weights file (`.safetensors`, `.bin`, a shard
            index `.json`, a fair-esm `.pt`), or a Hub id `"org/name"` (downloaded through
            `huggingface_hub` when it is installed and the string is not a local path).
        config: use this configuration instead of the one stored with the weights (needed for a
            bare weights file without a `config.json` beside it).
        revision, cache_dir: passed to `huggingface_hub` for Hub ids.

    Returns:
        `config` (an `EsmConfig`), `state_dict` (HF key names, tensors on CPU in their stored
        dtype, rotary `inv_freq` per layer, see the module docstring) and the format name, one of
        `FORMATS`.

    Raises:
        FileNotFoundError: the path does not exist (and is not a Hub id), or a file it needs
            (config, shard, ...) is missing.
        ValueError: a file is corrupt, truncated, not ESM, or in no known format.
        OSError: a Hub download failed.

    Example:
        >>> cfg, sd, fmt = load_checkpoint("checkpoints/esm2_t6_8M_UR50D")  # doctest: +SKIP
        >>> fmt
        'hf-safetensors'
    """
    if config is not None and not isinstance(config, EsmConfig):
        raise TypeError(
            f"load_checkpoint: config must be an EsmConfig, got {type(config).__name__}"
        )
    path = resolve_path(path_or_id, revision=revision, cache_dir=cache_dir)
    if path.is_dir():
        cfg, state_dict, fmt = _load_hf_dir(path, config)
    elif path.suffix in (".pt", ".pth"):
        cfg, state_dict, fmt = _load_fair_esm(path)
        if config is not None:
            cfg = config
    else:
        cfg, state_dict, fmt = _load_hf_file(path, config)
    return cfg, normalize_state_dict(state_dict, cfg.num_hidden_layers), fmt


def resolve_path(
    path_or_id: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """A local path for `path_or_id`: itself when it exists, else a Hub download of the id.

    Only a string of the form `"org/name"` that does not exist locally is treated as a Hub id.
    """
    if not isinstance(path_or_id, (str, os.PathLike)):
        raise TypeError(f"expected a path or Hub id string, got {type(path_or_id).__name__}")
    path = Path(path_or_id).expanduser()
    if path.exists():
        return path
    text = os.fspath(path_or_id)
    if isinstance(path_or_id, str) and _HUB_ID.match(text) and ".." not in text:
        return _download(text, revision=revision, cache_dir=cache_dir)
    raise FileNotFoundError(
        f"no checkpoint at {text!r}: not an existing file or directory (a Hub id looks like "
        "'facebook/esm2_t6_8M_UR50D')"
    )


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


def _read_config(directory: Path, config: EsmConfig | None, weights: Path) -> EsmConfig:
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


def _load_hf_dir(
    directory: Path, config: EsmConfig | None
) -> tuple[EsmConfig, dict[str, Tensor], str]:
    for name, fmt in _DIR_WEIGHTS:
        weights = directory / name
        if weights.is_file():
            cfg = _read_config(directory, config, weights)
            return cfg, _read_weights(weights, fmt), fmt
    pts = sorted(
        p.name for p in directory.glob("*.pt") if not p.name.endswith("-contact-regression.pt")
    )
    hint = f" (found {pts}: pass the .pt file itself)" if pts else ""
    looked = ", ".join(name for name, _ in _DIR_WEIGHTS)
    raise FileNotFoundError(f"no weights in {directory}: looked for {looked}{hint}")


def _load_hf_file(path: Path, config: EsmConfig | None) -> tuple[EsmConfig, dict[str, Tensor], str]:
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
            f"{', '.join(n for n, _ in _DIR_WEIGHTS)}, a .safetensors / .bin / index .json file, "
            "or a fair-esm .pt file"
        )
    cfg = _read_config(path.parent, config, path)
    return cfg, _read_weights(path, fmt), fmt


def _read_weights(path: Path, fmt: str) -> dict[str, Tensor]:
    if fmt == "hf-safetensors":
        return read_safetensors(path)
    if fmt == "hf-bin":
        return _read_bin(path)
    return _read_sharded(path, read_safetensors if fmt == "hf-safetensors-sharded" else _read_bin)


def read_safetensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """All tensors of a `.safetensors` file on CPU; ValueError naming the file when it is corrupt."""
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
    data = torch_load_safe(path)
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


def torch_load_safe(path: str | os.PathLike) -> Any:
    """`torch.load` with `weights_only=True`, allowing only `argparse.Namespace` besides tensors.

    Raises ValueError naming the file and the refused class when the pickle holds anything else,
    and when the file is truncated or not a torch file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing file {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        what = f"class {found.group(1)}" if found else "an object"
        raise ValueError(
            f"refusing to load {path}: it pickles {what}, which is not a tensor, plain container "
            "or argparse.Namespace, and unpickling it could run arbitrary code. Convert the file "
            "where you trust it (e.g. torch.save({'model': state_dict, 'cfg': {'model': "
            "vars(cfg)}}) or save_pretrained) and load the converted file."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise ValueError(
            f"{path} is not a readable torch checkpoint (corrupt or truncated?): {err}"
        ) from None


def format_keys(keys, limit: int = 20) -> str:
    """Sorted keys, comma separated, the first `limit` then "and N more"."""
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", and {len(keys) - limit} more" if len(keys) > limit else "")


# ---------------------------------------------------------------------------------------------
# fair-esm formats
# ---------------------------------------------------------------------------------------------


def _load_fair_esm(path: Path) -> tuple[EsmConfig, dict[str, Tensor], str]:
    raise ValueError(f"{path}: fair-esm .pt files are not supported yet")


# ---------------------------------------------------------------------------------------------
# Hub
# ---------------------------------------------------------------------------------------------


def _download(repo_id: str, *, revision: str | None, cache_dir: str | os.PathLike | None) -> Path:
    try:
        import huggingface_hub
    except ImportError:
        raise FileNotFoundError(
            f"{repo_id!r} is not a local path, and huggingface_hub is not installed to download it "
            "as a Hub id: pip install 'esmkernels[hub]', or pass a local path"
        ) from None
    patterns = (
        [CONFIG_NAME, SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, "model-*.safetensors"],
        [CONFIG_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME, "pytorch_model-*.bin"],
    )
    local = None
    for allow in patterns:
        try:
            local = Path(
                huggingface_hub.snapshot_download(
                    repo_id,
                    revision=revision,
                    cache_dir=None if cache_dir is None else os.fspath(cache_dir),
                    allow_patterns=allow,
                )
            )
        except Exception as err:  # offline, connection, HTTP and auth errors have many types
            raise OSError(
                f"could not download {repo_id!r}: offline? pass a local path "
                f"({type(err).__name__}: {err})"
            ) from err
        if any((local / name).is_file() for name, _ in _DIR_WEIGHTS):
            return local
    raise FileNotFoundError(f"Hub repo {repo_id!r} has no ESM weights ({local})")


__all__ = [
    "FORMATS",
    "SAFE_WEIGHTS_INDEX_NAME",
    "SAFE_WEIGHTS_NAME",
    "WEIGHTS_INDEX_NAME",
    "WEIGHTS_NAME",
    "format_keys",
    "is_inv_freq_key",
    "layer_inv_freq_key",
    "load_checkpoint",
    "normalize_state_dict",
    "read_safetensors",
    "resolve_path",
    "torch_load_safe",
]
