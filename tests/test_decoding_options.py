"""The table of decoding options (tfgraph.decoding.options): generate's keywords, their checks, the strategies they
apply to, their defaults, tfgraph-generate's keys, all from one place."""

from __future__ import annotations

import inspect
from dataclasses import MISSING
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import tfgraph
from tests.conftest import build
from tfgraph.decoding import generate
from tfgraph.decoding.api import check_settings
from tfgraph.decoding.options import COMMAND_OPTIONS, OPTIONS, STRATEGIES, DecodingOptions
from tfgraph.inference import _decoding_options

ROOT = Path(__file__).resolve().parents[1]

# a value other than the default for each option that applies to some strategies only
GIVEN = {
    "temperature": 0.7,
    "top_k": 5,
    "top_p": 0.9,
    "min_p": 0.1,
    "num_beams": 2,
    "length_penalty": 0.5,
    "early_stopping": True,
    "num_return_sequences": 2,
    "seed": 0,
    "generator": torch.Generator(),
    "streamer": print,
    "output_logits": True,
}


def test_generate_takes_exactly_the_options_of_the_table_in_its_order_with_its_defaults() -> None:
    keywords = [p for p in inspect.signature(generate).parameters.values() if p.kind is p.KEYWORD_ONLY]
    assert [p.name for p in keywords] == [o.name for o in OPTIONS]
    for parameter, option in zip(keywords, OPTIONS, strict=True):
        assert parameter.default == (inspect.Parameter.empty if option.default is MISSING else option.default)
    assert [o.name for o in OPTIONS if o.required] == ["max_new_tokens"]
    for option in OPTIONS:  # the docstring's Args come from the table
        assert f"        {option.name}: {option.doc[:40]}" in generate.__doc__


def test_every_option_that_applies_to_some_strategies_is_refused_under_the_others() -> None:
    partial = [o for o in OPTIONS if o.applies != STRATEGIES]
    assert {o.name for o in partial} == set(GIVEN)
    for option in partial:
        for strategy in STRATEGIES:
            settings = {"max_new_tokens": 4, "strategy": strategy, option.name: GIVEN[option.name]}
            if strategy == "beam" and option.name == "num_return_sequences":
                settings["num_beams"] = 2
            problems = DecodingOptions(**settings).problems()
            if strategy in option.applies:
                assert problems == [], (option.name, strategy)
            else:
                assert [key for key, _ in problems] == [option.name], (option.name, strategy)
                assert strategy in problems[0][1] or "greedy has one answer" in problems[0][1]


MESSAGES = [  # (settings, generate's message): the messages of before the table, word for word
    ({"strategy": "beams"}, "strategy must be 'greedy', 'sample' or 'beam', got 'beams'"),
    ({"max_new_tokens": 0}, "max_new_tokens must be at least 1, got 0"),
    ({"repetition_penalty": 0}, "repetition_penalty must be positive, got 0"),
    ({"top_k": 5, "seed": 1}, "top_k, seed apply only to strategy='sample', not 'greedy'"),
    ({"strategy": "sample", "num_beams": 3}, "num_beams applies only to strategy='beam', not 'sample'"),
    (
        {"strategy": "sample", "temperature": 0.0},
        "temperature must be positive (for the most likely token use 'greedy')",
    ),
    ({"strategy": "sample", "top_k": 0}, "top_k must be at least 1, got 0"),
    ({"strategy": "sample", "top_p": 1.5}, "top_p must be in (0, 1], got 1.5"),
    ({"strategy": "sample", "min_p": -0.1}, "min_p must be in [0, 1], got -0.1"),
    ({"strategy": "sample", "seed": 1, "generator": torch.Generator()}, "give either seed or generator, not both"),
    ({"strategy": "beam", "num_beams": 0}, "num_beams must be at least 1, got 0"),
    ({"strategy": "beam", "num_return_sequences": 5}, "num_return_sequences must be between 1 and num_beams=4"),
    ({"strategy": "beam", "early_stopping": "yes"}, "early_stopping must be True, False or 'never', got 'yes'"),
    (
        {"strategy": "beam", "streamer": print, "output_logits": True},
        "streamer and output_logits need strategy 'greedy' or 'sample' (beams change until the end)",
    ),
    (
        {"num_return_sequences": 2},
        "num_return_sequences > 1 needs strategy 'sample' or 'beam' (greedy has one answer)",
    ),
]


@pytest.mark.parametrize(("settings", "message"), MESSAGES, ids=[m for _, m in MESSAGES])
def test_settings_are_refused_with_the_reason(settings: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        check_settings(**{"max_new_tokens": 4, **settings})
    assert str(err.value).startswith(message)


def test_check_settings_takes_only_the_keywords_of_generate() -> None:
    with pytest.raises(TypeError, match="top_kk"):
        check_settings(max_new_tokens=4, top_kk=3)
    with pytest.raises(TypeError, match="max_new_tokens"):
        check_settings(strategy="greedy")
    check_settings(max_new_tokens=4, strategy="beam", num_beams=3, num_return_sequences=3, early_stopping="never")


def test_a_strategy_gives_its_unset_options_their_meaning() -> None:
    beam = DecodingOptions(max_new_tokens=4, strategy="beam").resolved()
    assert (beam.num_beams, beam.length_penalty, beam.early_stopping, beam.rows_per_input) == (4, 1.0, False, 4)
    greedy = DecodingOptions(max_new_tokens=4).resolved()
    assert (greedy.num_beams, greedy.length_penalty, greedy.early_stopping) == (None, None, None)
    sample = DecodingOptions(max_new_tokens=4, strategy="sample", num_return_sequences=3).resolved()
    assert sample.rows_per_input == 3


def test_the_options_are_checked_once_per_call_not_per_token(monkeypatch) -> None:
    model = build(["model=gpt2_tiny"])
    calls = []
    problems = DecodingOptions.problems
    monkeypatch.setattr(DecodingOptions, "problems", lambda self: calls.append(1) or problems(self))
    out = generate(model, torch.randint(0, 100, (1, 3)), max_new_tokens=12, strategy="sample", seed=0)
    assert out.sequences.shape == (1, 12) and len(calls) == 1
    generate(model, torch.randint(0, 100, (1, 3)), max_new_tokens=6, strategy="beam", num_beams=2)
    assert len(calls) == 2


def test_tfgraph_generate_has_a_key_for_every_command_option() -> None:
    keys = set(OmegaConf.load(ROOT / "conf/generate.yaml"))
    assert {o.name for o in COMMAND_OPTIONS} <= keys
    assert {o.name for o in COMMAND_OPTIONS} >= keys & {o.name for o in OPTIONS}


def command_options(**settings) -> dict:
    cfg = tfgraph.compose([f"{key}={value}" for key, value in settings.items()], config_name="generate")
    cfg.device = "cpu"
    return _decoding_options(cfg)


def test_tfgraph_generate_passes_on_what_is_set_and_a_seed_only_to_sampling() -> None:
    assert command_options(seed=3) == {"strategy": "greedy", "max_new_tokens": 64, "use_cache": True,
                                       "compile": False, "cpu_linear": "auto",
                                       "num_return_sequences": 1}  # fmt: skip
    sampled = command_options(strategy="sample", seed=3, top_k=5)
    assert (sampled["seed"], sampled["top_k"]) == (3, 5)


def test_tfgraph_generate_lists_every_setting_that_cannot_apply() -> None:
    with pytest.raises(tfgraph.ConfigError) as err:
        command_options(temperature=0.5, num_beams=2, repetition_penalty=0)
    assert [key for key, _ in err.value.problems] == ["temperature", "num_beams", "repetition_penalty"]
