"""Weight-only quantisation for BLOOM's matrices, in the layouts torch's fused CPU kernels read.

int8: symmetric, one scale per output channel (round to nearest): near lossless for BLOOM.
int4: asymmetric, one (scale, zero) per group of `group_size` inputs of each output channel, w = (q - 8) * scale
+ zero, packed by torch's `_convert_weight_to_int4pack_for_cpu`. That packing differs between CPU families
(AVX-512 interleaves 64 rows, AVX2 32, ...), so it is probed once per process (`int4_layout`) and recorded in a
prepared model's config: a model is only run where the kernel reads the same layout, and the same probe lets
prefill unpack int4 tiles without the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor

INT4_GROUP_SIZES = (32, 64, 128, 256)
INT4_ROW_MULTIPLE = 64  # full blocks of every known packing (AVX-512: 64 rows, AVX2: 32)


@dataclass(frozen=True)
class Int4Layout:
    """Where torch's int4 packing puts each weight: the packed bytes are [out/rows, in, rows/2], and nibble p
    of a (row block, input) run (low nibble first) holds row `order[p]` of that block."""

    rows: int
    order: tuple[int, ...]

    def describe(self) -> str:
        return f"torch-cpu-int4pack/rows{self.rows}/" + ",".join(map(str, self.order))

    @classmethod
    def parse(cls, text: str) -> Int4Layout:
        _, rows, order = text.split("/")
        return cls(int(rows.removeprefix("rows")), tuple(int(i) for i in order.split(",")))


def _pack(q: Tensor) -> Tensor:
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1)


def _nibbles(packed: Tensor) -> Tensor:
    flat = packed.reshape(-1)
    return torch.stack([flat & 15, flat >> 4], dim=-1).reshape(-1)


@cache
def int4_layout() -> Int4Layout:
    """Probe this CPU's int4 packing with matrices whose nibbles spell their own row and column."""
    n, k = 2 * INT4_ROW_MULTIPLE, 32
    rows = torch.arange(n)[:, None].expand(n, k)
    cols = torch.arange(k)[None, :].expand(n, k)
    row_of = _nibbles(_pack(rows % 16)) + 16 * _nibbles(_pack(rows // 16))
    col_of = _nibbles(_pack(cols % 16)) + 16 * _nibbles(_pack(cols // 16))
    for block in (64, 32, 16):
        r, c = row_of.view(n // block, k, block), col_of.view(n // block, k, block)
        order = r[0, 0]
        expected = torch.arange(n // block)[:, None, None] * block + order[None, None, :]
        if bool((c == torch.arange(k)[None, :, None]).all()) and bool((r == expected).all()):
            return Int4Layout(block, tuple(order.tolist()))
    raise RuntimeError("torch's int4 packing on this CPU has an unknown layout")


def unpack_int4(packed: Tensor, out_features: int, in_features: int, layout: Int4Layout) -> Tensor:
    """The uint8 codes 0..15 as [out, in] from torch's packed layout (rows a multiple of layout.rows)."""
    rows = layout.rows
    nib = _nibbles(packed).view(out_features // rows, in_features, rows)
    inverse = torch.empty(rows, dtype=torch.long)
    inverse[torch.tensor(layout.order)] = torch.arange(rows)
    return nib[:, :, inverse].transpose(1, 2).reshape(out_features, in_features)


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
    """(packed uint8 [out, in/2], scales_and_zeros [groups, out, 2]) as the kernel reads them."""
    return _pack(codes), torch.stack([scale.T, zero.T], dim=-1).contiguous()


def check_int4_shape(out_features: int, in_features: int, group_size: int) -> str | None:
    """Why a matrix cannot be stored in int4, or None."""
    if group_size not in INT4_GROUP_SIZES:
        return f"group size must be one of {', '.join(map(str, INT4_GROUP_SIZES))}, got {group_size}"
    if in_features % group_size:
        return f"{in_features} inputs are not a multiple of the group size {group_size}"
    if out_features % INT4_ROW_MULTIPLE:
        return f"{out_features} outputs are not a multiple of {INT4_ROW_MULTIPLE} (int4 packing)"
    return None
