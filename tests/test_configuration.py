import json

import pytest

from esmkernels.core.configuration import EsmConfig, EsmFoldConfig, TrunkConfig


def test_roundtrip_keeps_unknown_keys(tmp_path):
    cfg = EsmConfig(vocab_size=33, hidden_size=64, num_attention_heads=4, some_future_key=[1, 2])
    cfg.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["some_future_key"] == [1, 2]
    again = EsmConfig.from_pretrained(tmp_path)
    assert again == cfg
    assert again.some_future_key == [1, 2]


def test_folding_config_nests():
    cfg = EsmConfig(
        vocab_size=33, is_folding_model=True, esmfold_config={"trunk": {"num_blocks": 2}}
    )
    assert isinstance(cfg.esmfold_config, EsmFoldConfig)
    assert isinstance(cfg.esmfold_config.trunk, TrunkConfig)
    assert cfg.esmfold_config.trunk.num_blocks == 2
    assert cfg.esmfold_config.trunk.structure_module.num_heads_ipa == 12
    assert EsmConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"hidden_size": 65, "num_attention_heads": 4}, "hidden_size=65"),
        ({"position_embedding_type": "alibi"}, "position_embedding_type"),
        ({"problem_type": "ranking"}, "problem_type"),
        ({"model_type": "bert"}, "model_type='bert'"),
        (
            {"hidden_size": 36, "num_attention_heads": 4, "position_embedding_type": "rotary"},
            "rotary needs an even head_dim, got 9",
        ),
        ({"hidden_act": "relu"}, "hidden_act='relu'"),
        ({"num_hidden_layers": 0}, "num_hidden_layers=0 must be positive"),
    ],
)
def test_validation_errors_name_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EsmConfig(**kwargs)


def test_trunk_validation():
    with pytest.raises(ValueError, match="sequence_state_dim"):
        TrunkConfig(sequence_state_dim=100, sequence_head_width=32)


def test_num_labels():
    cfg = EsmConfig(num_labels=5)
    assert cfg.num_labels == 5 and len(cfg.id2label) == 5
    assert EsmConfig.from_dict(cfg.to_dict()).num_labels == 5
