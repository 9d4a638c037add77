"""Configuration: validation on construction, JSON round trip, layer ranges."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from lune.config import (
    DEFAULT_TARGETS, LoraSettings, NegativeSettings, RunSettings, TrainSettings, UnlearnConfig, parse_layers,
)


def test_defaults_validate_and_match_paper():
    cfg = UnlearnConfig()
    assert cfg.lora.r == 16 and cfg.lora.lora_alpha == 16 and cfg.lora.lora_dropout == 0.05
    assert cfg.lora.target_modules == list(DEFAULT_TARGETS)
    assert cfg.negatives.kinds == ["alternative"]
    assert cfg.run.model == "smollm2-135m" and cfg.run.method == "lune"
    # mutable defaults are not shared between instances
    a, b = LoraSettings(), LoraSettings()
    a.target_modules.append("lm_head")
    assert b.target_modules == list(DEFAULT_TARGETS)


@pytest.mark.parametrize(
    "cls, kwargs, field",
    [
        (LoraSettings, {"r": 0}, "r"),
        (LoraSettings, {"r": -3}, "r"),
        (LoraSettings, {"lora_alpha": 0}, "lora_alpha"),
        (LoraSettings, {"lora_dropout": 1.0}, "lora_dropout"),
        (LoraSettings, {"lora_dropout": -0.1}, "lora_dropout"),
        (LoraSettings, {"target_modules": []}, "target_modules"),
        (LoraSettings, {"target_modules": ","}, "target_modules"),
        (LoraSettings, {"layers": "5-2"}, "layers"),
        (LoraSettings, {"layers": "x"}, "layers"),
        (LoraSettings, {"layers": "1,,2"}, "layers"),
        (LoraSettings, {"layers": "-1"}, "layers"),
        (TrainSettings, {"lr": 0}, "lr"),
        (TrainSettings, {"lr": -1e-3}, "lr"),
        (TrainSettings, {"weight_decay": -0.1}, "weight_decay"),
        (TrainSettings, {"warmup_ratio": 1.0}, "warmup_ratio"),
        (TrainSettings, {"max_epochs": 0}, "max_epochs"),
        (TrainSettings, {"min_epochs": -1}, "min_epochs"),
        (TrainSettings, {"batch_size": 0}, "batch_size"),
        (TrainSettings, {"max_grad_norm": 0}, "max_grad_norm"),
        (TrainSettings, {"retain_weight": -1}, "retain_weight"),
        (TrainSettings, {"kl_weight": -1}, "kl_weight"),
        (TrainSettings, {"dtype": "float64"}, "dtype"),
        (TrainSettings, {"dtype": "bf16"}, "dtype"),
        (NegativeSettings, {"kinds": ["alternative", "paraphrase"]}, "kinds"),
        (NegativeSettings, {"kinds": []}, "kinds"),
        (NegativeSettings, {"per_fact": 0}, "per_fact"),
        (NegativeSettings, {"num_samples": 0}, "num_samples"),
        (NegativeSettings, {"temperature": 0}, "temperature"),
        (NegativeSettings, {"sample_tokens": 0}, "sample_tokens"),
        (RunSettings, {"format": "instruct"}, "format"),
        (RunSettings, {"max_new_tokens": 0}, "max_new_tokens"),
        (RunSettings, {"eval_batch_size": 0}, "eval_batch_size"),
    ],
)
def test_invalid_values_raise_naming_the_field(cls, kwargs, field):
    with pytest.raises(ValueError, match=rf"\b{re.escape(field)}\b"):
        cls(**kwargs)


def test_unknown_negative_kind_names_the_kind():
    with pytest.raises(ValueError, match="paraphrase"):
        NegativeSettings(kinds=["paraphrase"])


def test_comma_strings_are_split():
    assert LoraSettings(target_modules="q_proj,v_proj,").target_modules == ["q_proj", "v_proj"]
    assert NegativeSettings(kinds="alternative,contradiction").kinds == ["alternative", "contradiction"]


@pytest.mark.parametrize(
    "spec, expected",
    [("2-4,7", [2, 3, 4, 7]), ("7,2-4", [2, 3, 4, 7]), ("3", [3]), ("3-3", [3]), ("1,1,0", [0, 1]), (None, None), ("", None)],
)
def test_parse_layers(spec, expected):
    assert parse_layers(spec) == expected


@pytest.mark.parametrize("spec", ["5-2", "x", "1-x", "1-2-3", "-1", " , "])
def test_parse_layers_rejects(spec):
    with pytest.raises(ValueError, match="layers"):
        parse_layers(spec)


def _custom_config() -> UnlearnConfig:
    return UnlearnConfig(
        run=RunSettings(model="/some/dir", format="completion", max_new_tokens=5, eval_batch_size=3),
        lora=LoraSettings(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], layers="0-1"),
        train=TrainSettings(lr=2e-2, max_epochs=7, min_epochs=2, early_stop=False, batch_size=3, kl_weight=0.5, dtype="float32", device="cpu"),
        negatives=NegativeSettings(per_fact=2, kinds=["alternative", "refusal"], num_samples=3, temperature=0.7),
    )


@pytest.mark.parametrize("cfg", [UnlearnConfig(), _custom_config()], ids=["default", "custom"])
def test_json_round_trip(cfg):
    text = cfg.to_json()
    back = UnlearnConfig.from_json(text)
    assert back == cfg
    assert isinstance(back.lora, LoraSettings) and isinstance(back.train, TrainSettings)
    assert json.loads(back.to_json()) == json.loads(text)


def test_from_dict_fills_missing_sections_with_defaults():
    cfg = UnlearnConfig.from_dict({"train": {"lr": 0.5}})
    assert cfg.train.lr == 0.5 and cfg.train.max_epochs == TrainSettings().max_epochs
    assert cfg.lora == LoraSettings() and cfg.run == RunSettings() and cfg.negatives == NegativeSettings()


def test_from_dict_rejects_unknown_fields_naming_them():
    with pytest.raises(ValueError, match="bogus_field") as e:
        UnlearnConfig.from_dict({"train": {"lr": 0.1, "bogus_field": 1}})
    assert "TrainSettings" in str(e.value)
    with pytest.raises(ValueError, match="extra"):
        UnlearnConfig.from_dict({"run": {}, "extra": {}})
    with pytest.raises(ValueError, match="rank"):
        LoraSettings.from_dict({"rank": 8})


def test_from_dict_validates_values():
    with pytest.raises(ValueError, match=r"\blr\b"):
        UnlearnConfig.from_dict({"train": {"lr": 0}})


def test_every_field_has_help():
    for cls in (RunSettings, LoraSettings, TrainSettings, NegativeSettings):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"


@pytest.mark.parametrize("spec, n, expected", [("lower", 30, list(range(15))), ("upper", 5, [2, 3, 4]), ("lower", 1, [0]),
                                               ("all", 4, None), ("lower", None, None)])
def test_parse_layers_keywords(spec, n, expected):
    assert parse_layers(spec, n) == expected
