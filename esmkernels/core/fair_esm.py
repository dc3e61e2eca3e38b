"""fair-esm files: safe unpickling and the ESM-1b / ESM-1v / ESM-2 key names.

Shared by the two readers of fair-esm `.pt` files, `esmkernels.core.checkpoint` (language models,
and the entry point for every format) and `esmkernels.core.convert_esmfold` (ESMFold, whose file may
hold an ESM-2 stem). It depends on neither, so the two do not import each other both ways:
`checkpoint` -> `convert_esmfold` -> `fair_esm`, and `checkpoint` -> `fair_esm`.

* `torch_load_safe`: `torch.load(weights_only=True)` that also reads the omegaconf configs of
  the published ESMFold files, without importing omegaconf or running code from the file.
* `fair_esm_to_hf`: fair-esm state-dict keys -> transformers' `EsmForMaskedLM` keys.

This module is a foundation leaf: it imports nothing from `models/`, `ops/` or `reference/`.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def torch_load_safe(path: str | os.PathLike, *, mmap: bool = False) -> Any:
    """`torch.load(weights_only=True)` that also reads configs pickled as omegaconf objects.

    With `mmap=True` a zip checkpoint (every `torch.save` since torch 1.6) is memory-mapped
    (`torch.load(mmap=True)`): its tensors are copy-on-write views of the file, read from disk
    when first touched. Legacy files, and any file torch cannot map, are read into memory.

    Besides tensors and plain containers it allows `argparse.Namespace` (fair-esm's `args`,
    ESM-2's `cfg["model"]`) and omegaconf configs (`DictConfig`, `ListConfig` and their nodes,
    as in the published `esmfold_3B_v1.pt`): the pickle's globals are listed first
    (`torch.serialization.get_unsafe_globals_in_checkpoint`); if each is an `omegaconf.*` class
    or a type marker such configs carry (`typing.Any`, `builtins.dict`, ..., see
    `CONFIG_MARKER_GLOBALS`), the file is read with an inert stand-in class under each of those
    names, which only records what the pickle hands it, and the configs come back as plain
    dicts, lists and values. omegaconf itself is never imported and nothing in the file is
    called. Legacy (non-zip) files, which cannot be listed, learn the names from the refusals.

    Raises ValueError naming the file and the refused global when the pickle holds anything
    else, and when the file is truncated or not a torch file.

    Example:
        >>> data = torch_load_safe("esmfold_3B_v1.pt")  # doctest: +SKIP
        >>> type(data["cfg"]["model"]).__name__, data["cfg"]["model"]["trunk"]["num_blocks"]
        ('dict', 48)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing file {path}")
    try:
        listed: list[str] | None = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except ValueError:
        listed = None  # not a zip checkpoint: a legacy torch.save file or a bare pickle
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, KeyError) as err:
        raise ValueError(
            f"{path} is not a readable torch checkpoint (corrupt or truncated?): {err}"
        ) from None
    stand_ins: dict[str, Any] = {}
    for name in listed or ():
        if name == _NAMESPACE:
            continue
        if not _is_config_global(name):
            raise _refusal(path, name)
        stand_ins[name] = _stand_in(name)
    use_mmap = mmap and listed is not None  # only zip checkpoints can be mapped
    for _ in range(256):  # bounded: each round learns one more global of a legacy file
        allowed = [argparse.Namespace, *((cls, name) for name, cls in stand_ins.items())]
        try:
            with torch.serialization.safe_globals(allowed):
                data = torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
            break
        except pickle.UnpicklingError as err:
            found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(err), re.IGNORECASE)
            name = found.group(1) if found else None
            if name and "." not in name:
                name = "builtins." + name  # torch's message drops the builtins module
            if listed is None and name and _is_config_global(name) and name not in stand_ins:
                stand_ins[name] = _stand_in(name)
                continue
            raise _refusal(path, name) from None
        except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
            if use_mmap:  # e.g. storages torch cannot map; reading into memory may still work
                use_mmap = False
                continue
            raise ValueError(
                f"{path} is not a readable torch checkpoint (corrupt or truncated?): {err}"
            ) from None
        except (TypeError, AttributeError) as err:  # a stand-in used in a way configs never are
            raise _refusal(path, None, f" ({err})") from None
    else:
        raise _refusal(path, None)
    return _configs_to_plain(data, path) if stand_ins else data


_NAMESPACE = "argparse.Namespace"
# Type markers omegaconf configs pickle in their node metadata (ref_type, object_type, key_type,
# element_type, the resolver cache) and the fair-esm ESMFold config dataclasses a structured
# config may name as its object_type. They become inert stand-ins like the omegaconf classes
# (checked with omegaconf 2.4: typing.Any, builtins.dict / list / int, collections.defaultdict).
CONFIG_MARKER_GLOBALS = frozenset(
    {
        "typing.Any",
        "builtins.dict",
        "builtins.list",
        "builtins.tuple",
        "builtins.int",
        "builtins.float",
        "builtins.str",
        "builtins.bool",
        "builtins.bytes",
        "collections.defaultdict",
        "esm.esmfold.v1.esmfold.ESMFoldConfig",
        "esm.esmfold.v1.trunk.FoldingTrunkConfig",
        "esm.esmfold.v1.trunk.StructureModuleConfig",
    }
)


def _is_config_global(name: str) -> bool:
    return name.startswith("omegaconf.") or name in CONFIG_MARKER_GLOBALS


def _refusal(path: Path, name: str | None, detail: str = "") -> ValueError:
    what = f"class {name}" if name else "an object"
    return ValueError(
        f"refusing to load {path}: it pickles {what}, which is not a tensor, plain container, "
        f"argparse.Namespace or omegaconf config, and unpickling it could run arbitrary code"
        f"{detail}. Convert the file where you trust it (e.g. torch.save({{'model': state_dict, "
        "'cfg': {'model': vars(cfg)}}) or save_pretrained) and load the converted file."
    )


class _Pickled:
    """Inert stand-in for a class a config pickle names: it records its arguments and state.

    Unpickling builds it by `__new__` (NEWOBJ), by a call (REDUCE) and `__setstate__` (BUILD);
    none of these runs code from the file.
    """

    pickled_name = ""

    def __new__(cls, *args: Any, **kwargs: Any):
        self = object.__new__(cls)
        self.args = args
        self.state = None
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = {**state[0], **(state[1] or {})}  # (dict, slots) state
        self.state = state


def _new_dict(*args: Any) -> dict:
    return {}  # `defaultdict(factory)` in a config's resolver cache; SETITEMS needs a real dict


def _stand_in(name: str) -> Any:
    if name == "collections.defaultdict":
        return _new_dict
    return type(f"Pickled[{name}]", (_Pickled,), {"pickled_name": name})


def _configs_to_plain(obj: Any, path: Path) -> Any:
    """Replace pickled omegaconf containers and nodes by the plain values they hold."""
    if isinstance(obj, _Pickled):
        state = obj.state if isinstance(obj.state, dict) else {}
        if obj.pickled_name.startswith("omegaconf."):
            if "_content" in state:  # DictConfig / ListConfig (None, or a "${..}" string too)
                return _configs_to_plain(state["_content"], path)
            if "_val" in state:  # AnyNode, StringNode, IntegerNode, ... hold their value here
                return _configs_to_plain(state["_val"], path)
        name = obj.pickled_name
    elif (isinstance(obj, type) and issubclass(obj, _Pickled)) or obj is _new_dict:
        name = "collections.defaultdict" if obj is _new_dict else obj.pickled_name  # a bare class
    else:
        name = None
    if name is not None:
        raise ValueError(
            f"refusing to load {path}: {name} appears outside an omegaconf config's metadata, "
            "where omegaconf never puts it"
        )
    if isinstance(obj, Mapping):
        return {k: _configs_to_plain(v, path) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_configs_to_plain(v, path) for v in obj)
    return obj


def format_keys(keys, limit: int = 20) -> str:
    """Sorted keys, comma separated, the first `limit` then "and N more"."""
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", and {len(keys) - limit} more" if len(keys) > limit else "")


# ---------------------------------------------------------------------------------------------
# fair-esm key names
# ---------------------------------------------------------------------------------------------


# fairseq prefixes of the released files: the body lives under `encoder.sentence_encoder.`, the
# LM head under `encoder.` (fair-esm strips both in `pretrained.py`); `model.` appears in some
# re-saved files.
_FAIR_PREFIX = re.compile(r"^(model\.)?(encoder\.sentence_encoder\.|encoder\.|sentence_encoder\.)?")
# fair-esm module name (after the prefix) -> HF name; `{i}` is the layer index.
_FAIR_LAYER: dict[str, str] = {
    "self_attn.q_proj": "attention.self.query",
    "self_attn.k_proj": "attention.self.key",
    "self_attn.v_proj": "attention.self.value",
    "self_attn.out_proj": "attention.output.dense",
    "self_attn.rot_emb": "attention.self.rotary_embeddings",
    "self_attn_layer_norm": "attention.LayerNorm",
    "fc1": "intermediate.dense",
    "fc2": "output.dense",
    "final_layer_norm": "LayerNorm",
}
_FAIR_TOP: dict[str, str] = {
    "embed_tokens.weight": "esm.embeddings.word_embeddings.weight",
    "embed_positions.weight": "esm.embeddings.position_embeddings.weight",
    "emb_layer_norm_before.weight": "esm.embeddings.layer_norm.weight",
    "emb_layer_norm_before.bias": "esm.embeddings.layer_norm.bias",
    "emb_layer_norm_after.weight": "esm.encoder.emb_layer_norm_after.weight",
    "emb_layer_norm_after.bias": "esm.encoder.emb_layer_norm_after.bias",
    "lm_head.dense.weight": "lm_head.dense.weight",
    "lm_head.dense.bias": "lm_head.dense.bias",
    "lm_head.layer_norm.weight": "lm_head.layer_norm.weight",
    "lm_head.layer_norm.bias": "lm_head.layer_norm.bias",
    "lm_head.weight": "lm_head.decoder.weight",
    "lm_head.bias": "lm_head.bias",
    "contact_head.regression.weight": "esm.contact_head.regression.weight",
    "contact_head.regression.bias": "esm.contact_head.regression.bias",
}
_FAIR_LAYER_KEY = re.compile(r"^layers\.(\d+)\.(.+)\.(weight|bias|inv_freq)$")
# fairseq bookkeeping entries that carry no weights
_FAIR_SKIP = re.compile(r"(^|\.)(version|_float_tensor)$")
# fair-esm's Alphabet for ESM-1b, ESM-1v and ESM-2 (see configuration.ESM_VOCAB)
FAIR_PAD_ID, FAIR_MASK_ID = 1, 32


def config_field(ns: Any, *names: str, default: Any = None) -> Any:
    """First present attribute (Namespace) or item (dict) among `names`."""
    for name in names:
        if isinstance(ns, Mapping) and name in ns:
            return ns[name]
        if not isinstance(ns, Mapping) and hasattr(ns, name):
            return getattr(ns, name)
    return default


def fair_esm_to_hf(
    fair_state: Mapping[str, Tensor], source: str = "checkpoint"
) -> dict[str, Tensor]:
    """Rename a fair-esm ESM-1b / ESM-1v / ESM-2 state dict to HF `EsmForMaskedLM` keys.

    Accepts the raw file keys (`encoder.sentence_encoder.layers.0.self_attn.q_proj.weight`,
    `encoder.lm_head.weight`) and the stripped names fair-esm's modules use
    (`layers.0.self_attn.q_proj.weight`, `lm_head.weight`). Raises ValueError listing keys that are
    not ESM-1b / ESM-2 weights (e.g. ESM-1's `bias_k`).
    """
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for raw, value in fair_state.items():
        key = _FAIR_PREFIX.sub("", raw, count=1)
        if _FAIR_SKIP.search(key):
            continue
        if key in _FAIR_TOP:
            hf = _FAIR_TOP[key]
        elif (m := _FAIR_LAYER_KEY.match(key)) and m.group(2) in _FAIR_LAYER:
            hf = f"esm.encoder.layer.{m.group(1)}.{_FAIR_LAYER[m.group(2)]}.{m.group(3)}"
        else:
            unknown.append(raw)
            continue
        if hf in out:
            raise ValueError(f"{source}: two fair-esm keys map to {hf!r} (one is {raw!r})")
        out[hf] = value
    if unknown:
        raise ValueError(
            f"{source}: {len(unknown)} key(s) are not ESM-1b / ESM-1v / ESM-2 weights: "
            f"{format_keys(unknown)}"
        )
    return out


__all__ = [
    "CONFIG_MARKER_GLOBALS",
    "FAIR_MASK_ID",
    "FAIR_PAD_ID",
    "config_field",
    "fair_esm_to_hf",
    "format_keys",
    "torch_load_safe",
]
