"""How a pass multiplies activations by weight matrices: the one place that knows the CPU's fast paths.

- One row (decoding) is memory-bound: where this machine built them and they beat torch's (native.py), bf16,
  int8 and int4 (in AVX-512's packing) matrices go through the native few-row kernels, which also take a
  verify pass's few rows with the same sums; otherwise bf16/fp32 weights use gemv (addmv), or F.linear where
  this CPU runs a bf16 row faster through it (cpu_profile.py), int8/int4 weights torch's fused weight-only
  kernels, which read the compressed bytes and never build a dequantised matrix.
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
from bloomtui.engine.weights.quant import INT4_ROW_MULTIPLE, int4_layout, unpack_int4

TILE_BYTES = 128 * 1024**2
"""fp32 bytes of one upcast weight tile."""


@dataclass
class QuantizedLinear:
    """A weight-only quantised matrix [out, in] in the layout torch's CPU kernels take.

    int8: `qweight` int8 [out, in], `scales` [out] (symmetric, per output channel).
    int4: `qweight` uint8 [out, in/2] packed by torch's `_convert_weight_to_int4pack_for_cpu` on this CPU
    family, `scales` [in/group, out, 2] (scale, zero) with w = (q - 8) * scale + zero.
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
        """x @ W.T with the fused kernel (x's dtype must be the scales' dtype)."""
        if self.bits == 8:
            return torch.ops.aten._weight_int8pack_mm(x, self.qweight, self.scales)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.qweight, self.group_size, self.scales)

    def dequantize_rows(self, r0: int, r1: int, dtype: torch.dtype) -> Tensor:
        """Rows r0:r1 of W in `dtype`; used for multi-row tiles, a few hundred MB at a time."""
        if self.bits == 8:
            return self.qweight[r0:r1].to(dtype) * self.scales[r0:r1, None].to(dtype)
        out_f, in_f = self.shape
        layout = int4_layout()
        codes = unpack_int4(self.qweight[r0:r1], r1 - r0, in_f, layout).view(r1 - r0, in_f // self.group_size, -1)
        scale, zero = self.scales[:, r0:r1, 0].T.to(dtype), self.scales[:, r0:r1, 1].T.to(dtype)
        return ((codes.to(dtype) - 8) * scale[..., None] + zero[..., None]).view(r1 - r0, in_f)


Weight = Tensor | QuantizedLinear


def row_slice(w: Weight, r0: int, r1: int) -> Weight:
    """Output rows r0:r1 of a weight (an int8 one keeps its kernel; int4 matrices are never sliced)."""
    if isinstance(w, QuantizedLinear):
        if w.bits != 8:
            raise ValueError("int4 matrices are used whole")
        return QuantizedLinear(8, w.qweight[r0:r1], w.scales[r0:r1], 0, (r1 - r0, w.shape[1]))
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
    ) -> None:
        self.upcast = upcast
        """Multiply many-row bf16/fp16 (and quantised) inputs in fp32 tiles."""
        self.one_row_linear = one_row_linear
        """Multiply one bf16 row with F.linear rather than addmv."""
        self.native = native
        """Few-row bf16 and int8 multiplies through the native kernels."""
        self.check = check or (lambda: None)
        """Raises to stop the pass (cancel); called between tiles."""
        self.tile_bytes = tile_bytes

    def __call__(self, x: Tensor, w: Weight, b: Tensor | None = None) -> Tensor:
        rows = x.shape[0]
        if self.native is not None and rows <= MAX_ROWS:
            y = self._native(self.native, x, w, b)
            if y is not None:
                return y
        if isinstance(w, QuantizedLinear):
            if rows == 1 or not self.upcast:
                y = w.matmul(x)
                return y if b is None else y.add_(b)
            return self._tiled(x, w, b)
        if rows == 1 and not (self.one_row_linear and w.dtype == torch.bfloat16):
            # addmv: on CPUs without native bf16, bf16 gemv runs ~1.4x faster than the GEMM path for one row.
            out = torch.mv(w, x[0]) if b is None else torch.addmv(b, w, x[0])
            return out.unsqueeze(0)
        if self.upcast and w.dtype != torch.float32:
            return self._tiled(x, w, b)
        return F.linear(x, w, b)

    @staticmethod
    def _native(native: NativeKernels, x: Tensor, w: Weight, b: Tensor | None) -> Tensor | None:
        if not native.takes(x, w.shape[1]):
            return None
        if isinstance(w, QuantizedLinear):
            if w.bits == 8:
                return native.int8(x, w.qweight, w.scales, b) if native.for_int8 else None
            return native.int4(x, w.qweight, w.scales, w.group_size, b) if native.for_int4 and native.has_int4 else None
        if native.for_bf16 and w.dtype == torch.bfloat16 and x.dtype == torch.bfloat16:
            return native.bf16(x, w, b)
        return None

    def _tiled(self, x: Tensor, w: Weight, b: Tensor | None) -> Tensor:
        n, k = w.shape
        x32 = x.float()
        out = torch.empty((x.shape[0], n), dtype=torch.float32)
        step = max(1, self.tile_bytes // (4 * k) // INT4_ROW_MULTIPLE) * INT4_ROW_MULTIPLE  # int4 row blocks
        for r0 in range(0, n, step):
            r1 = min(n, r0 + step)
            tile = w.dequantize_rows(r0, r1, torch.float32) if isinstance(w, QuantizedLinear) else w[r0:r1].float()
            torch.matmul(x32, tile.T, out=out[:, r0:r1])
            self.check()
        if b is not None:
            out += b.float()
        return out.to(x.dtype)


DEFAULT = Matmul()
"""Native multiplies, no cancel checks: tests and one-off callers."""
