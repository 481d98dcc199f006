"""Weight-only quantisation for BLOOM's matrices, in the layouts the native kernels read (compute/native_*.c).

int8: symmetric, one scale per output channel (round to nearest): near lossless for BLOOM.
int4: asymmetric, one (scale, zero) per group of `group_size` inputs of each output channel, w = (q - 8) * scale
+ zero, in the rows layout (config.INT4_ROWS): each row's codes in 64-input chunks of 32 bytes, byte j of a chunk = code
j | code 32 + j << 4, and the (scale, zero) pairs [out, groups, 2]. The bytes are the same on every CPU, and one
load gives the integer-dot kernels two whole 32-input blocks.

Folders prepared before format 2 hold int4 in torch's `_convert_weight_to_int4pack_for_cpu` packing for the CPU
family that prepared them (its layout recorded in the config): `from_torch_packing` repacks such a matrix as it
loads (see the loader), so an old folder runs anywhere, more slowly, and says so.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bloomtui.engine.weights.config import TorchInt4Layout

INT4_GROUP_SIZES = (32, 64, 128, 256)
INT4_CHUNK = 64
"""Inputs per 32-byte run of codes: int4 matrices need in_features a multiple of it."""


def _nibbles(packed: Tensor) -> Tensor:
    flat = packed.reshape(-1)
    return torch.stack([flat & 15, flat >> 4], dim=-1).reshape(-1)


def from_torch_packing(packed: Tensor, pairs: Tensor, in_features: int, layout: str) -> tuple[Tensor, Tensor]:
    """A format-1 int4 matrix (torch's packing `layout`, pairs [groups, out, 2]) in the rows layout."""
    torch_layout = TorchInt4Layout.parse(layout)
    rows, out_features = torch_layout.rows, packed.shape[0]
    nib = _nibbles(packed).view(out_features // rows, in_features, rows)
    inverse = torch.empty(rows, dtype=torch.long)
    inverse[torch.tensor(torch_layout.order)] = torch.arange(rows)
    codes = nib[:, :, inverse].transpose(1, 2).reshape(out_features, in_features)
    return pack_int4_rows(codes), pairs.transpose(0, 1).contiguous()


def pack_int4_rows(codes: Tensor) -> Tensor:
    """Codes 0..15 [out, in] as the rows layout's bytes [out, in/2]."""
    out_f, in_f = codes.shape
    c = codes.to(torch.uint8).view(out_f, in_f // INT4_CHUNK, 2, INT4_CHUNK // 2)
    return (c[:, :, 0] | (c[:, :, 1] << 4)).reshape(out_f, in_f // 2)


def unpack_int4(packed: Tensor, in_features: int) -> Tensor:
    """The uint8 codes 0..15 [out, in] of rows-layout bytes [out, in/2]."""
    out_f = packed.shape[0]
    p = packed.view(out_f, in_features // INT4_CHUNK, 1, INT4_CHUNK // 2)
    return torch.cat([p & 15, p >> 4], dim=2).reshape(out_f, in_features)


def _stored(x: Tensor) -> Tensor:
    """x as the bf16 it is stored in (fp32 values). Codes are rounded against the stored scales, not the exact
    ones: rounding a scale to bf16 afterwards would stretch every weight of its row by up to 0.4%."""
    return x.to(torch.bfloat16).float()


def quantize_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """(int8 [out, in], scales [out], exact in bf16) with w ~ q * scale."""
    w = w.float()
    scales = _stored((w.abs().amax(dim=1) / 127).clamp(min=1e-10))
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


def int4_codes(w: Tensor, group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Round-to-nearest int4: (codes int32 [out, in] in 0..15, scale [out, groups], zero [out, groups], both
    exact in bf16) with w ~ (q - 8) * scale + zero, the grid spanning each group's min..max."""
    out_f, in_f = w.shape
    g = w.float().view(out_f, in_f // group_size, group_size)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    scale = _stored(((hi - lo) / 15).clamp(min=1e-10))
    zero = _stored(lo + 8 * scale)
    q = torch.round((g - zero[..., None]) / scale[..., None] + 8).clamp(0, 15)
    return q.view(out_f, in_f).to(torch.int32), scale, zero


def pack_int4(codes: Tensor, scale: Tensor, zero: Tensor) -> tuple[Tensor, Tensor]:
    """(packed uint8 [out, in/2], scales_and_zeros [out, groups, 2]) as the kernels read them."""
    return pack_int4_rows(codes), torch.stack([scale, zero], dim=-1).contiguous()


def check_int4_shape(out_features: int, in_features: int, group_size: int) -> str | None:
    """Why a matrix cannot be stored in int4, or None."""
    if group_size not in INT4_GROUP_SIZES:
        return f"group size must be one of {', '.join(map(str, INT4_GROUP_SIZES))}, got {group_size}"
    if in_features % group_size:
        return f"{in_features} inputs are not a multiple of the group size {group_size}"
    if in_features % INT4_CHUNK:
        return f"{in_features} inputs are not a multiple of {INT4_CHUNK} (int4 chunks)"
    return None
