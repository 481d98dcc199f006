"""A BLOOM checkpoint folder: which layout it uses, and where every tensor of every block lies.

Handles every layout in DESIGN.md: single or sharded safetensors (`model-000NN-of-000MM` or
`model_000NN-of-000MM`), single or sharded `.bin` (transformers' and bigscience's names), keys bare or
`transformer.`-prefixed, LM head tied or stored. Opening reads only headers and indexes, never weights,
and nothing is ever written into the folder.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from bloomtui.engine.config import BloomConfig
from bloomtui.engine.tensorfile import TensorRef, index_file
from bloomtui.errors import CheckpointError, ConfigError

# Per-block tensor names, in the order a block is laid out in memory.
BLOCK_TENSORS = (
    "input_layernorm.weight",
    "input_layernorm.bias",
    "self_attention.query_key_value.weight",
    "self_attention.query_key_value.bias",
    "self_attention.dense.weight",
    "self_attention.dense.bias",
    "post_attention_layernorm.weight",
    "post_attention_layernorm.bias",
    "mlp.dense_h_to_4h.weight",
    "mlp.dense_h_to_4h.bias",
    "mlp.dense_4h_to_h.weight",
    "mlp.dense_4h_to_h.bias",
)
SMALL_TENSORS = (
    "word_embeddings_layernorm.weight",
    "word_embeddings_layernorm.bias",
    "ln_f.weight",
    "ln_f.bias",
)
# Preference order: safetensors first (no pickle, same bytes), then PyTorch's zip files.
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLES = ("model.safetensors", "pytorch_model.bin")
_BLOCK_KEY = re.compile(r"h\.(\d+)\.(.+)")


def block_shapes(config: BloomConfig) -> dict[str, tuple[int, ...]]:
    h = config.hidden_size
    return {
        "input_layernorm.weight": (h,),
        "input_layernorm.bias": (h,),
        "self_attention.query_key_value.weight": (3 * h, h),
        "self_attention.query_key_value.bias": (3 * h,),
        "self_attention.dense.weight": (h, h),
        "self_attention.dense.bias": (h,),
        "post_attention_layernorm.weight": (h,),
        "post_attention_layernorm.bias": (h,),
        "mlp.dense_h_to_4h.weight": (4 * h, h),
        "mlp.dense_h_to_4h.bias": (4 * h,),
        "mlp.dense_4h_to_h.weight": (h, 4 * h),
        "mlp.dense_4h_to_h.bias": (h,),
    }


@dataclass(frozen=True)
class Checkpoint:
    folder: Path
    config: BloomConfig
    layout: str
    files: tuple[Path, ...]
    blocks: tuple[dict[str, TensorRef], ...]
    """Per block, its tensors by the names in BLOCK_TENSORS."""
    small: dict[str, TensorRef]
    embeddings: TensorRef
    head: TensorRef
    """The LM head matrix: `lm_head.weight` when stored and untied, else the word embeddings."""

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @property
    def dtype(self):  # noqa: ANN201 - torch.dtype
        return self.blocks[0]["self_attention.query_key_value.weight"].dtype if self.blocks else None

    def block_nbytes(self, index: int = 0) -> int:
        return sum(ref.nbytes for ref in self.blocks[index].values())

    @property
    def total_file_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    @property
    def tied(self) -> bool:
        return self.head == self.embeddings

    @classmethod
    def open(cls, folder: Path) -> Checkpoint:
        folder = Path(folder)
        if not folder.exists():
            raise CheckpointError(f"{folder}: no such folder")
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: is a file; give the checkpoint folder that holds config.json")
        if not any(folder.iterdir()):
            raise CheckpointError(f"{folder}: the folder is empty")
        config = BloomConfig.from_file(folder / "config.json")
        layout, key_files = _find_weight_files(folder)
        refs: dict[str, TensorRef] = {}
        files = tuple(dict.fromkeys(key_files.values())) if key_files else ()
        if not files:
            single = next(folder / n for n in _SINGLES if (folder / n).is_file())
            files = (single,)
        for path in files:
            if not path.is_file():
                raise CheckpointError(f"{path}: shard named in the index is missing")
            for key, ref in index_file(path).items():
                if key_files and key_files.get(key, path) != path:
                    continue  # the index assigns this key to another file
                refs[_bare(key)] = ref
        if key_files:
            missing = sorted({_bare(k) for k in key_files} - refs.keys())
            if missing:
                raise CheckpointError(f"{folder}: tensor {missing[0]} is in the index but not in its shard")
        return cls._assemble(folder, config, layout, files, refs)

    @classmethod
    def _assemble(
        cls, folder: Path, config: BloomConfig, layout: str, files: tuple[Path, ...], refs: dict[str, TensorRef]
    ) -> Checkpoint:
        h, v = config.hidden_size, config.vocab_size

        def take(name: str, shape: tuple[int, ...]) -> TensorRef:
            ref = refs.get(name)
            if ref is None:
                raise CheckpointError(f"{folder}: missing tensor {name}")
            if ref.shape != shape:
                raise CheckpointError(
                    f"{folder}: {name} has shape {list(ref.shape)}, config.json implies {list(shape)}"
                )
            if not ref.dtype.is_floating_point:
                raise CheckpointError(f"{folder}: {name} has non-float dtype {ref.dtype}")
            return ref

        layer_ids = {int(m.group(1)) for k in refs if (m := _BLOCK_KEY.fullmatch(k))}
        if layer_ids and max(layer_ids) >= config.n_layer:
            raise CheckpointError(
                f"{folder}: weights hold {max(layer_ids) + 1} blocks but config.json says n_layer={config.n_layer}"
            )
        if len(layer_ids) < config.n_layer:
            raise CheckpointError(
                f"{folder}: config.json says n_layer={config.n_layer} but weights hold {len(layer_ids)} blocks"
            )
        shapes = block_shapes(config)
        blocks = tuple(
            {name: take(f"h.{i}.{name}", shapes[name]) for name in BLOCK_TENSORS} for i in range(config.n_layer)
        )
        small = {name: take(name, (h,)) for name in SMALL_TENSORS}
        embeddings = take("word_embeddings.weight", (v, h))
        head = embeddings
        if "lm_head.weight" in refs and not config.tie_word_embeddings:
            head = take("lm_head.weight", (v, h))
        elif not config.tie_word_embeddings:
            raise CheckpointError(f"{folder}: config.json says the head is untied but there is no lm_head.weight")
        return cls(folder, config, layout, files, blocks, small, embeddings, head)


def _bare(key: str) -> str:
    return key.removeprefix("transformer.")


def _find_weight_files(folder: Path) -> tuple[str, dict[str, Path]]:
    """Return (layout description, key -> file from the index); the map is empty for single files."""
    for name in _INDEXES:
        index_path = folder / name
        if index_path.is_file():
            try:
                weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
                if not isinstance(weight_map, dict) or not weight_map:
                    raise ValueError("empty weight_map")
                key_files = {str(k): folder / str(f) for k, f in weight_map.items()}
            except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{index_path}: cannot read the shard index ({exc})") from None
            shards = sorted({f.name for f in key_files.values()})
            kind = "safetensors" if name.startswith("model.") else "pytorch .bin"
            return f"{kind}, {len(shards)} shards ({shards[0]} ...)", key_files
    for name in _SINGLES:
        if (folder / name).is_file():
            return ("safetensors, single file" if name.endswith("safetensors") else "pytorch .bin, single file"), {}
    found = sorted(p.name for p in folder.iterdir())[:6]
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder}/config.json: not found")
    raise CheckpointError(
        f"{folder}: no weights found (expected model.safetensors, pytorch_model.bin or a *.index.json; "
        f"found {', '.join(found)})"
    )
