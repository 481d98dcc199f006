"""Bad checkpoints and bad options: one clear BloomtuiError (CLI: `error: ...`, exit 2), nothing modified."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bloomtui.engine import Engine, EngineOptions, SamplingParams
from bloomtui.errors import BudgetError, CheckpointError, ConfigError, UsageError
from bloomtui.sizes import parse_size
from tests.checkpoints import Written


@pytest.fixture
def model(tmp_path: Path, tiny_model: Written) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(tiny_model.path, dst)
    return dst


def _sharded(tmp_path: Path, tiny_model: Written) -> Path:
    from bloomtui import demo

    dst = tmp_path / "sharded"
    demo.save_checkpoint(tiny_model.state_dict, tiny_model.config, dst, layout="bigscience")
    demo.save_tokenizer(1024, dst)
    return dst


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such folder"):
        Engine.open(tmp_path / "nope")


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty"):
        Engine.open(tmp_path / "empty")


def test_path_is_a_file(model: Path) -> None:
    with pytest.raises(CheckpointError, match="is a file"):
        Engine.open(model / "config.json")


def test_missing_config(model: Path) -> None:
    (model / "config.json").unlink()
    with pytest.raises(ConfigError, match="config.json"):
        Engine.open(model)


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", "cannot read it as JSON"),
        ('{"model_type": "gpt2", "n_layer": 2}', "not 'bloom'"),
        ('{"model_type": "bloom", "hidden_size": 96, "n_head": 6, "vocab_size": 1024}', "n_layer"),
        ('{"model_type": "bloom", "hidden_size": 96, "n_head": 5, "n_layer": 4, "vocab_size": 1024}', "divisible"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_bad_config(model: Path, text: str, match: str) -> None:
    (model / "config.json").write_text(text)
    with pytest.raises(ConfigError, match=match):
        Engine.open(model)


def test_no_weights(model: Path) -> None:
    (model / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights found"):
        Engine.open(model)


def test_truncated_safetensors(model: Path) -> None:
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated"):
        Engine.open(model)


def test_garbage_safetensors(model: Path) -> None:
    (model / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match="header"):
        Engine.open(model)


def test_missing_shard(tmp_path: Path, tiny_model: Written) -> None:
    model = _sharded(tmp_path, tiny_model)
    next(model.glob("pytorch_model_00003-*.bin")).unlink()
    with pytest.raises(CheckpointError, match="pytorch_model_00003.*missing"):
        Engine.open(model)


def test_truncated_bin_shard(tmp_path: Path, tiny_model: Written) -> None:
    model = _sharded(tmp_path, tiny_model)
    shard = next(model.glob("pytorch_model_00003-*.bin"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="pytorch_model_00003"):
        Engine.open(model)


def test_garbage_index(tmp_path: Path, tiny_model: Written) -> None:
    model = _sharded(tmp_path, tiny_model)
    (model / "pytorch_model.bin.index.json").write_text('{"weight_map": 7}')
    with pytest.raises(CheckpointError, match="index"):
        Engine.open(model)


def test_shape_mismatch(model: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    config["hidden_size"] = 128
    config["n_head"] = 8
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape"):
        Engine.open(model)


@pytest.mark.parametrize("n_layer, match", [(6, "weights hold 4 blocks"), (3, "weights hold 4 blocks")])
def test_layer_count_mismatch(model: Path, n_layer: int, match: str) -> None:
    config = json.loads((model / "config.json").read_text())
    config["n_layer"] = n_layer
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=match):
        Engine.open(model)


def test_no_tokenizer(model: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (model / name).unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="tokenizer"):
        Engine.open(model)


def test_budget_below_one_block_names_the_minimum(model: Path) -> None:
    with pytest.raises(BudgetError, match=r"below the .* this model needs"):
        Engine.open(model, EngineOptions(ram_budget=100_000))


@pytest.mark.parametrize("text", ["", "abc", "-5MB", "12XB", "0"])
def test_unparseable_budget(text: str) -> None:
    with pytest.raises(UsageError, match="--ram-budget"):
        parse_size(text)


def test_budget_units() -> None:
    assert parse_size("800MB") == 800_000_000
    assert parse_size("12GiB") == 12 * 1024**3
    assert parse_size("1.5G") == 1_500_000_000


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_new_tokens": -1}, "max-new-tokens"),
        ({"max_new_tokens": 0}, "max-new-tokens"),
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 0.0}, "top-p"),
        ({"top_p": 1.5}, "top-p"),
        ({"top_k": -2}, "top-k"),
        ({"repetition_penalty": 0.0}, "repetition-penalty"),
    ],
)
def test_bad_sampling_options(kwargs: dict, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        SamplingParams(**kwargs)


def test_bad_dtype(model: Path) -> None:
    with pytest.raises(UsageError, match="--dtype"):
        Engine.open(model, EngineOptions(dtype="float16"))


def test_model_folder_is_never_modified(model: Path) -> None:
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes()) for p in model.iterdir()}
    from bloomtui.engine.plan.residency import minimum_budget
    from bloomtui.engine.weights.checkpoint import Checkpoint

    engine = Engine.open(model, EngineOptions(ram_budget=minimum_budget(Checkpoint.open(model), 4)))
    assert engine.model_plan.plan.streamed_blocks
    engine.generate("hello", SamplingParams(max_new_tokens=3))
    engine.close()
    after = {p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes()) for p in model.iterdir()}
    assert before == after
