"""The prepared folder around the tensors: where it may be written, and how a finished OUT.partial becomes OUT
(config.json with the scheme, the shard index, the tokenizer, a model card, then one rename), so an interrupted
run never leaves a half model under the name the user asked for."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from bloomtui import __version__
from bloomtui.engine.prepare.convert import INDEX_NAME
from bloomtui.engine.weights.checkpoint import Checkpoint
from bloomtui.engine.weights.config import HEAD_INT4_GROUP, QUANT_METHOD, BloomConfig, Scheme
from bloomtui.errors import UsageError

COPIED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
"""Copied into OUT as they are: the tokenizer, and the model's recommended decoding settings."""
SPARE_BYTES = 64 * 1024**2


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _is_ours(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text())
        return config.get("quantization_config", {}).get("quant_method") == QUANT_METHOD
    except (OSError, ValueError, AttributeError):
        return False


def check_target(out: Path, force: bool, source: Path | None = None) -> None:
    """Refuse an OUT that is the source or inside it, or that exists without --force, or that --force would
    replace though it is not an earlier output of this command."""
    if source is not None and (out.resolve() == source.resolve() or source.resolve() in out.resolve().parents):
        raise UsageError(f"{out}: the output must not be the model folder or inside it (it is never written to)")
    if out.exists():
        if not force:
            raise UsageError(f"{out} already exists; choose another folder or add --force to replace it")
        if not out.is_dir() or (any(out.iterdir()) and not _is_ours(out)):
            raise UsageError(f"{out} is not a folder written by `bloomtui prepare`; refusing to replace it")


def check_space(folder: Path, need: int, what: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < need + SPARE_BYTES:
        raise UsageError(f"{folder}: {free / 1e9:.2f} GB free, {what} needs {need / 1e9:.2f} GB")


def card(source: str, stored: str, scheme: Scheme, config: BloomConfig, block_bytes: int, embed_bytes: int) -> str:
    """The prepared folder's README: where it came from, how it stores its weights, what a token reads."""
    lines = [
        f"# {Path(source).name}, prepared by bloomtui {__version__}",
        "",
        f"- Source: `{source}` ({stored}).",
        f"- Weights: `{scheme.weights}`"
        + (f", group size {scheme.group_size} (asymmetric, round to nearest)" if scheme.weights == "int4" else "")
        + (" (symmetric, per output channel)" if scheme.weights == "int8" else "")
        + "; LayerNorms and biases in bf16"
        + (f"; embeddings/LM head {scheme.head} per row." if scheme.quantized else ".")
        + (f" (groups of {HEAD_INT4_GROUP})" if scheme.head_bits == 4 else ""),
        f"- Shape: {config.n_layer} blocks, hidden {config.hidden_size}, {config.n_head} heads, "
        f"vocabulary {config.vocab_size}.",
        f"- Bytes: {block_bytes:,} per block, {embed_bytes:,} for embeddings/head; a token streamed with nothing "
        f"resident reads {config.n_layer * block_bytes + embed_bytes:,} bytes.",
        "- Layout: one safetensors file per block (`block-NNNNN.safetensors`, data page-aligned) and "
        "`embeddings.safetensors`; the scheme is in config.json's `quantization_config`.",
    ]
    if scheme.weights == "int4":
        lines.append(f"- int4 layout: `{scheme.int4_layout}` (format {scheme.format_version}, the same on every CPU).")
    lines += ["", "Open it with `bloomtui`, `bloomtui generate`, `bloomtui info` or `bloomtui perplexity`.", ""]
    return "\n".join(lines)


def finish(
    partial: Path,
    out: Path,
    raw_config: dict,
    scheme: Scheme,
    weight_map: dict[str, str],
    written: int,
    small_files: Path | None,
    readme: str,
) -> Path:
    """Write config.json, the index, the copied files (from `small_files`, when given) and the card into
    `partial`, check that it opens, and rename it to `out` (replacing an earlier prepared folder there last,
    so one always exists)."""
    raw = dict(raw_config)
    raw.update(quantization_config=scheme.to_json(), torch_dtype="bfloat16", dtype="bfloat16")
    (partial / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    index = {"metadata": {"total_size": written}, "weight_map": dict(sorted(weight_map.items()))}
    (partial / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    for name in COPIED_FILES if small_files is not None else ():
        if (small_files / name).is_file():
            shutil.copyfile(small_files / name, partial / name)
    (partial / "README.md").write_text(readme)
    Checkpoint.open(partial)  # what we wrote must open
    if out.exists():
        old = out.with_name(out.name + ".replaced")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out, old)
        os.rename(partial, out)
        shutil.rmtree(old)
    else:
        os.rename(partial, out)
    return out
