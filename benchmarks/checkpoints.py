"""The benchmark's demo checkpoints, built once and cached under the work folder.

Regular models come from `bloomtui.demo.write_demo_model`. Full-width BLOOM-176B blocks (hidden 14336,
112 heads, ~4.9 GB each in bf16) come from a small streaming safetensors writer here: it never holds more
than a read-chunk of weights in memory, so writing 15 GB of blocks needs no more RAM than a 560m model.
The layout is the 176B safetensors conversions' (`model_000NN-of-000MM.safetensors`, bare keys, embeddings
in shard 1, one shard per block, `ln_f` last).

Compressed copies (int8/int4) are written by `bloomtui prepare` from one of the above (or from a shipped demo
model) and cached beside them, stamped with their source's size and mtime so a re-exported source is
prepared again.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bloomtui import demo, demo_models

BF16_BYTES = 2


@dataclass(frozen=True)
class ModelSpec:
    name: str
    preset: str | None  # a bloomtui.demo preset, or None for the wide-block writer
    layout: str
    dtype: str
    shape: demo.DemoShape | None = None  # wide blocks only

    def path(self, work: Path) -> Path:
        return work / self.name


@dataclass(frozen=True)
class PreparedSpec:
    """A `bloomtui prepare` output of another checkpoint (a spec key of the same set, or a folder)."""

    name: str
    source: str
    weights: str
    head: str = "int8"
    """How the embeddings/LM head are stored (prepare --head)."""

    def path(self, work: Path) -> Path:
        return work / self.name


STAMP = ".bench-source"
_SETS = {
    False: ("bloom-560m-shape", "560m", "bloom-176b-width-3-blocks", demo.DemoShape(3, 14336, 112, 1024)),
    True: ("quick-medium", "medium", "quick-wide-3-blocks", demo.DemoShape(3, 512, 8, 1024)),
}
"""Full and quick (tiny, for a test of the harness) sets: the regular models' name prefix and bloomtui.demo
preset, and the wide blocks' name prefix and shape (the full set's: 3 blocks of BLOOM-176B's width)."""


def prepared_specs(quick: bool) -> dict[str, PreparedSpec]:
    """int8/int4 copies of the bf16 model and of the trained demo model (the quality rows)."""
    trained = str(demo_models.path("trained"))
    prefix, _, wide, _ = _SETS[quick]
    out = {f"bf16_{w}": PreparedSpec(f"{prefix}-{w}", "bf16", w) for w in ("int8", "int4")}
    out |= {f"trained_{w}": PreparedSpec(f"trained-{w}", trained, w) for w in ("int8", "int4")}
    out["wide_int4"] = PreparedSpec(f"{wide}-int4", "wide", "int4")
    return out


def _stamp(source: Path) -> str:
    """Size and mtime of every weight file: changes when the source is re-exported in place."""
    files = sorted(p for p in source.iterdir() if p.suffix in (".safetensors", ".bin"))
    return json.dumps([[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files])


def ensure_prepared(spec: PreparedSpec, source: Path, work: Path, say: Callable[[str], None] = print) -> Path:
    """The prepared folder for `spec` from `source`, (re)written when missing, or its source or the prepared
    format changed."""
    from bloomtui.engine.prepare import prepare
    from bloomtui.engine.weights.config import FORMAT_VERSION

    path = spec.path(work)
    stamp = f"{_stamp(source)} format {FORMAT_VERSION} head {spec.head}"
    if (path / "config.json").is_file() and (path / STAMP).is_file() and (path / STAMP).read_text() == stamp:
        return path
    say(f"preparing {spec.name} ({spec.weights} of {source.name}) ...")
    prepare(source, path, spec.weights, force=path.exists(), head=spec.head)
    (path / STAMP).write_text(stamp)
    return path


def _specs(quick: bool) -> dict[str, ModelSpec]:
    prefix, preset, wide, shape = _SETS[quick]
    return {
        "bf16": ModelSpec(f"{prefix}-bf16", preset, "safetensors", "bfloat16"),
        "fp32": ModelSpec(f"{prefix}-fp32", preset, "safetensors", "float32"),
        "seed": ModelSpec(f"{prefix}-bf16-bigscience", preset, "bigscience", "bfloat16"),
        "wide": ModelSpec(f"{wide}-bf16", None, "safetensors-underscore", "bfloat16", shape),
    }


def full_specs() -> dict[str, ModelSpec]:
    return _specs(quick=False)


def quick_specs() -> dict[str, ModelSpec]:
    return _specs(quick=True)


def ensure(spec: ModelSpec, work: Path, say=print) -> Path:  # noqa: ANN001 - a print-like callable
    """The checkpoint folder for `spec`, written on first use (atomically: staged, then renamed)."""
    path = spec.path(work)
    if (path / "config.json").is_file():
        return path
    work.mkdir(parents=True, exist_ok=True)
    if spec.preset is not None:
        say(f"writing {spec.name} ({spec.preset}, {spec.layout}, {spec.dtype}) ...")
        demo.write_demo_model(path, preset=spec.preset, layout=spec.layout, dtype=spec.dtype)
    else:
        assert spec.shape is not None
        say(f"writing {spec.name} ({spec.shape.n_layer} blocks of hidden {spec.shape.hidden_size}) ...")
        write_wide_blocks(path, spec.shape)
    return path


def _block_tensors(i: int, hidden: int) -> list[tuple[str, tuple[int, ...]]]:
    h = hidden
    return [
        (f"h.{i}.input_layernorm.weight", (h,)),
        (f"h.{i}.input_layernorm.bias", (h,)),
        (f"h.{i}.self_attention.query_key_value.weight", (3 * h, h)),
        (f"h.{i}.self_attention.query_key_value.bias", (3 * h,)),
        (f"h.{i}.self_attention.dense.weight", (h, h)),
        (f"h.{i}.self_attention.dense.bias", (h,)),
        (f"h.{i}.post_attention_layernorm.weight", (h,)),
        (f"h.{i}.post_attention_layernorm.bias", (h,)),
        (f"h.{i}.mlp.dense_h_to_4h.weight", (4 * h, h)),
        (f"h.{i}.mlp.dense_h_to_4h.bias", (4 * h,)),
        (f"h.{i}.mlp.dense_4h_to_h.weight", (h, 4 * h)),
        (f"h.{i}.mlp.dense_4h_to_h.bias", (h,)),
    ]


class _Pool:
    """Random bf16 values (std 0.02) that tensors are cut from at varying offsets: random enough for
    timing (dense math does not care), and writing costs only the disk's time."""

    def __init__(self, elems: int = 1 << 24, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.values = (torch.randn(elems, generator=generator) * 0.02).to(torch.bfloat16)
        self.ones = self.values + 1.0  # layer-norm weights sit near 1
        self._next = 0

    def write(self, f, numel: int, layer_norm_weight: bool) -> None:  # noqa: ANN001 - a binary file
        source = self.ones if layer_norm_weight else self.values
        n = source.numel()
        done = 0
        while done < numel:
            start = self._next % (n // 2)
            self._next += 7919
            count = min(numel - done, n - start)
            f.write(memoryview(source[start : start + count].view(torch.uint8).numpy()))
            done += count


def _write_safetensors(path: Path, tensors: list[tuple[str, tuple[int, ...]]], pool: _Pool) -> None:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        nbytes = BF16_BYTES * int(torch.Size(shape).numel())
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape in tensors:
            ln_weight = name.endswith("layernorm.weight") or name == "ln_f.weight"
            pool.write(f, int(torch.Size(shape).numel()), ln_weight)


def write_wide_blocks(directory: Path, shape: demo.DemoShape) -> Path:
    """A bf16 BLOOM checkpoint of `shape` (e.g. 3 blocks of BLOOM-176B's width, small vocab)."""
    directory = Path(directory)
    staging = directory.parent / f".{directory.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        config = demo.make_config(shape, dtype="bfloat16")
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        demo.save_tokenizer(shape.vocab_size, staging)
        h = shape.hidden_size
        groups = [[("word_embeddings.weight", (shape.vocab_size, h))]]
        groups[0] += [("word_embeddings_layernorm.weight", (h,)), ("word_embeddings_layernorm.bias", (h,))]
        groups += [_block_tensors(i, h) for i in range(shape.n_layer)]
        groups.append([("ln_f.weight", (h,)), ("ln_f.bias", (h,))])
        pool = _Pool()
        weight_map, total = {}, 0
        for index, group in enumerate(groups, start=1):
            name = f"model_{index:05d}-of-{len(groups):05d}.safetensors"
            _write_safetensors(staging / name, group, pool)
            for key, tshape in group:
                weight_map[key] = name
                total += BF16_BYTES * int(torch.Size(tshape).numel())
        index_json = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (staging / "model.safetensors.index.json").write_text(json.dumps(index_json, indent=2) + "\n")
        if directory.exists():
            shutil.rmtree(directory)
        os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory
