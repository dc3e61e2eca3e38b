"""fair-esm ESMFold checkpoints (`esmfold_3B_v1.pt`, `esmfold_3B_v0.pt`) -> (EsmConfig, HF keys).

A fair-esm ESMFold file is `{"model": state_dict, "cfg": {"model": cfg}}`. Its `cfg` holds the
folding head only (`trunk`, `trunk.structure_module` with openfold names `c_s`, `no_blocks`, ...,
`lddt_head_hid_dim`, ...); its state dict holds every ESMFold weight except the ESM-2 stem, which
fair-esm loads separately (`esm2_t36_3B_UR50D`). The non-stem key names are already the ones
transformers uses (`trunk.*`, `esm_s_combine`, `esm_s_mlp.*`, `embedding.*`, `*_head.*`,
`af2_to_esm`), so they are kept; the structure-module config keys are renamed.

The stem comes from its own ESM-2 checkpoint, as a loaded `(config, state_dict)` pair;
`esmkernels.core.checkpoint.load_checkpoint(path, stem=...)` also takes a path or Hub id for it and
reads it first. Without it the
returned state dict has no `esm.*` keys and the config describes ESM-2 3B (ESMFold v0 / v1's
stem). A file that does store the stem (fair-esm names under `esm.`) has it converted.

The published files pickle their cfg as omegaconf objects; `esmkernels.core.fair_esm.torch_load_safe`
reads those into plain dicts without importing omegaconf (see its docstring), so
`load_checkpoint("esmfold_3B_v1.pt", stem="esm2_t36_3B_UR50D.pt")` and
`EsmForProteinFolding.from_pretrained(...)` with the same arguments read them directly.

This module is a foundation leaf: it imports only `esmkernels.core.configuration` and
`esmkernels.core.fair_esm`. `esmkernels.core.checkpoint` imports it (never the other way round).

Example:
    >>> from esmkernels.core.checkpoint import load_checkpoint
    >>> stem = load_checkpoint("esm2_t36_3B_UR50D.pt")[:2]  # doctest: +SKIP
    >>> config, state_dict = load_fair_esmfold("esmfold_3B_v1.pt", stem=stem)  # doctest: +SKIP
    >>> config.esmfold_config.trunk.num_blocks, "esm.embeddings.word_embeddings.weight" in state_dict
    (48, True)
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any, TypeAlias

import torch

from esmkernels.core.configuration import (
    ESM_VOCAB,
    EsmConfig,
    EsmFoldConfig,
    StructureModuleConfig,
    TrunkConfig,
)
from esmkernels.core.fair_esm import fair_esm_to_hf, torch_load_safe

# A stem: what `load_checkpoint` returns for an ESM-2 checkpoint, (config, weights).
Stem: TypeAlias = tuple[EsmConfig, Mapping[str, torch.Tensor]]

# openfold / fair-esm structure-module config names -> transformers' names.
STRUCTURE_MODULE_KEYS = {
    "c_s": "sequence_dim",
    "c_z": "pairwise_dim",
    "c_ipa": "ipa_dim",
    "c_resnet": "resnet_dim",
    "no_heads_ipa": "num_heads_ipa",
    "no_qk_points": "num_qk_points",
    "no_v_points": "num_v_points",
    "dropout_rate": "dropout_rate",
    "no_blocks": "num_blocks",
    "no_transition_layers": "num_transition_layers",
    "no_resnet_blocks": "num_resnet_blocks",
    "no_angles": "num_angles",
    "trans_scale_factor": "trans_scale_factor",
    "epsilon": "epsilon",
    "inf": "inf",
}

# ESM-2 3B (esm2_t36_3B_UR50D), the stem of ESMFold v0 and v1, in transformers' config keys.
ESM2_3B_STEM = {
    "vocab_size": 33,
    "mask_token_id": 32,
    "pad_token_id": 1,
    "hidden_size": 2560,
    "num_hidden_layers": 36,
    "num_attention_heads": 40,
    "intermediate_size": 10240,
    "max_position_embeddings": 1026,
    "layer_norm_eps": 1e-5,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "position_embedding_type": "rotary",
    "emb_layer_norm_before": False,
    "token_dropout": True,
}


def _plain(obj: Any) -> Any:
    """Nested config object (dict, Namespace, omegaconf-like mapping) -> nested dicts."""
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, Mapping) or (hasattr(obj, "items") and hasattr(obj, "keys")):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def is_fair_esmfold(data: Any) -> bool:
    """True when `data` (a loaded `.pt` object) looks like a fair-esm ESMFold checkpoint."""
    if not isinstance(data, Mapping) or "model" not in data or "cfg" not in data:
        return False
    model = data["model"]
    return isinstance(model, Mapping) and any(str(k).startswith("trunk.") for k in model)


def esmfold_config_from_fair(cfg: Any, stem_config: EsmConfig | None = None) -> EsmConfig:
    """`EsmConfig` (is_folding_model=True) from a fair-esm ESMFold `cfg["model"]`.

    Unknown keys are ignored (fair-esm's `_name` markers and training-only options); the stem
    part comes from `stem_config`, else ESM-2 3B.
    """
    cfg = _plain(cfg)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("trunk"), dict):
        raise ValueError(
            "not a fair-esm ESMFold config: cfg['model'] has no 'trunk' section "
            f"(keys: {sorted(cfg) if isinstance(cfg, dict) else type(cfg).__name__})"
        )
    trunk = dict(cfg["trunk"])
    sm_in = trunk.pop("structure_module", None) or {}
    sm = {}
    for key, value in sm_in.items():
        if key in STRUCTURE_MODULE_KEYS:
            sm[STRUCTURE_MODULE_KEYS[key]] = value
        elif key in StructureModuleConfig.defaults:
            sm[key] = value
    trunk = {k: v for k, v in trunk.items() if k in TrunkConfig.defaults}
    trunk["structure_module"] = sm
    fold = {k: v for k, v in cfg.items() if k in EsmFoldConfig.defaults and k != "trunk"}
    fold["trunk"] = trunk
    if fold.get("use_esm_attn_map"):
        raise ValueError(
            "fair-esm ESMFold config uses use_esm_attn_map=True, which no public model does and we do not support"
        )

    stem = dict(ESM2_3B_STEM) if stem_config is None else stem_config.to_dict()
    stem.update(is_folding_model=True, esmfold_config=fold, vocab_list=list(ESM_VOCAB))
    stem.pop("model_type", None)
    stem.pop("architectures", None)
    return EsmConfig(**stem)


def convert_fair_esmfold(
    data: Mapping[str, Any], stem: Stem | None = None
) -> tuple[EsmConfig, dict[str, torch.Tensor]]:
    """A loaded fair-esm ESMFold checkpoint -> `(EsmConfig, HF-named state dict)`.

    Args:
        data: `{"model": state_dict, "cfg": {"model": cfg}}` as `torch_load_safe` returns it.
        stem: the ESM-2 language model as a loaded `(config, state_dict)` (for a path or Hub
            id use `load_checkpoint(path, stem=...)`, which reads it); its keys, with or
            without the `esm.` prefix, become `esm.*`; its masked-LM head (`lm_head.*`) is
            dropped.

    Returns:
        The folding-model config and the state dict for `EsmForProteinFolding`.

    Raises:
        ValueError: `data` is not an ESMFold checkpoint (no `trunk.*` weights or no trunk
            config), the stem is a folding model or does not fit the trunk (its layer count and
            width must match `esm_s_combine` and `esm_s_mlp`), the stem the file stores
            (fair-esm names, `esm.layers.*`) is not ESM-2 3B, or two source keys map to one
            destination key (`embeddings.x` and `esm.embeddings.x` in the stem, or a stem in
            the file and `stem` given).
        TypeError: `stem` is not a `(config, state_dict)` pair.
    """
    if not isinstance(data, Mapping):
        raise ValueError(
            f"not a fair-esm ESMFold checkpoint: expected a dict, got {type(data).__name__}"
        )
    if not is_fair_esmfold(data):
        keys = sorted(data)[:8]
        raise ValueError(
            "not a fair-esm ESMFold checkpoint: it needs 'cfg' and a 'model' state dict with "
            f"trunk.* weights (top-level keys: {keys}); ESM-2 language models load with "
            "EsmModel / EsmForMaskedLM"
        )
    stem_pair = None if stem is None else _resolve_stem(stem)
    cfg = _plain(data["cfg"])
    model_cfg = cfg.get("model", cfg) if isinstance(cfg, dict) else cfg
    config = esmfold_config_from_fair(model_cfg, None if stem_pair is None else stem_pair[0])

    state_dict: dict[str, torch.Tensor] = {}
    fair_stem: dict[str, torch.Tensor] = {}
    for key, value in data["model"].items():
        if key.startswith("esm."):
            fair_stem[key[len("esm.") :]] = value
        else:
            state_dict[key] = value
    if stem_pair is not None:
        if fair_stem:
            raise ValueError(
                f"the ESMFold file stores its own ESM-2 stem ({len(fair_stem)} esm.* keys) and "
                "a stem is given too: two sources for the same weights; pass stem=None"
            )
        _check_stem_fits(stem_pair[0], state_dict)
        for key, value in stem_pair[1].items():
            if key.startswith(("lm_head.", "esm.lm_head.")):
                continue
            hf = key if key.startswith("esm.") else "esm." + key
            if hf in state_dict:
                raise ValueError(f"the stem holds two keys that map to {hf!r} (one is {key!r})")
            state_dict[hf] = value
    elif fair_stem:
        state_dict.update(_convert_fair_stem(fair_stem, config))
    return config, state_dict


def _resolve_stem(stem: Stem) -> tuple[EsmConfig, Mapping[str, torch.Tensor]]:
    if (
        isinstance(stem, tuple)
        and len(stem) == 2
        and isinstance(stem[0], EsmConfig)
        and isinstance(stem[1], Mapping)
    ):
        config, weights = stem
    else:
        hint = (
            "; for a path or Hub id use load_checkpoint(path, stem=...)"
            if isinstance(stem, (str, os.PathLike))
            else ""
        )
        raise TypeError(
            f"stem must be an (EsmConfig, state_dict) pair, got {type(stem).__name__}{hint}"
        )
    if config.is_folding_model:
        raise ValueError(
            "stem is an ESMFold checkpoint; pass the ESM-2 language model it was trained on "
            "(esm2_t36_3B_UR50D for ESMFold v0 / v1)"
        )
    return config, weights


def _check_stem_fits(stem_config: EsmConfig, trunk_state: Mapping[str, torch.Tensor]) -> None:
    """The trunk mixes num_layers + 1 stem states of width hidden_size: check the stem has them."""
    found = (stem_config.num_hidden_layers, stem_config.hidden_size)
    combine = trunk_state.get("esm_s_combine")
    norm = trunk_state.get("esm_s_mlp.0.weight")
    want = (
        found[0] if combine is None else int(combine.shape[0]) - 1,
        found[1] if norm is None else int(norm.shape[0]),
    )
    if found != want:
        raise ValueError(
            f"the stem has (layers, hidden size) = {found}, but the ESMFold trunk was trained on "
            f"a stem with {want} (ESMFold v0 / v1: esm2_t36_3B_UR50D, (36, 2560))"
        )


def _convert_fair_stem(
    fair_stem: dict[str, torch.Tensor], config: EsmConfig
) -> dict[str, torch.Tensor]:
    """fair-esm ESM-2 stem weights stored inside the ESMFold file -> `esm.*` HF keys."""
    hf = fair_esm_to_hf(fair_stem, source="ESMFold checkpoint stem (esm.*)")
    hf = {k: v for k, v in hf.items() if k.startswith("esm.")}  # drop the stem's MLM head
    words = hf.get("esm.embeddings.word_embeddings.weight")
    layers = {k.split(".")[3] for k in hf if k.startswith("esm.encoder.layer.")}
    found = (None if words is None else tuple(words.shape), len(layers))
    want = ((config.vocab_size, config.hidden_size), config.num_hidden_layers)
    if found != want:
        raise ValueError(
            f"the ESMFold file's stem has (embedding shape, layers) = {found}, not ESM-2 3B's "
            f"{want}; pass the stem as stem=(config, state_dict) instead"
        )
    return hf


def load_fair_esmfold(
    path: str | os.PathLike, stem: Stem | None = None
) -> tuple[EsmConfig, dict[str, torch.Tensor]]:
    """Read a fair-esm ESMFold `.pt` (weights-only unpickling) and convert it.

    See `convert_fair_esmfold` for `stem` and the errors. `load_checkpoint(path, stem=stem)`
    does the same, also with a path or Hub id as the stem, and reads every other format.
    """
    return convert_fair_esmfold(torch_load_safe(path), stem=stem)


__all__ = [
    "ESM2_3B_STEM",
    "STRUCTURE_MODULE_KEYS",
    "convert_fair_esmfold",
    "esmfold_config_from_fair",
    "is_fair_esmfold",
    "load_fair_esmfold",
]
