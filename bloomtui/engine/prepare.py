"""`bloomtui prepare`: rewrite any BLOOM checkpoint as one page-aligned safetensors file per block, with the
four matrices of each block in bf16, int8 or int4, so a streamed block is one sequential read of fewer bytes.

The source is read one block at a time (never whole) and never written to. The output is built in
OUT.partial and renamed into place at the end, so an interrupted run leaves no half model; an existing OUT is
only replaced with `force`, and only when it is empty or an earlier output of this command.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from bloomtui import __version__
from bloomtui.engine.io.reader import TensorReader
from bloomtui.engine.weights.checkpoint import BLOCK_TENSORS, MATRICES, SMALL_TENSORS, Checkpoint, block_shapes
from bloomtui.engine.weights.config import HEAD_INT4_GROUP, HEAD_SCHEMES, INT4_ROWS, QUANT_METHOD, SCHEMES, Scheme
from bloomtui.engine.weights.hub import resolve_model
from bloomtui.engine.weights.quant import (
    INT4_GROUP_SIZES,
    check_int4_shape,
    int4_codes,
    pack_int4,
    quantize_int8,
)
from bloomtui.engine.weights.tensorfile import TensorRef
from bloomtui.errors import CancelRequested, UsageError

PAGE = 4096
INDEX_NAME = "model.safetensors.index.json"
COPIED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
"""Copied into OUT as they are: the tokenizer, and the model's recommended decoding settings."""
_SAFETENSORS_DTYPES = {
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float32: "F32",
    torch.int8: "I8",
    torch.uint8: "U8",
}


@dataclass(frozen=True)
class PrepareProgress:
    done: int
    """Files written (the embeddings file, then one per block)."""
    total: int
    bytes_written: int
    seconds: float


def default_group_size(hidden: int) -> int:
    """128 (the common choice) when it divides the inputs; smaller groups for small hidden sizes."""
    return next((g for g in (128, 64, 32) if hidden % g == 0), 128)


def write_safetensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> int:
    """A safetensors file whose data starts on a page boundary (the header is padded with spaces, which the
    format allows), tensors back to back in the given order: one sequential read per block."""
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, n + offset],
        }
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % PAGE)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for t in tensors.values():
            f.write(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return 8 + len(text) + offset


def _quantized_matrix(name: str, w: Tensor, scheme: Scheme) -> dict[str, Tensor]:
    base = name.removesuffix("weight")
    if scheme.weights == "bf16":
        return {name: w.to(torch.bfloat16)}
    if scheme.weights == "int8":
        q, scales = quantize_int8(w)
        return {base + "qweight": q, base + "scales": scales.to(torch.bfloat16)}
    codes, scale, zero = int4_codes(w, scheme.group_size)
    packed, scales_and_zeros = pack_int4(codes, scale, zero)
    return {base + "qweight": packed, base + "scales": scales_and_zeros.to(torch.bfloat16)}


def _head_rows(prefix: str, w: Tensor, scheme: Scheme) -> dict[str, Tensor]:
    """Embeddings / LM head: bf16 for the bf16 scheme, else int8 rows with a scale each, or int4 rows."""
    if scheme.head_bits == 16:
        return {f"{prefix}.weight": w.to(torch.bfloat16)}
    if scheme.head_bits == 4:
        codes, scale, zero = int4_codes(w, HEAD_INT4_GROUP)
        packed, pairs = pack_int4(codes, scale, zero)
        return {f"{prefix}.qweight": packed, f"{prefix}.scales": pairs.to(torch.bfloat16)}
    q, scales = quantize_int8(w)
    return {f"{prefix}.qweight": q, f"{prefix}.scales": scales.to(torch.bfloat16)}


def output_bytes(checkpoint: Checkpoint, scheme: Scheme) -> tuple[int, int]:
    """(bytes of one prepared block, bytes of the embeddings file) without writing anything."""
    cfg = checkpoint.config
    block = 0
    for name, shape in block_shapes(cfg).items():
        numel = math.prod(shape)
        if name not in MATRICES or scheme.weights == "bf16":
            block += numel * 2
        elif scheme.weights == "int8":
            block += numel + shape[0] * 2
        else:
            block += numel // 2 + (numel // scheme.group_size) * 4
    rows = cfg.vocab_size * cfg.hidden_size
    by_bits = {16: rows * 2, 8: rows + cfg.vocab_size * 2, 4: rows // 2 + (rows // HEAD_INT4_GROUP) * 4}
    per_matrix = by_bits[scheme.head_bits]
    embeddings = per_matrix * (1 if checkpoint.tied else 2) + len(SMALL_TENSORS) * cfg.hidden_size * 2
    return block + PAGE, embeddings + PAGE


def _is_ours(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text())
        return config.get("quantization_config", {}).get("quant_method") == QUANT_METHOD
    except (OSError, ValueError, AttributeError):
        return False


def _check_target(source: Path, out: Path, force: bool) -> None:
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise UsageError(f"{out}: the output must not be the model folder or inside it (it is never written to)")
    if out.exists():
        if not force:
            raise UsageError(f"{out} already exists; choose another folder or add --force to replace it")
        if not out.is_dir() or (any(out.iterdir()) and not _is_ours(out)):
            raise UsageError(f"{out} is not a folder written by `bloomtui prepare`; refusing to replace it")


def _card(source: Path, scheme: Scheme, checkpoint: Checkpoint, block_bytes: int, embed_bytes: int) -> str:
    cfg = checkpoint.config
    lines = [
        f"# {source.name}, prepared by bloomtui {__version__}",
        "",
        f"- Source: `{source}` ({checkpoint.layout}, stored {str(checkpoint.dtype).removeprefix('torch.')}).",
        f"- Weights: `{scheme.weights}`"
        + (f", group size {scheme.group_size} (asymmetric, round to nearest)" if scheme.weights == "int4" else "")
        + (" (symmetric, per output channel)" if scheme.weights == "int8" else "")
        + "; LayerNorms and biases in bf16"
        + (f"; embeddings/LM head {scheme.head} per row." if scheme.quantized else ".")
        + (f" (groups of {HEAD_INT4_GROUP})" if scheme.head_bits == 4 else ""),
        f"- Shape: {cfg.n_layer} blocks, hidden {cfg.hidden_size}, {cfg.n_head} heads, vocabulary {cfg.vocab_size}.",
        f"- Bytes: {block_bytes:,} per block, {embed_bytes:,} for embeddings/head; a token streamed with nothing "
        f"resident reads {cfg.n_layer * block_bytes + embed_bytes:,} bytes.",
        "- Layout: one safetensors file per block (`block-NNNNN.safetensors`, data page-aligned) and "
        "`embeddings.safetensors`; the scheme is in config.json's `quantization_config`.",
    ]
    if scheme.weights == "int4":
        lines.append(f"- int4 layout: `{scheme.int4_layout}` (format {scheme.format_version}, the same on every CPU).")
    lines += ["", "Open it with `bloomtui`, `bloomtui generate`, `bloomtui info` or `bloomtui perplexity`.", ""]
    return "\n".join(lines)


def prepare(
    model: str | Path,
    out: Path,
    weights: str,
    group_size: int | None = None,
    force: bool = False,
    on_progress: Callable[[PrepareProgress], None] = lambda _p: None,
    should_stop: Callable[[], bool] = lambda: False,
    *,
    head: str = "int8",
) -> Path:
    """Write the prepared folder; returns its path. Raises UsageError/CheckpointError on bad input."""
    if weights not in SCHEMES:
        raise UsageError(f"--weights must be one of {', '.join(SCHEMES)}, got {weights!r}")
    if head not in HEAD_SCHEMES:
        raise UsageError(f"--head must be one of {', '.join(HEAD_SCHEMES)}, got {head!r}")
    if head != "int8" and weights == "bf16":
        raise UsageError("--head int4 needs --weights int8 or int4 (bf16 keeps the head in bf16)")
    source = resolve_model(model)
    checkpoint = Checkpoint.open(source)
    if checkpoint.scheme is not None:
        raise UsageError(f"{source} was already prepared ({checkpoint.scheme.weights}); prepare its source instead")
    cfg = checkpoint.config
    scheme = Scheme(weights, head=head)
    if head == "int4" and (why := check_int4_shape(cfg.vocab_size, cfg.hidden_size, HEAD_INT4_GROUP)):
        raise UsageError(f"an int4 head cannot store the embeddings ({cfg.vocab_size}x{cfg.hidden_size}): {why}")
    if weights == "int4":
        group = group_size or default_group_size(cfg.hidden_size)
        for name, shape in block_shapes(cfg).items():
            why = check_int4_shape(shape[0], shape[1], group) if name in MATRICES else None
            if why:
                raise UsageError(f"int4 cannot store {name} ({shape[0]}x{shape[1]}): {why}; try int8")
        scheme = Scheme("int4", group, INT4_ROWS, head=head)
    elif group_size is not None:
        if group_size not in INT4_GROUP_SIZES:
            raise UsageError(f"--group-size must be one of {', '.join(map(str, INT4_GROUP_SIZES))}")
    out = Path(out).expanduser()
    _check_target(source, out, force)
    block_bytes, embed_bytes = output_bytes(checkpoint, scheme)
    need = cfg.n_layer * block_bytes + embed_bytes
    out.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out.parent).free
    if free < need + 64 * 1024**2:
        raise UsageError(f"{out.parent}: {free / 1e9:.2f} GB free, the prepared model needs {need / 1e9:.2f} GB")

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by a run that was killed outright
    partial.mkdir()
    reader = TensorReader(drop_cache=False)
    started = time.perf_counter()
    written = 0
    weight_map: dict[str, str] = {}
    metadata = {"format": "pt", "bloomtui": __version__, "weights": weights}

    def read(ref: TensorRef) -> Tensor:
        if should_stop():
            raise CancelRequested
        t = torch.empty(ref.shape, dtype=torch.float32)
        reader.read(ref, t, should_stop)
        return t

    def emit(name: str, tensors: dict[str, Tensor], done: int) -> None:
        nonlocal written
        written += write_safetensors(partial / name, tensors, metadata)
        weight_map.update(dict.fromkeys(tensors, name))
        on_progress(PrepareProgress(done, cfg.n_layer + 1, written, time.perf_counter() - started))

    try:
        small = {name: read(ref).to(torch.bfloat16) for name, ref in checkpoint.small.items()}
        embedding = _head_rows("word_embeddings", read(checkpoint.embeddings), scheme)
        if not checkpoint.tied:
            embedding |= _head_rows("lm_head", read(checkpoint.head), scheme)
        emit("embeddings.safetensors", embedding | small, 1)
        del embedding
        for i, refs in enumerate(checkpoint.blocks):
            block: dict[str, Tensor] = {}
            for name in BLOCK_TENSORS:
                w = read(refs[name])
                block |= _quantized_matrix(name, w, scheme) if name in MATRICES else {name: w.to(torch.bfloat16)}
            emit(f"block-{i:05d}.safetensors", {f"h.{i}.{k}": v for k, v in block.items()}, i + 2)
        raw = json.loads((source / "config.json").read_text(encoding="utf-8"))
        raw.update(quantization_config=scheme.to_json(), torch_dtype="bfloat16", dtype="bfloat16")
        (partial / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
        index = {"metadata": {"total_size": written}, "weight_map": dict(sorted(weight_map.items()))}
        (partial / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        for name in COPIED_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, partial / name)
        (partial / "README.md").write_text(_card(source, scheme, checkpoint, block_bytes, embed_bytes))
        Checkpoint.open(partial)  # what we wrote must open
        if out.exists():
            old = out.with_name(out.name + ".replaced")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(out, old)
            os.rename(partial, out)
            shutil.rmtree(old)
        else:
            os.rename(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        reader.close()
    return out
