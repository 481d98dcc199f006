"""Demo BLOOM checkpoints, written offline in every file layout real BLOOM checkpoints use.

Random-weight presets let tests exercise every loader path without a download: their text is noise, but the
shapes, key names, file names and tokenizer match real BLOOM. The `trained` presets copy the small models the
project trained on the Python documentation (bloomtui/demo_models) into any layout and dtype.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from bloomtui import demo_models
from bloomtui.demo_presets import (
    ALL_PRESETS,
    DEFAULT_SHARDS,
    DTYPE_NAMES,
    FILES,
    LAYOUTS,
    PREFIXED,
    PRESETS,
    SHARDED,
    DemoShape,
)
from bloomtui.errors import UsageError

DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_NAMES}
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")  # ids 0..3, as in BLOOM
_CHUNK = 1 << 22  # float32 values drawn at a time, so a 250880-row embedding never exists in float32
_README = """# Demo BLOOM model (random weights)

This folder was written by `bloomtui demo`. Its weights are RANDOM: the text it generates is noise.
It has the shapes, file names and tokenizer format of a real BLOOM checkpoint, so you can try bloomtui
without downloading anything. Preset `{preset}`, layout `{layout}`, dtype `{dtype}`, seed {seed}.
"""

# Training text for the demo tokenizer: enough scripts that merges cover the common cases; byte-level BPE
# encodes anything else byte by byte. The seed article's prompts are included so they tokenize compactly.
_CORPUS = """\
The SQL command to extract all the users whose name starts with A is: SELECT * FROM users WHERE name LIKE 'A%'
The Spanish translation of thank you for your help is: gracias por su ayuda
John is 4 times as old as Bob. Bob is 3 years younger than Mike. Mike is 10 years old. What is John's age? \
Let's think step by step. First, we need to find out how old Bob is. Bob is 3 years younger than Mike, so \
Bob is 10-3=7 years old. John is 4 times 7=28 years old.
BLOOM is an open-access multilingual language model with 176 billion parameters. It was trained for 3.5 \
months on 384 A100 GPUs. A checkpoint takes 330 GB of disk, yet it runs on a desktop computer with 16 GB of \
memory, one transformer block at a time. The quick brown fox jumps over the lazy dog. Once upon a time, \
there was a little robot who loved to read books about the sea, the stars and the history of the world.
Le modèle BLOOM est un grand modèle de langue multilingue et ouvert. Il a été entraîné pendant trois mois et \
demi. Bonjour, comment ça va ? Très bien, merci ! L'été dernier, nous sommes allés à la mer près de Marseille.
El modelo BLOOM es un gran modelo de lenguaje multilingüe y abierto. ¿Cómo estás? Muy bien, gracias. \
Mañana vamos a la montaña con los niños; el año pasado fuimos a España y comimos paella en Valencia.
Em português: obrigado pela sua ajuda. Auf Deutsch: vielen Dank für Ihre Hilfe. In italiano: grazie mille.
BLOOM 是一个开放访问的多语言模型，包含 1760 亿个参数，在 384 个 GPU 上训练了 3.5 个月。一个检查点需要 330 GB \
的磁盘空间。你只需要足够的磁盘空间，至少 16GB 的内存，和一些耐心，就可以在你的计算机上运行这个模型。
我们今天去公园散步吧。天气很好，阳光明媚。中文、日本語、한국어 都是常见的语言。你好，世界！谢谢你的帮助。
日本語のテキストも少し含めます。こんにちは、世界。ありがとうございます。
Привет, мир! Γειά σου κόσμε. مرحبا بالعالم नमस्ते दुनिया।
Xin chào thế giới. Merhaba dünya. Hej världen. Witaj świecie. Ahoj světe.
Emoji: 🙂 😀 😂 🎉 🚀 ❤️ 👍 🌍 🔥 ✨ 🤖 📚 ☕ 🐍 — “quotes”, ‘single’, «guillemets», … and € £ ¥ ° ± × ÷.
def generate(model, ids, max_new_tokens=20):
    for _ in range(max_new_tokens):
        logits = model(ids)[:, -1, :]
        next_id = torch.argmax(logits, dim=-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
    return ids
class Block(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attention(self.input_layernorm(x))
SELECT id, name, email FROM users WHERE created_at > '2022-07-01' ORDER BY name LIMIT 10;
for (int i = 0; i < n; i++) { sum += a[i] * b[i]; } // dot product
{"model_type": "bloom", "hidden_size": 1024, "n_head": 16, "n_layer": 24, "vocab_size": 250880}
$ pip install bloomtui && bloomtui run ~/models/bloom-560m --max-new-tokens 32
0 1 2 3 4 5 6 7 8 9 10 100 1000 2022 3.14159 42 -1 1e-5 0x1F
"""


def _choice(what: str, value: str, valid: Mapping[str, object] | tuple[str, ...]) -> None:
    if value not in valid:
        raise UsageError(f"unknown {what} {value!r}; choose one of: {', '.join(valid)}")


def train_byte_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer shaped like BLOOM's (special ids 0..3, no BOS, every byte a token)."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise UsageError(f"vocab_size {vocab_size} cannot hold the 256 byte tokens and {len(SPECIAL_TOKENS)} specials")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)  # as in BLOOM's tokenizer.json
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is a token: any text encodes
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


@cache
def _tokenizer_json(vocab_size: int) -> str:
    # the small corpus runs out of merges well before 4096 anyway
    return train_byte_bpe(_CORPUS.splitlines(), min(vocab_size, 4096)).to_str()


def build_tokenizer(vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer with BLOOM's special ids and at most `vocab_size` tokens.

    Training runs once per vocab size per process; each call returns a fresh object callers may modify.
    """
    return Tokenizer.from_str(_tokenizer_json(vocab_size))


def make_config(
    shape: DemoShape,
    *,
    tie_word_embeddings: bool = True,
    post_ln_residual: bool = False,
    aliases: bool = False,
    dtype: str = "float16",
) -> dict:
    """A config.json dict as transformers writes it; `aliases` uses old BLOOM names (n_embed, ...)."""
    _choice("dtype", dtype, DTYPES)
    names = ("n_embed", "num_attention_heads", "num_hidden_layers") if aliases else ("hidden_size", "n_head", "n_layer")
    return {
        "model_type": "bloom",
        "architectures": ["BloomForCausalLM"],
        names[0]: shape.hidden_size,
        names[1]: shape.n_head,
        names[2]: shape.n_layer,
        "vocab_size": shape.vocab_size,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "apply_residual_connection_post_layernorm": post_ln_residual,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 3,
        "tie_word_embeddings": tie_word_embeddings,
        "torch_dtype": dtype,  # transformers 4 reads this name, transformers 5 the next one
        "dtype": dtype,
        "slow_but_exact": False,
        "pretraining_tp": 1,
        "use_cache": True,
    }


def _get(config: Mapping, *names: str) -> int:
    for name in names:
        if name in config:
            return int(config[name])
    raise KeyError(f"config has none of {names}")


def _shapes(config: Mapping) -> dict[str, tuple[int, ...]]:
    """Canonical key -> shape, in the order transformers names BloomForCausalLM's parameters."""
    hidden, vocab = _get(config, "hidden_size", "n_embed"), _get(config, "vocab_size")
    n_layer = _get(config, "n_layer", "num_hidden_layers")
    shapes: dict[str, tuple[int, ...]] = {"transformer.word_embeddings.weight": (vocab, hidden)}
    layers = [("word_embeddings_layernorm", hidden, 0)]
    for i in range(n_layer):
        layers += [
            (f"h.{i}.input_layernorm", hidden, 0),
            (f"h.{i}.self_attention.query_key_value", 3 * hidden, hidden),
            (f"h.{i}.self_attention.dense", hidden, hidden),
            (f"h.{i}.post_attention_layernorm", hidden, 0),
            (f"h.{i}.mlp.dense_h_to_4h", 4 * hidden, hidden),
            (f"h.{i}.mlp.dense_4h_to_h", hidden, 4 * hidden),
        ]
    layers.append(("ln_f", hidden, 0))
    for name, out_features, in_features in layers:
        shapes[f"transformer.{name}.weight"] = (out_features, in_features) if in_features else (out_features,)
        shapes[f"transformer.{name}.bias"] = (out_features,)
    if not config.get("tie_word_embeddings", True):
        shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def _random_tensor(name: str, shape: tuple[int, ...], seed: int, init_std: float, dtype: torch.dtype) -> torch.Tensor:
    # One generator per tensor, seeded from (seed, name): any shard can be generated alone and in any order,
    # and tied and untied models share every weight but lm_head.
    generator = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
    layer_norm_weight = name.endswith(".weight") and ("layernorm" in name or "ln_f" in name)
    out = torch.empty(shape, dtype=dtype)
    flat = out.view(-1)
    for start in range(0, flat.numel(), _CHUNK):
        chunk = torch.empty(min(_CHUNK, flat.numel() - start)).normal_(0.0, init_std, generator=generator)
        flat[start : start + chunk.numel()] = chunk + 1.0 if layer_norm_weight else chunk
    return out


class _RandomWeights(Mapping[str, torch.Tensor]):
    """`random_state_dict` made lazily, one tensor per lookup, so a sharded 1b7 never sits whole in memory."""

    def __init__(self, config: Mapping, seed: int, init_std: float, dtype: torch.dtype) -> None:
        self.shapes, self.seed, self.init_std, self.dtype = _shapes(config), seed, init_std, dtype

    def __getitem__(self, key: str) -> torch.Tensor:
        return _random_tensor(key, self.shapes[key], self.seed, self.init_std, self.dtype)

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def random_state_dict(
    config: Mapping, *, seed: int = 0, init_std: float = 0.02, dtype: torch.dtype | str = torch.float16
) -> dict[str, torch.Tensor]:
    """Deterministic random weights under transformers' key names; `lm_head.weight` only when untied."""
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    return dict(_RandomWeights(config, seed, init_std, dtype))


def _nbytes(state_dict: Mapping[str, torch.Tensor], key: str) -> int:
    if isinstance(state_dict, _RandomWeights):  # size without generating the tensor
        return math.prod(state_dict.shapes[key]) * state_dict.dtype.itemsize
    tensor = state_dict[key]
    return tensor.numel() * tensor.element_size()


def _split(keys: list[str], sizes: dict[str, int], n: int) -> list[list[str]]:
    """Split `keys` in order into `n` non-empty runs of whole tensors, each near an equal share of bytes."""
    groups, rest = [], list(keys)
    for left in range(n, 1, -1):
        target, group, size = sum(sizes[k] for k in rest) / left, [], 0
        while len(rest) > left - 1 and (not group or size + sizes[rest[0]] <= target):
            size += sizes[rest[0]]
            group.append(rest.pop(0))
        groups.append(group)
    return [*groups, rest]


def _by_block(keys: list[str]) -> list[list[str]]:
    """Embeddings first, one group per block, ln_f (and an untied lm_head) last: the bigscience split."""
    groups: dict[int, list[str]] = {}
    for key in keys:
        bare = key.removeprefix("transformer.")
        if bare.startswith("word_embeddings"):
            rank = 0
        else:  # blocks in order, then everything after the last block
            rank = int(bare.split(".")[1]) + 1 if bare.startswith("h.") else 1 << 30
        groups.setdefault(rank, []).append(key)
    return [groups[rank] for rank in sorted(groups)]


def save_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    config: Mapping,
    directory: Path,
    *,
    layout: str,
    prefix: bool | None = None,
    shards: int | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> None:
    """Write config.json and the weights in `layout` (see LAYOUTS) into `directory`, creating it.

    `prefix` forces keys with (True) or without (False) `transformer.`; `lm_head.weight` is never prefixed.
    `shards` is the file count of the two transformers-style sharded layouts; the others fix their own.
    """
    _choice("layout", layout, LAYOUTS)
    if shards is not None and (layout not in SHARDED or not 1 <= shards <= len(state_dict)):
        layouts = " or ".join(sorted(SHARDED))
        raise UsageError(f"shards={shards} needs layout {layouts} and a count in 1..{len(state_dict)}")
    prefix = layout in PREFIXED if prefix is None else prefix
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(dict(config), indent=2) + "\n")

    keys = list(state_dict)
    sizes = {key: _nbytes(state_dict, key) for key in keys}
    pattern, index_name = FILES[layout]
    if index_name is None:
        groups = [keys]
    elif layout in SHARDED:
        groups = _split(keys, sizes, shards or DEFAULT_SHARDS)
    else:
        groups = _by_block(keys)

    def saved_name(key: str) -> str:
        bare = key.removeprefix("transformer.")
        return key if key == "lm_head.weight" else f"transformer.{bare}" if prefix else bare

    weight_map: dict[str, str] = {}
    for index, group in enumerate(groups, start=1):
        name = pattern.format(i=index, n=len(groups))
        if on_progress:
            on_progress(f"writing shard {index}/{len(groups)} ({name})" if len(groups) > 1 else f"writing {name}")
        # contiguous().clone(): one storage per tensor, so a .bin holds no views into a shared buffer.
        # Freshly generated random tensors already own theirs; copying them would double peak memory.
        fresh = isinstance(state_dict, _RandomWeights)
        tensors = {saved_name(k): state_dict[k] if fresh else state_dict[k].contiguous().clone() for k in group}
        if name.endswith(".safetensors"):
            save_file(tensors, directory / name, metadata={"format": "pt"})  # transformers wants "format"
        else:
            torch.save(tensors, directory / name)
        weight_map.update(dict.fromkeys(tensors, name))
        del tensors
    if index_name is not None:
        index_json = {
            "metadata": {"total_size": sum(sizes.values())},
            "weight_map": dict(sorted(weight_map.items())),
        }
        (directory / index_name).write_text(json.dumps(index_json, indent=2) + "\n")


def save_tokenizer(vocab_size: int, directory: Path) -> None:
    """The demo tokenizer for `vocab_size`, as save_tokenizer_files writes it."""
    save_tokenizer_files(build_tokenizer(vocab_size), directory)


def save_tokenizer_files(tokenizer: Tokenizer, directory: Path) -> None:
    """tokenizer.json plus the two small files transformers' AutoTokenizer reads beside it."""
    directory = Path(directory)
    (directory / "tokenizer.json").write_text(tokenizer.to_str(), encoding="utf-8")
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    tokenizer_config = {
        "tokenizer_class": "BloomTokenizerFast",
        **specials,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,  # True would rewrite " ." and break exact round trips
        "model_max_length": 1 << 40,
        "padding_side": "left",  # as BLOOM's, so batched prompts end at the same position
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (directory / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")


def _ours(name: str) -> bool:
    """Whether a file name is one write_demo_model may write (and so may replace under overwrite)."""
    fixed = {"config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "README.md"}
    safetensors = name.startswith("model") and name.endswith((".safetensors", ".safetensors.index.json"))
    return (
        name in fixed
        or safetensors
        or (name.startswith("pytorch_model") and name.endswith((".bin", ".bin.index.json")))
    )


def write_demo_model(
    directory: Path,
    *,
    preset: str = "tiny",
    layout: str = "safetensors",
    dtype: str | None = None,
    seed: int = 0,
    init_std: float = 0.02,
    untied: bool = False,
    post_ln_residual: bool = False,
    aliases: bool = False,
    overwrite: bool = False,
    on_progress: Callable[[str], None] | None = None,
) -> Path:
    """Write a complete random-weight model folder (config, tokenizer, weights, README) and return it.

    The folder is built beside `directory` and renamed into place, so a crash leaves no half model. A
    non-empty `directory` is refused unless `overwrite`; even then only files this module writes are
    replaced (stale weights of another layout included), and everything else in it is left alone.
    """
    _choice("preset", preset, ALL_PRESETS)
    _choice("layout", layout, LAYOUTS)
    dtype = weight_dtype(preset, dtype)
    _choice("dtype", dtype, DTYPES)
    directory = Path(directory).expanduser().resolve()  # resolve: "." has no name to stage beside
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory} exists and is not a folder")
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise UsageError(
            f"{directory} is not empty; choose an empty or new folder, or --force to replace an earlier demo "
            "model's files there (other files are left alone)"
        )
    say = on_progress or (lambda _message: None)
    staging = directory.parent / f".{directory.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()  # plain mkdir (not mkdtemp) so the final folder gets the user's usual permissions
    except OSError as exc:
        raise UsageError(f"cannot create {directory}: {exc.strerror or exc}") from None
    try:
        if preset in demo_models.NAMES:
            _write_trained(preset, staging, layout, dtype, say)
        else:
            shape = PRESETS[preset]
            config = make_config(
                shape, tie_word_embeddings=not untied, post_ln_residual=post_ln_residual, aliases=aliases, dtype=dtype
            )
            say("building tokenizer")
            save_tokenizer(shape.vocab_size, staging)
            readme = _README.format(preset=preset, layout=layout, dtype=dtype, seed=seed)
            (staging / "README.md").write_text(readme)
            weights = _RandomWeights(config, seed, init_std, DTYPES[dtype])
            save_checkpoint(weights, config, staging, layout=layout, on_progress=say)
        _usual_permissions(staging)
        if directory.is_dir() and any(directory.iterdir()):
            for old in directory.iterdir():
                if old.is_file() and _ours(old.name):
                    old.unlink()
            for new in staging.iterdir():
                os.replace(new, directory / new.name)
            staging.rmdir()
        else:
            if directory.is_dir():
                directory.rmdir()
            os.rename(staging, directory)
    except OSError as exc:  # disk full, a folder we may not write: say so, leave nothing behind
        shutil.rmtree(staging, ignore_errors=True)
        raise UsageError(f"cannot write {directory}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def weight_dtype(preset: str, dtype: str | None) -> str:
    """The dtype a demo model's weights are written in: the one asked for, else the trained ones' bf16 (as
    shipped), else float16."""
    return dtype or ("bfloat16" if preset in demo_models.NAMES else "float16")


def _usual_permissions(folder: Path) -> None:
    """Files as the user's umask makes them: safetensors writes its files 0600, which other users (and a
    model shared from this folder) cannot read."""
    umask = os.umask(0)
    os.umask(umask)
    for file in folder.iterdir():
        if file.is_file():
            file.chmod(0o666 & ~umask)


def _write_trained(name: str, staging: Path, layout: str, dtype: str, say: Callable[[str], None]) -> None:
    """A copy of a shipped trained model (bloomtui/demo_models) in any layout and dtype."""
    from safetensors.torch import load_file

    source = demo_models.path(name)
    config = json.loads((source / "config.json").read_text())
    config.update(torch_dtype=dtype, dtype=dtype)
    state = {
        (key if key.startswith(("transformer.", "lm_head.")) else f"transformer.{key}"): t.to(DTYPES[dtype])
        for key, t in load_file(source / "model.safetensors").items()
    }
    for file in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        shutil.copyfile(source / file, staging / file)
    shutil.copyfile(source / "README.md", staging / "README.md")
    save_checkpoint(state, config, staging, layout=layout, on_progress=say)
