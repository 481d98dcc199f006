"""A BLOOM checkpoint folder: which layout it uses, and where every tensor of every block lies.

Handles every layout in DESIGN.md: single or sharded safetensors (`model-000NN-of-000MM` or
`model_000NN-of-000MM`), single or sharded `.bin` (transformers' and bigscience's names), keys bare or
`transformer.`-prefixed, LM head tied or stored. Opening reads only headers and indexes, never weights,
and nothing is ever written into the folder.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from bloomtui.engine.weights.config import HEAD_INT4_GROUP, INT4_ROWS, BloomConfig, Scheme
from bloomtui.engine.weights.tensorfile import TensorRef, index_file
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
MATRICES = (
    "self_attention.query_key_value.weight",
    "self_attention.dense.weight",
    "mlp.dense_h_to_4h.weight",
    "mlp.dense_4h_to_h.weight",
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
    embedding_scales: TensorRef | None = None
    """Per-row scales of quantised embeddings (prepared folders): [rows] for int8, [rows, groups, 2] (scale,
    zero) for int4 rows; else None."""
    head_scales: TensorRef | None = None

    @property
    def head_row(self) -> tuple[int, int]:
        """Stored elements per head row: (of the matrix, of its scales; 0 when it has none). The head and the
        embeddings are stored alike."""
        scales = 0 if self.head_scales is None else math.prod(self.head_scales.shape[1:])
        return self.head.shape[1], scales

    @property
    def scheme(self) -> Scheme | None:
        return self.config.scheme

    @property
    def head_refs(self) -> tuple[TensorRef, ...]:
        """What the LM head is stored as: the matrix, and its scales when quantised."""
        return (self.head,) if self.head_scales is None else (self.head, self.head_scales)

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @property
    def dtype(self):  # noqa: ANN201 - torch.dtype
        """The stored float dtype (of the matrices; of LayerNorms and scales in a quantised folder)."""
        return self.blocks[0]["input_layernorm.weight"].dtype if self.blocks else None

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

        def take(name: str, shape: tuple[int, ...], dtype: torch.dtype | None = None) -> TensorRef:
            """The tensor `name`, checked to be float (or exactly `dtype`) with the shape the config implies."""
            ref = refs.get(name)
            if ref is None:
                raise CheckpointError(f"{folder}: missing tensor {name}")
            if ref.shape != shape:
                raise CheckpointError(
                    f"{folder}: {name} has shape {list(ref.shape)}, config.json implies {list(shape)}"
                )
            if (ref.dtype != dtype) if dtype is not None else not ref.dtype.is_floating_point:
                raise CheckpointError(f"{folder}: {name} has dtype {ref.dtype}, expected {dtype or 'a float'}")
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
        expected = stored_block_tensors(config)
        blocks = tuple(
            {name: take(f"h.{i}.{name}", shape, dtype) for name, (shape, dtype) in expected.items()}
            for i in range(config.n_layer)
        )
        small = {name: take(name, (h,)) for name in SMALL_TENSORS}
        rows_quantized = config.scheme is not None and config.scheme.quantized

        def matrix(prefix: str) -> tuple[TensorRef, TensorRef | None]:
            if rows_quantized and config.scheme.head == "int4":  # int4 rows, (scale, zero) per group
                groups = h // HEAD_INT4_GROUP
                return take(f"{prefix}.qweight", (v, h // 2), torch.uint8), take(f"{prefix}.scales", (v, groups, 2))
            if rows_quantized:  # int8 rows with one scale each
                return take(f"{prefix}.qweight", (v, h), torch.int8), take(f"{prefix}.scales", (v,))
            return take(f"{prefix}.weight", (v, h)), None

        embeddings, embedding_scales = matrix("word_embeddings")
        head, head_scales = embeddings, embedding_scales
        if not config.tie_word_embeddings:
            if not any(k.startswith("lm_head.") for k in refs):
                raise CheckpointError(f"{folder}: config.json says the head is untied but there is no lm_head.weight")
            head, head_scales = matrix("lm_head")
        return cls(folder, config, layout, files, blocks, small, embeddings, head, embedding_scales, head_scales)


def stored_block_tensors(config: BloomConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype | None]]:
    """Name -> (shape, exact dtype or None for any float) of what one block stores, in storage order.

    Plain checkpoints store BLOCK_TENSORS. Prepared int8/int4 folders store each of the four MATRICES as
    `<name>.qweight` and `<name>.scales` in the layout matmul.QuantizedLinear describes."""
    shapes = block_shapes(config)
    scheme = config.scheme
    out: dict[str, tuple[tuple[int, ...], torch.dtype | None]] = {}
    for name in BLOCK_TENSORS:
        if scheme is None or not scheme.quantized or name not in MATRICES:
            out[name] = (shapes[name], None)
            continue
        n, k = shapes[name]
        base = name.removesuffix("weight")
        if scheme.weights == "int8":
            out[base + "qweight"] = ((n, k), torch.int8)
            out[base + "scales"] = ((n,), None)
        else:
            out[base + "qweight"] = ((n, k // 2), torch.uint8)
            groups = k // (scheme.group_size or 1)
            rows_layout = scheme.int4_layout == INT4_ROWS  # format 1 (torch's packing) kept them [groups, n, 2]
            out[base + "scales"] = ((n, groups, 2) if rows_layout else (groups, n, 2), None)
    return out


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
