"""bloomtui.demo: random BLOOM checkpoints in every layout, checked against transformers as the oracle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer, BloomConfig, BloomForCausalLM

from bloomtui import demo
from bloomtui.errors import UsageError

TINY = demo.PRESETS["tiny"]  # 2 blocks: the per-block layouts have 4 shards
COMMON_FILES = {
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "README.md",
}
EXPECTED_WEIGHT_FILES = {
    "safetensors": ["model.safetensors"],
    "safetensors-sharded": [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)],
    "safetensors-underscore": [f"model_0000{i}-of-00004.safetensors" for i in (1, 2, 3, 4)],
    "bin": ["pytorch_model.bin"],
    "bin-sharded": [f"pytorch_model-0000{i}-of-00003.bin" for i in (1, 2, 3)],
    "bigscience": [f"pytorch_model_0000{i}-of-00004.bin" for i in (1, 2, 3, 4)],
}
INDEX = {"safetensors": "model.safetensors.index.json", "bin": "pytorch_model.bin.index.json"}
UNICODE = [
    "日本語 🙂 hello",
    "Ça va? ñandú, naïve café, Straße",
    "中文 😀🎉👍🏽 emoji",
    "  two\n\ttabs\r\n",
    "x=1;",
]


def weight_files(layout: str) -> list[str]:
    files = EXPECTED_WEIGHT_FILES[layout]
    return files if len(files) == 1 else [*files, INDEX["safetensors" if "safetensors" in layout else "bin"]]


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        with safe_open(path, framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, bool], Path]:
    """One tiny model per (layout, untied), written once for the module."""
    root = tmp_path_factory.mktemp("demo")
    return {
        (layout, untied): demo.write_demo_model(root / f"{layout}-{untied}", layout=layout, untied=untied)
        for layout in demo.LAYOUTS
        for untied in (False, True)
    }


@pytest.mark.parametrize("untied", [False, True], ids=["tied", "untied"])
@pytest.mark.parametrize("layout", demo.LAYOUTS)
def test_transformers_loads_every_layout(models: dict, layout: str, untied: bool) -> None:
    # transformers loads all six layouts, bare keys and the bigscience file names included: it strips or adds
    # "transformer." by itself and follows the index's weight_map whatever the shard names are.
    directory = models[layout, untied]
    assert sorted(os.listdir(directory)) == sorted(COMMON_FILES | set(weight_files(layout)))
    model, info = BloomForCausalLM.from_pretrained(directory, dtype=torch.float32, output_loading_info=True)
    assert not any(info.values()), info  # nothing missing, unexpected or mismatched (all would be random)
    expected = demo.random_state_dict(demo.make_config(TINY, tie_word_embeddings=not untied))
    assert ("lm_head.weight" in expected) == untied
    loaded = model.state_dict()
    for key, tensor in expected.items():
        assert torch.equal(loaded[key], tensor.float()), key
    embeddings, head = model.transformer.word_embeddings.weight, model.lm_head.weight
    assert (head.data_ptr() == embeddings.data_ptr()) == (not untied)
    assert untied == (not torch.equal(head, embeddings))


@pytest.mark.parametrize("untied", [False, True], ids=["tied", "untied"])
@pytest.mark.parametrize("layout", demo.LAYOUTS)
def test_raw_files_keys_and_index(models: dict, layout: str, untied: bool) -> None:
    # transformers accepts keys with or without "transformer.", so read the files directly to check names.
    directory = models[layout, untied]
    shards = {name: read_weights(directory / name) for name in EXPECTED_WEIGHT_FILES[layout]}
    union = {key: tensor for tensors in shards.values() for key, tensor in tensors.items()}
    assert len(union) == sum(len(tensors) for tensors in shards.values())  # no key in two shards
    prefixed = layout in ("safetensors", "safetensors-sharded")
    expected = demo.random_state_dict(demo.make_config(TINY, tie_word_embeddings=not untied))
    rename = {k: k if prefixed or k == "lm_head.weight" else k.removeprefix("transformer.") for k in expected}
    assert set(union) == set(rename.values())
    for key, tensor in expected.items():
        assert union[rename[key]].dtype == torch.float16 and torch.equal(union[rename[key]], tensor), key
    if len(shards) > 1:
        index = json.loads((directory / weight_files(layout)[-1]).read_text())
        assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in union.values())
        assert index["weight_map"] == {key: name for name, tensors in shards.items() for key in tensors}
    if layout in ("bigscience", "safetensors-underscore"):  # the seed's split, one shard per block
        first, *blocks, last = shards.values()
        assert set(first) == {f"word_embeddings{s}" for s in (".weight", "_layernorm.weight", "_layernorm.bias")}
        for i, block in enumerate(blocks):
            assert block and all(key.startswith(f"h.{i}.") for key in block)
        assert set(last) == {"ln_f.weight", "ln_f.bias"} | ({"lm_head.weight"} if untied else set())


def test_bin_holds_one_storage_per_tensor(tmp_path: Path) -> None:
    state = demo.random_state_dict(demo.make_config(TINY), dtype=torch.float32)
    flat = torch.cat([t.reshape(-1) for t in state.values()])  # every tensor a view into one buffer
    views, offset = {}, 0
    for key, tensor in state.items():
        views[key] = flat[offset : offset + tensor.numel()].view(tensor.shape)
        offset += tensor.numel()
    views["transformer.h.0.self_attention.dense.weight"] = views["transformer.h.0.self_attention.dense.weight"].t()
    demo.save_checkpoint(views, demo.make_config(TINY), tmp_path, layout="bin")
    loaded = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    for tensor in loaded.values():
        assert tensor.is_contiguous() and tensor.untyped_storage().nbytes() == tensor.numel() * 4
    assert torch.equal(
        loaded["h.0.self_attention.dense.weight"], state["transformer.h.0.self_attention.dense.weight"].t()
    )


def test_prefix_and_shards_options(tmp_path: Path) -> None:
    config = demo.make_config(TINY, tie_word_embeddings=False)
    state = demo.random_state_dict(config)
    demo.save_checkpoint(state, config, tmp_path / "a", layout="bin", prefix=True)
    keys = set(read_weights(tmp_path / "a" / "pytorch_model.bin"))
    assert keys == set(state)  # prefixed on request; lm_head.weight as transformers names it
    demo.save_checkpoint(state, config, tmp_path / "b", layout="safetensors", prefix=False)
    keys = set(read_weights(tmp_path / "b" / "model.safetensors"))
    assert "lm_head.weight" in keys and "word_embeddings.weight" in keys and not any("transformer" in k for k in keys)
    demo.save_checkpoint(state, config, tmp_path / "c", layout="bin-sharded", shards=5)
    names = sorted(p.name for p in (tmp_path / "c").glob("*.bin"))
    assert names == [f"pytorch_model-0000{i}-of-00005.bin" for i in range(1, 6)]
    assert all(read_weights(tmp_path / "c" / name) for name in names)  # no empty shard
    for layout, shards in [("bin", 2), ("bigscience", 3), ("safetensors-sharded", 0), ("bin-sharded", 999)]:
        with pytest.raises(UsageError, match="shards"):
            demo.save_checkpoint(state, config, tmp_path / "d", layout=layout, shards=shards)


def test_split_covers_keys_in_order() -> None:
    keys = [str(i) for i in range(7)]
    sizes = dict(zip(keys, [100, 1, 1, 1, 1, 1, 50], strict=True))
    for n in range(1, 8):
        groups = demo._split(keys, sizes, n)
        assert len(groups) == n and all(groups) and sum(groups, []) == keys


def test_random_state_dict_is_deterministic_and_bloom_shaped() -> None:
    config = demo.make_config(demo.PRESETS["small"])
    a, b = demo.random_state_dict(config, seed=7), demo.random_state_dict(config, seed=7)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    other = demo.random_state_dict(config, seed=8)
    assert not torch.equal(
        a["transformer.h.0.mlp.dense_h_to_4h.weight"], other["transformer.h.0.mlp.dense_h_to_4h.weight"]
    )
    untied = demo.random_state_dict(demo.make_config(demo.PRESETS["small"], tie_word_embeddings=False), seed=7)
    assert set(untied) - set(a) == {"lm_head.weight"} and all(torch.equal(a[k], untied[k]) for k in a)
    assert a["transformer.h.3.self_attention.query_key_value.weight"].shape == (288, 96)
    assert all(t.dtype == torch.float16 for t in a.values())
    big = a["transformer.word_embeddings.weight"].float()
    assert abs(big.mean()) < 0.002 and abs(big.std() - 0.02) < 0.002
    ln = a["transformer.h.1.post_attention_layernorm.weight"].float()
    assert abs(ln.mean() - 1) < 0.01 and abs(a["transformer.ln_f.bias"].float().mean()) < 0.01
    wide = demo.random_state_dict(config, init_std=0.5, dtype="float32")["transformer.h.0.mlp.dense_4h_to_h.weight"]
    assert wide.dtype == torch.float32 and abs(wide.std() - 0.5) < 0.02


@pytest.mark.parametrize("preset", ["small", "560m", "1b7"])
def test_shapes_match_transformers_model(preset: str) -> None:
    config = demo.make_config(demo.PRESETS[preset], tie_word_embeddings=False)
    with torch.device("meta"):  # no memory: only names and shapes
        model = BloomForCausalLM(BloomConfig(**config))
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == demo._shapes(config)
    if preset == "560m":  # bloom-560m's published parameter count (tied head)
        assert sum(p.numel() for p in model.transformer.parameters()) == 559_214_592


def test_config_fields_and_aliases() -> None:
    config = demo.make_config(demo.PRESETS["small"], post_ln_residual=True, aliases=True, dtype="bfloat16")
    assert {"n_embed", "num_attention_heads", "num_hidden_layers"} <= set(config)
    assert not {"hidden_size", "n_head", "n_layer"} & set(config)
    hf = BloomConfig(**config)  # old names still read by transformers
    assert (hf.hidden_size, hf.n_head, hf.n_layer, hf.vocab_size) == (96, 6, 4, 1024)
    assert hf.apply_residual_connection_post_layernorm and hf.dtype == torch.bfloat16
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.layer_norm_epsilon) == (1, 2, 3, 1e-5)
    with pytest.raises(UsageError, match="float16"):
        demo.make_config(TINY, dtype="int8")


def test_alias_config_loads_in_transformers(tmp_path: Path) -> None:
    directory = demo.write_demo_model(tmp_path / "m", preset="small", aliases=True, post_ln_residual=True)
    assert "n_embed" in json.loads((directory / "config.json").read_text())
    model = BloomForCausalLM.from_pretrained(directory, dtype=torch.float32)
    assert model.config.apply_residual_connection_post_layernorm and len(model.transformer.h) == 4


def test_tokenizer_roundtrip_and_specials(models: dict) -> None:
    tokenizer = demo.build_tokenizer(TINY.vocab_size)
    assert [tokenizer.token_to_id(t) for t in ("<unk>", "<s>", "</s>", "<pad>")] == [0, 1, 2, 3]
    assert 260 < tokenizer.get_vocab_size() <= TINY.vocab_size
    for text in UNICODE:
        ids = tokenizer.encode(text).ids
        assert 0 not in ids and tokenizer.decode(ids) == text
    assert len(tokenizer.encode(demo._CORPUS).ids) < len(demo._CORPUS.encode()) / 2  # merges were learned
    assert demo.build_tokenizer(TINY.vocab_size) is not tokenizer  # a fresh object, cache stays clean

    auto = AutoTokenizer.from_pretrained(models["bin", False])  # offline: a local folder
    for text in UNICODE:
        ids = auto(text)["input_ids"]
        assert ids == tokenizer.encode(text).ids and auto.decode(ids) == text  # no BOS/EOS added
    assert (auto.unk_token_id, auto.bos_token_id, auto.eos_token_id, auto.pad_token_id) == (0, 1, 2, 3)


def test_tokenizer_is_deterministic_across_processes(tmp_path: Path) -> None:
    code = "import sys, bloomtui.demo as d; sys.stdout.buffer.write(d._tokenizer_json(1024).encode())"
    root = str(Path(demo.__file__).parents[1])  # import this checkout, wherever pytest runs from
    env = {**os.environ, "PYTHONHASHSEED": "123", "RAYON_NUM_THREADS": "3", "PYTHONPATH": root}
    child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True)
    assert child.stdout == demo._tokenizer_json(1024).encode()  # same tokenizer.json bytes
    assert demo._tokenizer_json.__wrapped__(1024) == demo._tokenizer_json(1024)
    assert demo.build_tokenizer(250880).get_vocab_size() <= 4096
    with pytest.raises(UsageError):
        demo.build_tokenizer(100)


def test_refuses_non_empty_folder_and_leaves_it_alone(tmp_path: Path) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    (target / "config.json").write_text("{}")
    with pytest.raises(UsageError, match="mine"):
        demo.write_demo_model(target)
    assert sorted(os.listdir(target)) == ["config.json", "notes.txt"]
    assert (target / "config.json").read_text() == "{}" and os.listdir(tmp_path) == ["mine"]


def test_overwrite_replaces_only_its_own_files(tmp_path: Path) -> None:
    target = demo.write_demo_model(tmp_path / "m", layout="bigscience")
    (target / "notes.txt").write_text("keep me")
    messages: list[str] = []
    demo.write_demo_model(target, layout="safetensors", overwrite=True, on_progress=messages.append)
    assert sorted(os.listdir(target)) == sorted(COMMON_FILES | {"model.safetensors", "notes.txt"})  # stale shards gone
    assert (target / "notes.txt").read_text() == "keep me" and os.listdir(tmp_path) == ["m"]
    assert "writing model.safetensors" in messages
    assert "noise" in (target / "README.md").read_text()


def test_empty_folder_progress_and_failure_cleanup(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    messages: list[str] = []
    demo.write_demo_model(tmp_path / "empty", layout="bigscience", on_progress=messages.append)
    assert "writing shard 3/4 (pytorch_model_00003-of-00004.bin)" in messages

    def fail(message: str) -> None:
        if "shard 2" in message:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        demo.write_demo_model(tmp_path / "new", layout="bin-sharded", on_progress=fail)
    assert os.listdir(tmp_path) == ["empty"]  # no half-written model, no staging folder


@pytest.mark.parametrize("option", ["preset", "layout", "dtype"])
def test_bad_names_list_the_choices(tmp_path: Path, option: str) -> None:
    choices = {"preset": "tiny, small", "layout": "safetensors, safetensors-sharded", "dtype": "float16"}
    with pytest.raises(UsageError, match=choices[option]):
        demo.write_demo_model(tmp_path / "m", **{option: "nope"})
    assert not (tmp_path / "m").exists()
