"""Model configurations that read and write HF `config.json` files unchanged.

`EsmConfig` covers ESM-1b, ESM-1v, ESM-2 (8M to 15B) and ESMFold (`is_folding_model=True`, with a
nested `EsmFoldConfig` -> `TrunkConfig` -> `StructureModuleConfig`). Defaults are those of
transformers' ESM configs, so a published `config.json` means the same thing here.

Every key of a loaded file survives a `save_pretrained` round trip: keys we do not model are kept
in `extra` and written back.

This module is a foundation leaf: it imports nothing from `models/`, `ops/` or `reference/`, and
every layer may import it.

Example:
    >>> from esmkernels import EsmConfig
    >>> cfg = EsmConfig(vocab_size=33, hidden_size=320, num_hidden_layers=6,
    ...                 num_attention_heads=20, intermediate_size=1280,
    ...                 position_embedding_type="rotary", token_dropout=True)
    >>> cfg.head_dim
    16
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, ClassVar

CONFIG_NAME = "config.json"

# The ESM-2 / ESMFold vocabulary, in HF order (also fair-esm's `Alphabet` for ESM-1b and later).
ESM_VOCAB: tuple[str, ...] = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C",
    "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>",
)  # fmt: skip

# Keys of transformers' PreTrainedConfig that carry meaning for us or that files commonly hold.
_COMMON_DEFAULTS: dict[str, Any] = {
    "architectures": None,
    "id2label": None,
    "label2id": None,
    "problem_type": None,
    "torch_dtype": None,
    "output_attentions": False,
    "output_hidden_states": False,
    "return_dict": True,
    "classifier_dropout": None,
}
_PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


class _Config:
    """Keyed configuration: known keys with defaults, unknown keys kept verbatim."""

    model_type: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    sub_configs: ClassVar[dict[str, type[_Config]]] = {}

    def __init__(self, **kwargs: Any) -> None:
        known = {**self.defaults}
        extra: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in known:
                known[key] = value
            elif key == "model_type" and self.model_type:
                if value != self.model_type:
                    raise ValueError(
                        f"{type(self).__name__}: config has model_type={value!r}, expected "
                        f"{self.model_type!r}; this is not an ESM checkpoint"
                    )
            else:
                extra[key] = value
        object.__setattr__(self, "extra", extra)
        for key, value in known.items():
            object.__setattr__(self, key, copy.deepcopy(value))
        for key, cls in self.sub_configs.items():
            value = getattr(self, key)
            if isinstance(value, dict):
                object.__setattr__(self, key, cls(**value))
        self._post_init()
        self.validate()

    def _post_init(self) -> None:
        pass

    def validate(self) -> None:
        """Raise ValueError naming the offending key when the configuration is inconsistent."""

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: expose kept unknown keys as attributes.
        extra = self.__dict__.get("extra", {})
        if name in extra:
            return extra[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with every known key, kept unknown keys, and `model_type`."""
        out: dict[str, Any] = {}
        for key in self.defaults:
            value = getattr(self, key)
            if isinstance(value, _Config):
                value = value.to_dict()
            out[key] = copy.deepcopy(value)
        for key, value in self.extra.items():
            out[key] = copy.deepcopy(value)
        if self.model_type:
            out["model_type"] = self.model_type
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any):
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}")
        return cls(**{**data, **overrides})

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write `config.json` into `save_directory` (created if missing). Returns its path."""
        path = Path(save_directory)
        if path.exists() and not path.is_dir():
            raise ValueError(f"save_pretrained: {path} exists and is not a directory")
        path.mkdir(parents=True, exist_ok=True)
        target = path / CONFIG_NAME
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(self.to_json_string())
        os.replace(tmp, target)  # atomic: a crash never leaves a half-written config
        return target

    @classmethod
    def from_json_file(cls, path: str | os.PathLike):
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no config file at {path}") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        return cls.from_dict(data)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any):
        """Load from a checkpoint directory (its `config.json`) or a JSON file path."""
        path = Path(path)
        file = path / CONFIG_NAME if path.is_dir() else path
        config = cls.from_json_file(file)
        return cls.from_dict(config.to_dict(), **overrides) if overrides else config

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.to_dict() == other.to_dict()  # type: ignore[union-attr]

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"


class StructureModuleConfig(_Config):
    """ESMFold structure module (AlphaFold2 Algorithm 20) hyper-parameters."""

    defaults = {
        "sequence_dim": 384,
        "pairwise_dim": 128,
        "ipa_dim": 16,
        "resnet_dim": 128,
        "num_heads_ipa": 12,
        "num_qk_points": 4,
        "num_v_points": 8,
        "dropout_rate": 0.1,
        "num_blocks": 8,
        "num_transition_layers": 1,
        "num_resnet_blocks": 2,
        "num_angles": 7,
        "trans_scale_factor": 10,
        "epsilon": 1e-8,
        "inf": 1e5,
    }


class TrunkConfig(_Config):
    """ESMFold folding trunk hyper-parameters."""

    defaults = {
        "num_blocks": 48,
        "sequence_state_dim": 1024,
        "pairwise_state_dim": 128,
        "sequence_head_width": 32,
        "pairwise_head_width": 32,
        "position_bins": 32,
        "dropout": 0.0,
        "layer_drop": 0.0,
        "cpu_grad_checkpoint": False,
        "max_recycles": 4,
        "chunk_size": 128,
        "structure_module": None,
    }
    sub_configs = {"structure_module": StructureModuleConfig}

    def _post_init(self) -> None:
        if self.structure_module is None:
            self.structure_module = StructureModuleConfig()

    def validate(self) -> None:
        for key, width in (
            ("sequence_state_dim", "sequence_head_width"),
            ("pairwise_state_dim", "pairwise_head_width"),
        ):
            dim, w = getattr(self, key), getattr(self, width)
            if w <= 0 or dim % w != 0:
                raise ValueError(f"TrunkConfig: {key}={dim} is not a multiple of {width}={w}")
        if self.pairwise_state_dim % 2 != 0:
            raise ValueError(
                f"TrunkConfig: pairwise_state_dim={self.pairwise_state_dim} must be even"
            )
        if not 0.0 <= float(self.dropout) <= 0.4:
            raise ValueError(f"TrunkConfig: dropout={self.dropout} must be in [0, 0.4]")
        if self.max_recycles < 0:
            raise ValueError(f"TrunkConfig: max_recycles={self.max_recycles} must be >= 0")

    @property
    def sequence_num_heads(self) -> int:
        return self.sequence_state_dim // self.sequence_head_width

    @property
    def pairwise_num_heads(self) -> int:
        return self.pairwise_state_dim // self.pairwise_head_width


class EsmFoldConfig(_Config):
    """ESMFold head configuration (the language-model stem is the enclosing `EsmConfig`)."""

    defaults = {
        "esm_type": None,
        "fp16_esm": True,
        "use_esm_attn_map": False,
        "esm_ablate_pairwise": False,
        "esm_ablate_sequence": False,
        "esm_input_dropout": 0.0,
        "embed_aa": True,
        "bypass_lm": False,
        "lddt_head_hid_dim": 128,
        "trunk": None,
    }
    sub_configs = {"trunk": TrunkConfig}

    def _post_init(self) -> None:
        if self.trunk is None:
            self.trunk = TrunkConfig()

    def validate(self) -> None:
        if self.use_esm_attn_map:
            raise ValueError("EsmFoldConfig: use_esm_attn_map=True is not supported (as in HF)")


class EsmConfig(_Config):
    """Configuration of every ESM model class (HF `EsmConfig` keys and defaults)."""

    model_type = "esm"
    defaults = {
        "vocab_size": None,
        "mask_token_id": None,
        "pad_token_id": None,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 1026,
        "rope_theta": 10000.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "position_embedding_type": "absolute",
        "use_cache": True,
        "emb_layer_norm_before": None,
        "token_dropout": False,
        "is_folding_model": False,
        "esmfold_config": None,
        "vocab_list": None,
        "is_decoder": False,
        "add_cross_attention": False,
        "tie_word_embeddings": True,
        "bos_token_id": None,
        "eos_token_id": 2,
        **_COMMON_DEFAULTS,
    }
    sub_configs = {"esmfold_config": EsmFoldConfig}

    def __init__(self, **kwargs: Any) -> None:
        num_labels = kwargs.pop("num_labels", None)
        super().__init__(**kwargs)
        if self.id2label is not None:
            self.id2label = {int(k): v for k, v in self.id2label.items()}
            if num_labels is not None and num_labels != len(self.id2label):
                raise ValueError(
                    f"EsmConfig: num_labels={num_labels} disagrees with id2label "
                    f"({len(self.id2label)} labels)"
                )
        elif num_labels is not None:
            self.num_labels = num_labels
        if self.problem_type == "single_label_classification" and self.num_labels == 1:
            raise ValueError(
                "EsmConfig: problem_type='single_label_classification' needs num_labels > 1 "
                "(use num_labels=2 for binary, or problem_type='regression')"
            )

    def _post_init(self) -> None:
        if self.is_folding_model:
            if self.esmfold_config is None:
                self.esmfold_config = EsmFoldConfig()
            if self.vocab_list is None:
                self.vocab_list = list(ESM_VOCAB)
        else:
            self.esmfold_config = None

    def validate(self) -> None:
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"EsmConfig: hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.position_embedding_type not in ("absolute", "rotary"):
            raise ValueError(
                f"EsmConfig: unknown position_embedding_type={self.position_embedding_type!r}; "
                "expected 'absolute' (ESM-1b/1v) or 'rotary' (ESM-2)"
            )
        if self.position_embedding_type == "rotary" and self.head_dim % 2 != 0:
            raise ValueError(f"EsmConfig: rotary needs an even head_dim, got {self.head_dim}")
        if self.hidden_act not in ("gelu",):
            raise ValueError(f"EsmConfig: hidden_act={self.hidden_act!r} is not supported ('gelu')")
        if self.problem_type is not None and self.problem_type not in _PROBLEM_TYPES:
            raise ValueError(
                f"EsmConfig: problem_type={self.problem_type!r} is not one of {_PROBLEM_TYPES}"
            )
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            if int(getattr(self, key)) <= 0:
                raise ValueError(f"EsmConfig: {key}={getattr(self, key)} must be positive")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_labels(self) -> int:
        return 2 if self.id2label is None else len(self.id2label)

    @num_labels.setter
    def num_labels(self, value: int) -> None:
        if int(value) < 1:
            raise ValueError(f"EsmConfig: num_labels={value} must be >= 1")
        if self.id2label is None or len(self.id2label) != value:
            self.id2label = {i: f"LABEL_{i}" for i in range(int(value))}
            self.label2id = {v: k for k, v in self.id2label.items()}

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if out.get("id2label") is not None:
            out["id2label"] = {str(k): v for k, v in out["id2label"].items()}
        return out


__all__ = [
    "CONFIG_NAME",
    "ESM_VOCAB",
    "EsmConfig",
    "EsmFoldConfig",
    "StructureModuleConfig",
    "TrunkConfig",
]
