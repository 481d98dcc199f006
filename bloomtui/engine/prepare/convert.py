"""What `prepare` writes, tensor by tensor: the scheme a run uses, the files of a prepared folder (units: the
embeddings file and one file per block) with the source tensors each one takes, and the conversion of one
source tensor into its stored form. A local and a hub prepare share all of it, so they write the same bytes."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

import torch
from torch import Tensor

from bloomtui.engine.weights.checkpoint import BLOCK_TENSORS, MATRICES, SMALL_TENSORS, block_shapes
from bloomtui.engine.weights.config import HEAD_INT4_GROUP, HEAD_SCHEMES, INT4_ROWS, SCHEMES, BloomConfig, Scheme
from bloomtui.engine.weights.quant import INT4_GROUP_SIZES, check_int4_shape, int4_codes, pack_int4, quantize_int8
from bloomtui.errors import UsageError

PAGE = 4096
INDEX_NAME = "model.safetensors.index.json"
EMBEDDINGS_FILE = "embeddings.safetensors"
HEAD_MATRICES = ("word_embeddings.weight", "lm_head.weight")
_SAFETENSORS_DTYPES = {
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float32: "F32",
    torch.int8: "I8",
    torch.uint8: "U8",
}


@dataclass(frozen=True)
class Unit:
    """One file of the prepared folder and the source tensors (bare keys, in storage order) it is made of."""

    file: str
    keys: tuple[str, ...]


def units(config: BloomConfig) -> tuple[Unit, ...]:
    head = HEAD_MATRICES if not config.tie_word_embeddings else HEAD_MATRICES[:1]
    embeddings = Unit(EMBEDDINGS_FILE, (*head, *SMALL_TENSORS))
    blocks = (Unit(block_file(i), tuple(f"h.{i}.{n}" for n in BLOCK_TENSORS)) for i in range(config.n_layer))
    return (embeddings, *blocks)


def block_file(index: int) -> str:
    return f"block-{index:05d}.safetensors"


def source_shape(key: str, config: BloomConfig) -> tuple[int, ...]:
    """The shape config.json implies for a source tensor (bare key)."""
    if key in HEAD_MATRICES:
        return (config.vocab_size, config.hidden_size)
    if key in SMALL_TENSORS:
        return (config.hidden_size,)
    return block_shapes(config)[key.split(".", 2)[2]]


def default_group_size(hidden: int) -> int:
    """128 (the common choice) when it divides the inputs; smaller groups for small hidden sizes."""
    return next((g for g in (128, 64, 32) if hidden % g == 0), 128)


def choose_scheme(config: BloomConfig, weights: str, group_size: int | None, head: str) -> Scheme:
    """The scheme for these options, or UsageError saying why the model cannot be stored so."""
    if weights not in SCHEMES:
        raise UsageError(f"--weights must be one of {', '.join(SCHEMES)}, got {weights!r}")
    if head not in HEAD_SCHEMES:
        raise UsageError(f"--head must be one of {', '.join(HEAD_SCHEMES)}, got {head!r}")
    if head != "int8" and weights == "bf16":
        raise UsageError("--head int4 needs --weights int8 or int4 (bf16 keeps the head in bf16)")
    if group_size is not None and group_size not in INT4_GROUP_SIZES:
        raise UsageError(f"--group-size must be one of {', '.join(map(str, INT4_GROUP_SIZES))}")
    v, h = config.vocab_size, config.hidden_size
    if head == "int4" and (why := check_int4_shape(v, h, HEAD_INT4_GROUP)):
        raise UsageError(f"an int4 head cannot store the embeddings ({v}x{h}): {why}")
    if weights != "int4":
        return Scheme(weights, head=head)
    group = group_size or default_group_size(h)
    for name, shape in block_shapes(config).items():
        why = check_int4_shape(shape[0], shape[1], group) if name in MATRICES else None
        if why:
            raise UsageError(f"int4 cannot store {name} ({shape[0]}x{shape[1]}): {why}; try int8")
    return Scheme("int4", group, INT4_ROWS, head=head)


def convert(key: str, w: Tensor, scheme: Scheme) -> dict[str, Tensor]:
    """One source tensor (bare key, read as float32) in its stored form: the tensors it becomes, by name."""
    if key in HEAD_MATRICES:
        return _head_rows(key.removesuffix(".weight"), w, scheme)
    if key.startswith("h.") and key.split(".", 2)[2] in MATRICES:
        return _quantized_matrix(key, w, scheme)
    return {key: w.to(torch.bfloat16)}


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


def write_safetensors(path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> int:  # noqa: ANN001 - a Path
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


def output_bytes(config: BloomConfig, scheme: Scheme) -> tuple[int, int]:
    """(bytes of one prepared block, bytes of the embeddings file) without writing anything."""
    block = 0
    for name, shape in block_shapes(config).items():
        numel = math.prod(shape)
        if name not in MATRICES or scheme.weights == "bf16":
            block += numel * 2
        elif scheme.weights == "int8":
            block += numel + shape[0] * 2
        else:
            block += numel // 2 + (numel // scheme.group_size) * 4
    rows = config.vocab_size * config.hidden_size
    by_bits = {16: rows * 2, 8: rows + config.vocab_size * 2, 4: rows // 2 + (rows // HEAD_INT4_GROUP) * 4}
    per_matrix = by_bits[scheme.head_bits]
    tied = config.tie_word_embeddings
    embeddings = per_matrix * (1 if tied else 2) + len(SMALL_TENSORS) * config.hidden_size * 2
    return block + PAGE, embeddings + PAGE
