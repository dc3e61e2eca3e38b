"""Read every ESM checkpoint format into one form: an `EsmConfig` and an HF-named state dict.

Formats (the name `load_checkpoint` reports in brackets):

* HF directory with `config.json` and `model.safetensors` (`"hf-safetensors"`), a sharded
  `model.safetensors.index.json` (`"hf-safetensors-sharded"`), `pytorch_model.bin`
  (`"hf-bin"`) or a sharded `pytorch_model.bin.index.json` (`"hf-bin-sharded"`); read (and
  written, `save_checkpoint`) by `esmkernels.core.hf_checkpoint`.
* fair-esm `.pt` files: ESM-1b / ESM-1v, pickled with an `argparse.Namespace` under `"args"`
  (`"fair-esm-args"`), and ESM-2, with `cfg["model"]` (`"fair-esm-cfg"`). A
  `<name>-contact-regression.pt` file beside the `.pt` is merged in.
* fair-esm ESMFold `.pt` files (`esmfold_3B_v1.pt`, `"fair-esm-esmfold"`, converted by
  `esmkernels.core.convert_esmfold`, which this module imports; it does not import this
  one). They hold the folding trunk and heads only; the ESM-2 3B stem comes from its own checkpoint, `load_checkpoint("esmfold_3B_v1.pt",
  stem="esm2_t36_3B_UR50D.pt")`. Without `stem` the state dict has no `esm.*` keys.
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

Tensors are not copied into memory: safetensors files are memory-mapped and zip `.pt` / `.bin`
files are read with `torch.load(mmap=True)`, so each tensor is a copy-on-write view of the file
that is read from disk when first touched (`PreTrainedMixin.from_pretrained` places and casts
them one at a time).

Security: pickled files are read only with `torch.load(..., weights_only=True)`
(`esmkernels.core.fair_esm.torch_load_safe`), allowing
`argparse.Namespace` (fair-esm's `args` and ESM-2's `cfg["model"]` are namespaces of plain
values) and omegaconf configs, which are read through inert stand-in classes into plain dicts
without importing omegaconf (`torch_load_safe`). Anything else in the pickle is refused with an
error that names it.

This module is a foundation leaf: it imports nothing from `models/`, `ops/` or `reference/`.

Example:
    >>> from esmkernels.core.checkpoint import load_checkpoint
    >>> config, state_dict, fmt = load_checkpoint("esm2_t6_8M_UR50D.pt")  # doctest: +SKIP
    >>> fmt, config.num_hidden_layers, state_dict["esm.embeddings.word_embeddings.weight"].shape
    ('fair-esm-cfg', 6, torch.Size([33, 320]))
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from esmkernels.core.configuration import CONFIG_NAME, EsmConfig
from esmkernels.core.convert_esmfold import convert_fair_esmfold, is_fair_esmfold
from esmkernels.core.fair_esm import (
    FAIR_MASK_ID,
    FAIR_PAD_ID,
    config_field,
    fair_esm_to_hf,
    torch_load_safe,
)
from esmkernels.core.hf_checkpoint import (
    DIR_WEIGHTS,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    is_inv_freq_key,
    load_hf_dir,
    load_hf_file,
    normalize_state_dict,
)

FORMATS = (
    "hf-safetensors",
    "hf-safetensors-sharded",
    "hf-bin",
    "hf-bin-sharded",
    "fair-esm-args",
    "fair-esm-cfg",
    "fair-esm-esmfold",
)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# A missing path with one of these endings is a file the user meant, never a Hub id.
_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".json", ".ckpt", ".gz", ".zip")


def is_hub_id(spec: str) -> bool:
    """Whether `spec` is a plain Hub id `org/name` (no file suffix, no `..`).

    Example:
        >>> is_hub_id("facebook/esm2_t6_8M_UR50D"), is_hub_id("fair/nope.pt")
        (True, False)
    """
    return (
        bool(_HUB_ID.match(spec)) and ".." not in spec and not spec.lower().endswith(_FILE_SUFFIXES)
    )


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------


def load_checkpoint(
    path_or_id: str | os.PathLike,
    *,
    config: EsmConfig | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    stem: Any = None,
) -> tuple[EsmConfig, dict[str, Tensor], str]:
    """Load any supported ESM checkpoint as `(config, state_dict, format_name)`.

    Args:
        path_or_id: a checkpoint directory, a weights file (`.safetensors`, `.bin`, a shard
            index `.json`, a fair-esm `.pt`), or a Hub id `"org/name"` (downloaded through
            `huggingface_hub` when it is installed and the string is not a local path).
        config: use this configuration instead of the one stored with the weights (needed for a
            bare weights file without a `config.json` beside it).
        revision, cache_dir: passed to `huggingface_hub` for Hub ids.
        stem: only for fair-esm ESMFold `.pt` files, which lack their ESM-2 language model:
            its checkpoint (any path or Hub id this function reads, e.g.
            `"esm2_t36_3B_UR50D.pt"`) or a loaded `(config, state_dict)`; merged under `esm.`.

    Returns:
        `config` (an `EsmConfig`), `state_dict` (HF key names, tensors on CPU in their stored
        dtype, memory-mapped copy-on-write views of the file where the format allows, rotary
        `inv_freq` per layer, see the module docstring) and the format name, one of `FORMATS`.

    Raises:
        FileNotFoundError: the path does not exist (and is not a Hub id), or a file it needs
            (config, shard, ...) is missing.
        ValueError: a file is corrupt, truncated, not ESM, or in no known format; `stem` given
            for a checkpoint that is not a fair-esm ESMFold file.
        OSError: a Hub download failed.

    Example:
        >>> cfg, sd, fmt = load_checkpoint("checkpoints/esm2_t6_8M_UR50D")  # doctest: +SKIP
        >>> fmt
        'hf-safetensors'
        >>> cfg, sd, fmt = load_checkpoint(  # doctest: +SKIP
        ...     "esmfold_3B_v1.pt", stem="esm2_t36_3B_UR50D.pt")
        >>> fmt, cfg.is_folding_model, "esm.embeddings.word_embeddings.weight" in sd
        ('fair-esm-esmfold', True, True)
    """
    if config is not None and not isinstance(config, EsmConfig):
        raise TypeError(
            f"load_checkpoint: config must be an EsmConfig, got {type(config).__name__}"
        )
    path = resolve_path(path_or_id, revision=revision, cache_dir=cache_dir)
    if path.is_dir():
        cfg, state_dict, fmt = load_hf_dir(path, config)
    elif path.suffix in (".pt", ".pth"):
        cfg, state_dict, fmt = _load_fair_esm(path, stem)
        if config is not None:
            cfg = config
    else:
        cfg, state_dict, fmt = load_hf_file(path, config)
    if stem is not None and fmt != "fair-esm-esmfold":
        raise ValueError(
            f"load_checkpoint: stem= is only for fair-esm ESMFold .pt files (trunk weights "
            f"only), but {os.fspath(path_or_id)!r} is a {fmt} checkpoint"
        )
    return cfg, normalize_state_dict(state_dict, cfg.num_hidden_layers), fmt


def resolve_path(
    path_or_id: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """A local path for `path_or_id`: itself when it exists, else a Hub download of the id.

    Only a string of the form `"org/name"` that does not exist locally and does not end like a
    file (`.pt`, `.safetensors`, ...; `is_hub_id`) is treated as a Hub id.
    """
    if not isinstance(path_or_id, (str, os.PathLike)):
        raise TypeError(f"expected a path or Hub id string, got {type(path_or_id).__name__}")
    path = Path(path_or_id).expanduser()
    if path.exists():
        return path
    text = os.fspath(path_or_id)
    if isinstance(path_or_id, str) and is_hub_id(text):
        return _download(text, revision=revision, cache_dir=cache_dir)
    raise FileNotFoundError(
        f"no checkpoint at {text!r}: no such file or directory (a Hub id looks like "
        "'facebook/esm2_t6_8M_UR50D')"
    )


# ---------------------------------------------------------------------------------------------
# fair-esm formats
# ---------------------------------------------------------------------------------------------


def _fair_config(
    state: Mapping[str, Tensor], model_args: Any, rotary: bool, path: Path
) -> EsmConfig:
    """EsmConfig of a converted fair-esm model: sizes from the weights, heads from args/cfg.

    Constants follow fair-esm's modules: LayerNorm eps 1e-5 (torch's default; ESM1bLayerNorm),
    no dropout at inference, learned positions of ESM-1b offset by padding_idx + 1 (so the table
    has `max_positions + 2` rows, as HF's `max_position_embeddings=1026`), ESM-2 FFN 4 x hidden.
    """
    words = state.get("esm.embeddings.word_embeddings.weight")
    if words is None or words.ndim != 2:
        raise ValueError(f"{path}: no embed_tokens.weight; not an ESM checkpoint")
    layers = {int(k.split(".")[3]) for k in state if k.startswith("esm.encoder.layer.")}
    if not layers or layers != set(range(max(layers) + 1)):
        raise ValueError(f"{path}: layer indices {sorted(layers)} are not 0..N-1")
    fc1 = state.get("esm.encoder.layer.0.intermediate.dense.weight")
    heads = config_field(model_args, "encoder_attention_heads", "attention_heads")
    if heads is None:
        raise ValueError(f"{path}: the args/cfg lack encoder_attention_heads")
    hidden = int(words.shape[1])
    n_layers = len(layers)
    for names, actual in (
        (("encoder_embed_dim", "embed_dim"), hidden),
        (("encoder_layers", "layers", "num_layers"), n_layers),
        (("encoder_ffn_embed_dim", "ffn_embed_dim"), None if fc1 is None else int(fc1.shape[0])),
    ):
        stated = config_field(model_args, *names)
        if stated is not None and actual is not None and int(stated) != actual:
            raise ValueError(
                f"{path}: args/cfg say {names[0]}={stated} but the weights have {actual}"
            )
    if rotary:
        max_positions = 1026
    else:
        pos = state.get("esm.embeddings.position_embeddings.weight")
        if pos is None:
            raise ValueError(f"{path}: ESM-1b-style checkpoint without embed_positions.weight")
        max_positions = int(pos.shape[0])
    return EsmConfig(
        vocab_size=int(words.shape[0]),
        mask_token_id=FAIR_MASK_ID,
        pad_token_id=FAIR_PAD_ID,
        hidden_size=hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=int(heads),
        intermediate_size=int(fc1.shape[0]) if fc1 is not None else 4 * hidden,
        max_position_embeddings=max_positions,
        layer_norm_eps=1e-5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        position_embedding_type="rotary" if rotary else "absolute",
        emb_layer_norm_before="esm.embeddings.layer_norm.weight" in state,
        # fair-esm: ESM2(token_dropout=True) by default; ProteinBertModel reads it from args, False if absent
        token_dropout=bool(config_field(model_args, "token_dropout", default=rotary)),
        architectures=["EsmForMaskedLM"],
    )


def _load_fair_esm(path: Path, stem: Any = None) -> tuple[EsmConfig, dict[str, Tensor], str]:
    if path.name.endswith("-contact-regression.pt"):
        raise ValueError(f"{path} is a contact-regression file; pass the model .pt beside it")
    data = torch_load_safe(path, mmap=True)
    if is_fair_esmfold(data):
        if stem is not None and not isinstance(stem, (str, os.PathLike, tuple)):
            raise TypeError(
                "stem must be an ESM-2 checkpoint path / Hub id or a (EsmConfig, state_dict) "
                f"pair, got {type(stem).__name__}"
            )
        if isinstance(stem, (str, os.PathLike)):
            stem_config, stem_weights, _ = load_checkpoint(stem)
            stem = (stem_config, stem_weights)
        config, state = convert_fair_esmfold(data, stem=stem)
        return config, state, "fair-esm-esmfold"
    if not isinstance(data, Mapping) or not isinstance(data.get("model"), Mapping):
        found = sorted(data)[:10] if isinstance(data, Mapping) else type(data).__name__
        raise ValueError(
            f"{path} is neither a fair-esm checkpoint (a dict with 'model' weights and 'args' or "
            f"'cfg') nor another known format; found {found}"
        )
    cfg = data.get("cfg")
    model_cfg = config_field(cfg, "model") if cfg is not None else None
    args = data.get("args")
    if model_cfg is not None:
        fmt, model_args = "fair-esm-cfg", model_cfg
        arch = config_field(model_cfg, "arch", "_name", default="esm2")
    elif args is not None:
        fmt, model_args = "fair-esm-args", args
        arch = config_field(args, "arch")
    else:
        raise ValueError(
            f"{path}: fair-esm checkpoint without 'args' or 'cfg'; cannot tell the model"
        )
    if fmt == "fair-esm-args" and arch != "roberta_large":
        raise ValueError(
            f"{path}: fair-esm arch {arch!r} is not supported; only ESM-1b / ESM-1v "
            "('roberta_large') and ESM-2 checkpoints are (not ESM-1, the MSA Transformer or ESM-IF)"
        )
    state = fair_esm_to_hf(data["model"], source=str(path))
    if fmt == "fair-esm-args":
        # fair-esm zeroes the <mask> embedding of ESM-1b/1v when it loads them (pretrained.py,
        # "for token drop"); transformers' converted files carry that zero row too.
        # In fair-esm the LM head shares that tensor, so its row is zeroed as well.
        old = state["esm.embeddings.word_embeddings.weight"]
        words = old.clone()
        if words.shape[0] > FAIR_MASK_ID:
            words[FAIR_MASK_ID] = 0
        state["esm.embeddings.word_embeddings.weight"] = words
        decoder = state.get("lm_head.decoder.weight")
        if decoder is not None and decoder.shape == old.shape and torch.equal(decoder, old):
            state["lm_head.decoder.weight"] = words
    regression = path.with_name(path.stem + "-contact-regression.pt")
    if regression.is_file():
        for key, value in _read_regression(regression).items():
            if key in state and not torch.equal(state[key], value):
                raise ValueError(f"{path} and {regression.name} hold different tensors for {key!r}")
            state[key] = value
    rotary = any(is_inv_freq_key(k) for k in state) or fmt == "fair-esm-cfg"
    return _fair_config(state, model_args, rotary, path), state, fmt


def _read_regression(path: Path) -> dict[str, Tensor]:
    data = torch_load_safe(path)
    weights = data.get("model", data) if isinstance(data, Mapping) else None
    out: dict[str, Tensor] = {}
    for key, value in (weights or {}).items():
        m = re.search(r"(^|\.)regression\.(weight|bias)$", str(key))
        if m is None or not isinstance(value, Tensor):
            raise ValueError(f"{path}: unexpected entry {key!r} in a contact-regression file")
        hf = f"esm.contact_head.regression.{m.group(2)}"
        if hf in out:
            raise ValueError(f"{path}: two entries map to {hf!r} (one is {key!r})")
        out[hf] = value
    if len(out) != 2:
        raise ValueError(
            f"{path}: expected regression.weight and regression.bias, found {sorted(out)}"
        )
    return out


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
        if any((local / name).is_file() for name, _ in DIR_WEIGHTS):
            return local
    raise FileNotFoundError(f"Hub repo {repo_id!r} has no ESM weights ({local})")


__all__ = ["FORMATS", "load_checkpoint", "resolve_path"]
