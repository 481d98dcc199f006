"""BLOOM hyper-parameters read from a checkpoint's config.json, old field names included."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bloomtui.errors import ConfigError

# Old BLOOM configs (bigscience/bloom itself) use the names on the right.
_ALIASES = {
    "hidden_size": ("hidden_size", "n_embed"),
    "n_head": ("n_head", "num_attention_heads"),
    "n_layer": ("n_layer", "num_hidden_layers"),
}


TRAINING_CONTEXT = 2048
"""Every bigscience BLOOM and bloomz was trained on 2048-token sequences (their config's `seq_length`)."""
COMPUTE_DTYPES = ("float32", "bfloat16")
QUANT_METHOD = "bloomtui"
SCHEMES = ("bf16", "int8", "int4")
INT4_ROWS = "bloomtui-rows/chunk64"
"""The int4 layout `prepare` writes (format 2), as recorded in a prepared config's int4_layout."""


@dataclass(frozen=True)
class TorchInt4Layout:
    """Where torch's int4 packing (format 1 folders) puts each weight: the packed bytes are [out/rows, in, rows/2],
    and nibble p of a (row block, input) run (low nibble first) holds row `order[p]` of that block."""

    rows: int
    order: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> TorchInt4Layout:
        kind, rows, order = text.split("/")
        if kind != "torch-cpu-int4pack":
            raise ValueError(f"unknown int4 layout {text!r}")
        return cls(int(rows.removeprefix("rows")), tuple(int(i) for i in order.split(",")))


HEAD_SCHEMES = ("int8", "int4")
HEAD_INT4_GROUP = 32
"""Inputs per (scale, zero) of int4 embedding/head rows: the head decides every token's logits, so its groups
are the smallest (5 bits a weight with the bf16 pairs)."""
FORMAT_VERSION = 2
"""The prepared-folder format `prepare` writes: 2 stores int4 in the rows layout (quant.py), 1 (no version
recorded) in torch's CPU packing, still read (repacked as it loads)."""


@dataclass(frozen=True)
class Scheme:
    """How a folder written by `bloomtui prepare` stores its weights (config.json's quantization_config)."""

    weights: str
    """"bf16", "int8" or "int4" for the four matrices of each block."""
    group_size: int | None = None
    int4_layout: str | None = None
    """The int4 layout: INT4_ROWS, or (format 1) torch's packing on the CPU that prepared it."""
    format_version: int = FORMAT_VERSION
    head: str = "int8"
    """How the embeddings (and an untied LM head) are stored when the blocks are quantised: "int8" rows with a
    scale each, or "int4" rows in the int4 layout with groups of HEAD_INT4_GROUP (format 2 only). bf16 folders
    keep them in bf16."""

    @property
    def head_bits(self) -> int:
        """16, 8 or 4: the bits of the embedding/head rows."""
        return 16 if not self.quantized else 4 if self.head == "int4" else 8

    @property
    def quantized(self) -> bool:
        return self.weights != "bf16"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "quant_method": QUANT_METHOD,
            "weights": self.weights,
            "format_version": self.format_version,
        }
        if self.group_size:
            data["group_size"] = self.group_size
        if self.int4_layout:
            data["int4_layout"] = self.int4_layout
        if self.head != "int8":
            data["head"] = self.head
        return data

    @classmethod
    def from_json(cls, raw: Any, source: str) -> Scheme | None:
        if raw is None:
            return None
        if not isinstance(raw, dict) or raw.get("quant_method") != QUANT_METHOD or raw.get("weights") not in SCHEMES:
            raise ConfigError(f"{source}: quantization_config {raw!r} is not one bloomtui reads")
        group = raw.get("group_size")
        if raw["weights"] == "int4" and (not isinstance(group, int) or not isinstance(raw.get("int4_layout"), str)):
            raise ConfigError(f"{source}: an int4 quantization_config needs group_size and int4_layout")
        layout = raw.get("int4_layout")
        if raw["weights"] == "int4" and layout != INT4_ROWS:
            try:
                TorchInt4Layout.parse(layout)  # format 1: repacked as it loads
            except (ValueError, AttributeError):
                raise ConfigError(f"{source}: int4_layout {layout!r} is not one bloomtui reads") from None
        version = raw.get("format_version", 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ConfigError(
                f"{source}: prepared in format {version!r} by a newer bloomtui (this one reads up to "
                f"{FORMAT_VERSION}); upgrade bloomtui, or prepare the model again with this one"
            )
        head = raw.get("head", "int8")
        if head not in HEAD_SCHEMES or (head == "int4" and (raw["weights"] == "bf16" or version < 2)):
            raise ConfigError(f"{source}: quantization_config head {head!r} is not one bloomtui reads")
        return cls(raw["weights"], group, raw.get("int4_layout"), version, head)


@dataclass(frozen=True)
class BloomConfig:
    hidden_size: int
    n_head: int
    n_layer: int
    vocab_size: int
    layer_norm_epsilon: float = 1e-5
    apply_residual_connection_post_layernorm: bool = False
    tie_word_embeddings: bool = True
    eos_token_id: int | None = 2
    torch_dtype: str | None = None
    scheme: Scheme | None = None
    """Set for folders written by `bloomtui prepare`."""
    recommended_dtype: str | None = None
    """The compute dtype the model's makers recommend (config.json's `bloomtui.compute_dtype`): the shipped
    demo, trained in fp32 and tiny, asks for float32 wherever it is opened; --dtype still wins."""
    training_context: int = TRAINING_CONTEXT
    """Tokens per sequence the model was trained on (`seq_length`, else BLOOM's 2048): past it, ALiBi lets it
    run on, but the text gets worse."""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_head

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> BloomConfig:
        if raw.get("model_type") != "bloom":
            raise ConfigError(f"{source}: model_type is {raw.get('model_type')!r}, not 'bloom'")
        values: dict[str, Any] = {}
        for name, keys in _ALIASES.items():
            found = next((raw[k] for k in keys if k in raw), None)
            if not isinstance(found, int) or isinstance(found, bool) or found <= 0:
                raise ConfigError(f"{source}: needs a positive integer {' or '.join(keys)}")
            values[name] = found
        vocab = raw.get("vocab_size")
        if not isinstance(vocab, int) or vocab <= 0:
            raise ConfigError(f"{source}: needs a positive integer vocab_size")
        if values["hidden_size"] % values["n_head"]:
            raise ConfigError(
                f"{source}: hidden_size {values['hidden_size']} is not divisible by n_head {values['n_head']}"
            )
        if raw.get("pretraining_tp", 1) > 1 and raw.get("slow_but_exact"):
            raise ConfigError(f"{source}: slow_but_exact tensor-parallel emulation is not supported")
        ours = raw.get("bloomtui") if isinstance(raw.get("bloomtui"), dict) else {}
        recommended = ours.get("compute_dtype")
        if recommended is not None and recommended not in COMPUTE_DTYPES:
            raise ConfigError(f"{source}: bloomtui.compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}")
        context = raw.get("seq_length")
        eos = raw.get("eos_token_id", 2)
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        return cls(
            vocab_size=vocab,
            layer_norm_epsilon=float(raw.get("layer_norm_epsilon", 1e-5)),
            apply_residual_connection_post_layernorm=bool(raw.get("apply_residual_connection_post_layernorm", False)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", True)),
            eos_token_id=eos if isinstance(eos, int) else None,
            torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
            scheme=Scheme.from_json(raw.get("quantization_config"), source),
            recommended_dtype=recommended,
            training_context=context if type(context) is int and context > 0 else TRAINING_CONTEXT,
            **values,
        )

    @classmethod
    def from_file(cls, path: Path) -> BloomConfig:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: not found (a BLOOM checkpoint folder has a config.json)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read it as JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return cls.from_dict(raw, source=str(path))
