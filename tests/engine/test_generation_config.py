"""A model's generation_config.json as defaults for what the user leaves unset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bloomtui import demo_models
from bloomtui.engine import SamplingParams
from bloomtui.engine.weights.generation_config import GenerationDefaults


def write(tmp_path: Path, data: object) -> Path:
    (tmp_path / "generation_config.json").write_text(json.dumps(data))
    return tmp_path


def test_missing_or_malformed_files_are_no_defaults(tmp_path: Path) -> None:
    assert GenerationDefaults.read(tmp_path) == GenerationDefaults()
    (tmp_path / "generation_config.json").write_text("{not json")
    assert GenerationDefaults.read(tmp_path) == GenerationDefaults()
    assert GenerationDefaults.read(write(tmp_path, [1, 2])) == GenerationDefaults()
    bad = {
        "max_new_tokens": 0,
        "temperature": -1,
        "top_p": 2,
        "top_k": 1.5,
        "repetition_penalty": "high",
        "do_sample": "yes",
    }
    assert GenerationDefaults.read(write(tmp_path, bad)) == GenerationDefaults()


FALLBACK = {
    "max_new_tokens": 64,
    "do_sample": False,
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "repetition_penalty": 1.0,
}
UNSET = dict.fromkeys(FALLBACK)


def test_a_real_blooms_file_sets_nothing(tmp_path: Path) -> None:
    # bigscience/bloom-560m's generation_config.json, as published: token ids only
    real = {
        "_from_model_config": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 3,
        "transformers_version": "4.26.0.dev0",
    }
    defaults = GenerationDefaults.read(write(tmp_path, real))
    assert defaults.set_fields() == {}
    assert defaults.resolve(UNSET, FALLBACK) == SamplingParams()


def test_unset_fields_take_the_models_values_and_the_users_win(tmp_path: Path) -> None:
    data = {
        "do_sample": True,
        "temperature": 0.7,
        "top_k": 40,
        "top_p": 0.9,
        "repetition_penalty": 1.3,
        "max_new_tokens": 99,
    }
    defaults = GenerationDefaults.read(write(tmp_path, data))
    got = defaults.resolve(UNSET, FALLBACK, seed=3)
    assert got == SamplingParams(
        max_new_tokens=99, temperature=0.7, top_k=40, top_p=0.9, repetition_penalty=1.3, seed=3
    )
    # The user chose greedy and a length: the model's sampling values no longer apply.
    mine = UNSET | {"do_sample": False, "max_new_tokens": 5, "repetition_penalty": 1.0}
    assert defaults.resolve(mine, FALLBACK) == SamplingParams(max_new_tokens=5)
    # A temperature the user gave keeps the model's top-k and top-p.
    got = defaults.resolve(UNSET | {"temperature": 1.5}, FALLBACK)
    assert (got.temperature, got.top_k, got.top_p) == (1.5, 40, 0.9)


def test_greedy_models_do_not_sample_and_fallbacks_fill_the_rest(tmp_path: Path) -> None:
    defaults = GenerationDefaults.read(write(tmp_path, {"do_sample": False, "temperature": 0.7, "top_k": 5}))
    assert defaults.resolve(UNSET, FALLBACK).greedy
    sampled = defaults.resolve(UNSET | {"do_sample": True}, FALLBACK | {"top_p": 0.95})
    assert (sampled.temperature, sampled.top_k, sampled.top_p) == (0.7, 5, 0.95)


@pytest.mark.parametrize("name", demo_models.NAMES)
def test_shipped_models_carry_their_recommended_settings(name: str) -> None:
    on_disk = json.loads((demo_models.path(name) / "generation_config.json").read_text())
    assert on_disk == demo_models.GENERATION_CONFIG
    defaults = GenerationDefaults.read(demo_models.path(name))
    assert defaults.repetition_penalty == 1.2 and defaults.do_sample is False and defaults.max_new_tokens == 128


def test_prepare_and_demo_model_copies_keep_them(tmp_path: Path) -> None:
    from bloomtui import demo
    from bloomtui.engine.prepare import prepare

    copy = demo.write_demo_model(tmp_path / "copy", preset="trained", layout="bigscience")
    assert GenerationDefaults.read(copy) == GenerationDefaults.read(demo_models.path("trained"))
    out = prepare(str(copy), tmp_path / "int8", "int8", None, False, lambda _p: None, lambda: False)
    assert GenerationDefaults.read(out) == GenerationDefaults.read(copy)
    shutil.rmtree(out)
