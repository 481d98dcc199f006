"""How a pass multiplies activations by weight matrices: the one place that knows the CPU's fast paths.

- One row (decoding) is memory-bound: where this machine built them and they beat torch's (native.py), bf16,
  int8 and int4 matrices go through the native few-row kernels, which also take a verify pass's few rows with
  the same sums (int8/int4 ones with the inputs quantised to int8, where measured faster and not turned off:
  EngineOptions.activations); otherwise bf16/fp32 weights use gemv (addmv), or F.linear where this CPU runs a
  bf16 row faster through it (cpu_profile.py), int8 weights torch's fused weight-only kernel, which reads the
  compressed bytes and never builds a dequantised matrix, and int4 ones (only without the native kernels: no
  x86 AVX2, no compiler) are dequantised a tile at a time.
- Many rows (prefill, perplexity windows, draft verification) are compute-bound. Where this CPU's bf16 GEMM
  is slower than its fp32 one (x86 without AVX512-BF16/AMX: about 4x), weight tiles of a few hundred MB are
  upcast (or dequantised) to fp32 and multiplied there; a block is never copied whole in fp32. Which path
  runs is decided by a short measurement, cached per machine (see cpu_profile.py).
- Between tiles the pass's cancel check runs, so a long prefill stops within a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bloomtui.engine.compute.native import MAX_ROWS, NativeKernels
from bloomtui.engine.weights.quant import unpack_int4

TILE_BYTES = 128 * 1024**2
"""fp32 bytes of one upcast weight tile."""


@dataclass
class QuantizedLinear:
    """A weight-only quantised matrix [out, in] in the layouts the native kernels take (and, for int8, torch's).

    int8: `qweight` int8 [out, in], `scales` [out] (symmetric, per output channel).
    int4: `qweight` uint8 [out, in/2] in the rows layout (quant.py), `scales` [out, in/group, 2] (scale, zero)
    with w = (q - 8) * scale + zero.
    """

    bits: int
    qweight: Tensor
    scales: Tensor
    group_size: int
    shape: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return self.qweight.numel() * self.qweight.element_size() + self.scales.numel() * self.scales.element_size()

    def matmul(self, x: Tensor) -> Tensor:
        """x @ W.T with torch's fused int8 kernel (x's dtype must be the scales' dtype)."""
        return torch.ops.aten._weight_int8pack_mm(x, self.qweight, self.scales)

    def dequantize_rows(self, r0: int, r1: int, dtype: torch.dtype) -> Tensor:
        """Rows r0:r1 of W in `dtype`; used for multi-row tiles, a few hundred MB at a time."""
        if self.bits == 8:
            return self.qweight[r0:r1].to(dtype) * self.scales[r0:r1, None].to(dtype)
        in_f = self.shape[1]
        codes = unpack_int4(self.qweight[r0:r1], in_f).view(r1 - r0, in_f // self.group_size, -1)
        scale, zero = self.scales[r0:r1, :, 0].float(), self.scales[r0:r1, :, 1].float()  # one rounding to dtype
        return ((codes.float() - 8) * scale[..., None] + zero[..., None]).view(r1 - r0, in_f).to(dtype)


Weight = Tensor | QuantizedLinear


def row_slice(w: Weight, r0: int, r1: int) -> Weight:
    """Output rows r0:r1 of a weight (a quantised one keeps its kernel: its rows are independent)."""
    if isinstance(w, QuantizedLinear):
        return QuantizedLinear(w.bits, w.qweight[r0:r1], w.scales[r0:r1], w.group_size, (r1 - r0, w.shape[1]))
    return w[r0:r1]


def out_features(w: Weight) -> int:
    return w.shape[0]


class Matmul:
    """Multiplies for one pass: `mm(x, w, b)` = x @ w.T + b, on the path this machine runs fastest."""

    def __init__(
        self,
        upcast: bool = False,
        check: Callable[[], None] | None = None,
        tile_bytes: int = TILE_BYTES,
        one_row_linear: bool = False,
        native: NativeKernels | None = None,
        chunks: bool = False,
    ) -> None:
        self.upcast = upcast
        """Multiply many-row bf16/fp16 (and quantised) inputs in fp32 tiles."""
        self.one_row_linear = one_row_linear
        """Multiply one bf16 row with F.linear rather than addmv."""
        self.native = native
        """Few-row bf16 and int8 multiplies through the native kernels."""
        self.chunks = chunks
        """Take more than MAX_ROWS rows of a quantised matrix through the native kernels MAX_ROWS at a time, not in
        dequantised tiles: right for decode-like passes (a batch, a verify pass, a tree), whose tens of rows make
        a tile's dequantising cost more than the kernels' reread of the compressed bytes."""
        self.check = check or (lambda: None)
        """Raises to stop the pass (cancel); called between tiles."""
        self.tile_bytes = tile_bytes

    def __call__(self, x: Tensor, w: Weight, b: Tensor | None = None) -> Tensor:
        rows = x.shape[0]
        if self.native is not None and rows <= MAX_ROWS:
            y = self._native(self.native, x, w, b)
            if y is not None:
                return y
        elif self.native is not None and self.chunks and isinstance(w, QuantizedLinear):
            parts = [self._native(self.native, x[r : r + MAX_ROWS], w, b) for r in range(0, rows, MAX_ROWS)]
            if all(p is not None for p in parts):
                return torch.cat(parts)  # type: ignore[arg-type]
        if isinstance(w, QuantizedLinear):
            if w.bits == 8 and (rows == 1 or not self.upcast):
                y = w.matmul(x)
                return y if b is None else y.add_(b)
            return self._tiled(x, w, b, torch.float32 if self.upcast else x.dtype)
        if rows == 1 and not (self.one_row_linear and w.dtype == torch.bfloat16):
            # addmv: on CPUs without native bf16, bf16 gemv runs ~1.4x faster than the GEMM path for one row.
            out = torch.mv(w, x[0]) if b is None else torch.addmv(b, w, x[0])
            return out.unsqueeze(0)
        if self.upcast and w.dtype != torch.float32:
            return self._tiled(x, w, b, torch.float32)
        return F.linear(x, w, b)

    @staticmethod
    def _native(native: NativeKernels, x: Tensor, w: Weight, b: Tensor | None) -> Tensor | None:
        if not native.takes(x, w.shape[1]):
            return None
        if isinstance(w, QuantizedLinear):
            quantized = native.quantized(w.bits, x.shape[0])
            if w.bits == 4:
                return native.int4(x, w.qweight, w.scales, w.group_size, b, quantized)
            if quantized or native.for_int8:
                return native.int8(x, w.qweight, w.scales, b, quantized)
            return None
        if native.for_bf16 and w.dtype == torch.bfloat16 and x.dtype == torch.bfloat16:
            return native.bf16(x, w, b)
        return None

    def _tiled(self, x: Tensor, w: Weight, b: Tensor | None, dtype: torch.dtype) -> Tensor:
        """x @ w.T + b with w upcast (or dequantised) to `dtype` a tile of rows at a time."""
        n, k = w.shape
        xt = x.to(dtype)
        out = torch.empty((x.shape[0], n), dtype=dtype)
        step = max(1, self.tile_bytes // (dtype.itemsize * k))
        for r0 in range(0, n, step):
            r1 = min(n, r0 + step)
            tile = w.dequantize_rows(r0, r1, dtype) if isinstance(w, QuantizedLinear) else w[r0:r1].to(dtype)
            torch.matmul(xt, tile.T, out=out[:, r0:r1])
            self.check()
        if b is not None:
            out += b.to(dtype)
        return out.to(x.dtype)


DEFAULT = Matmul()
"""Native multiplies, no cancel checks: tests and one-off callers."""
