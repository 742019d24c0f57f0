"""TIDPOConfig: paper defaults, presets, validation that names the field, and the dict round trip."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any, get_args, get_type_hints

import pytest

from tiviz.errors import ConfigError
from tiviz.training.config import PRESET_HELP, PRESETS, TIDPOConfig, config_from_preset, list_presets

EXPECTED_PRESETS = [
    "paper",
    "authors-code",
    "dpo",
    "tdpo",
    "uniform-weights",
    "random-weights",
    "no-prior",
    "no-triplet",
]


def test_defaults_are_the_paper_values():
    cfg = TIDPOConfig()
    assert (cfg.beta, cfg.lam, cfg.sigma_divisor, cfg.alpha_kl, cfg.gamma, cfg.margin) == (
        0.1,
        0.7,
        4.0,
        0.5,
        0.1,
        0.001,
    )
    assert (cfg.span, cfg.weight_scale, cfg.weighting, cfg.use_prior) == ("response", "mean1", "tidpo", True)
    assert (cfg.anchor_top_k, cfg.anchor_top_p, cfg.anchor_temperature, cfg.anchor_max_new_tokens) == (
        50,
        0.95,
        0.8,
        64,
    )
    assert cfg.max_steps == -1 and cfg.bf16 is None and cfg.precompute_ref_logps is False


def test_every_field_has_help_and_literal_options_are_enforced():
    hints = get_type_hints(TIDPOConfig)
    for f in fields(TIDPOConfig):
        assert f.metadata.get("help"), f"{f.name} has no help string"
        options = get_args(hints[f.name])
        if options and all(isinstance(o, str) for o in options):  # a Literal[...] option
            with pytest.raises(ConfigError) as err:
                TIDPOConfig(**{f.name: "no-such-option"})
            assert err.value.field == f.name
            assert all(repr(o) in err.value.allowed for o in options)


def test_list_presets_and_every_preset_builds():
    assert list_presets() == EXPECTED_PRESETS
    assert set(PRESET_HELP) == set(PRESETS)
    for name in list_presets():
        cfg = config_from_preset(name)
        assert isinstance(cfg, TIDPOConfig)
        for key, value in PRESETS[name].items():
            assert getattr(cfg, key) == value


def test_preset_values():
    assert config_from_preset("paper") == TIDPOConfig()
    authors = config_from_preset("authors-code")
    assert (authors.beta, authors.lam, authors.sigma_divisor, authors.alpha_kl) == (0.2, 0.2, 8.0, 0.5)
    assert (authors.gamma, authors.margin, authors.span) == (0.001, 0.001, "full")
    assert (authors.optimizer, authors.learning_rate, authors.warmup_steps) == ("rmsprop", 5e-6, 150)
    assert (authors.max_length, authors.max_prompt_length) == (256, 128)
    dpo = config_from_preset("dpo")
    assert (dpo.weighting, dpo.alpha_kl, dpo.gamma) == ("uniform", 0.0, 0.0)
    tdpo = config_from_preset("tdpo")
    assert (tdpo.weighting, tdpo.alpha_kl, tdpo.gamma) == ("uniform", 0.5, 0.0)
    # each ablation changes one thing from the paper
    paper = TIDPOConfig().to_dict()
    for name, changed in [
        ("uniform-weights", {"weighting": "uniform"}),
        ("random-weights", {"weighting": "random"}),
        ("no-prior", {"use_prior": False}),
        ("no-triplet", {"gamma": 0.0}),
    ]:
        d = config_from_preset(name).to_dict()
        assert {k: v for k, v in d.items() if paper[k] != v} == changed


def test_preset_overrides_are_applied_and_validated():
    cfg = config_from_preset("authors-code", beta=0.3, max_steps=10)
    assert (cfg.beta, cfg.max_steps, cfg.lam) == (0.3, 10, 0.2)
    with pytest.raises(ConfigError) as err:
        config_from_preset("dpo", lam=2.0)
    assert err.value.field == "lam"
    with pytest.raises(ConfigError) as err:
        config_from_preset("dpo", not_a_field=1)
    assert err.value.field == "not_a_field"


def test_unknown_preset_names_preset_and_lists_allowed():
    with pytest.raises(ConfigError) as err:
        config_from_preset("ti-dpo-xl")
    assert err.value.field == "preset" and err.value.value == "ti-dpo-xl"
    for name in EXPECTED_PRESETS:
        assert repr(name) in str(err.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("beta", -0.1),
        ("beta", 0.0),
        ("beta", float("nan")),
        ("lam", 1.5),
        ("lam", -0.1),
        ("sigma_divisor", 0.0),
        ("alpha_kl", -1.0),
        ("gamma", -0.5),
        ("margin", -0.001),
        ("span", "prompt"),
        ("weight_scale", "mean"),
        ("weighting", "not-a-method"),
        ("optimizer", "sgd"),
        ("lr_scheduler", "step"),
        ("anchor_top_k", -1),
        ("anchor_top_p", 0.0),
        ("anchor_top_p", 1.5),
        ("anchor_temperature", 0.0),
        ("anchor_max_new_tokens", 0),
        ("learning_rate", 0.0),
        ("warmup_steps", -1),
        ("batch_size", 0),
        ("batch_size", 2.5),
        ("batch_size", True),
        ("gradient_accumulation_steps", 0),
        ("max_length", 0),
        ("max_prompt_length", 512),  # must leave room for the response (max_length 512)
        ("num_epochs", 0),
        ("max_steps", 0),
        ("max_steps", -2),
        ("save_steps", -1),
        ("logging_steps", 0),
        ("lora_r", 0),
        ("lora_alpha", 0.0),
        ("lora_dropout", 1.0),
        ("use_lora", "yes"),
        ("use_prior", 1),
        ("precompute_ref_logps", None),
        ("bf16", "auto"),
        ("seed", "42"),
        ("beta", "0.1"),
    ],
)
def test_invalid_values_name_the_field(field: str, value: Any):
    with pytest.raises(ConfigError) as err:
        TIDPOConfig(**{field: value})
    assert err.value.field == field
    assert field in str(err.value)


def test_to_dict_from_dict_round_trip_through_json():
    cfg = config_from_preset("authors-code", bf16=False, use_lora=True, lora_r=8, seed=7)
    text = json.dumps(cfg.to_dict())
    assert TIDPOConfig.from_dict(json.loads(text)) == cfg
    for name in list_presets():
        c = config_from_preset(name)
        assert TIDPOConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_from_dict_partial_and_numbers_as_ints():
    cfg = TIDPOConfig.from_dict({"beta": 1, "sigma_divisor": 8})
    assert cfg.beta == 1.0 and isinstance(cfg.beta, float)
    assert cfg.sigma_divisor == 8.0 and cfg.lam == 0.7


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError) as err:
        TIDPOConfig.from_dict({"beta": 0.1, "lambda": 0.5})
    assert err.value.field == "lambda"
    assert "lam" in err.value.allowed
