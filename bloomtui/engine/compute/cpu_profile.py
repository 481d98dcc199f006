"""Which way this machine multiplies bf16 fastest, measured once and cached per machine.

- Many rows: CPUs without native bf16 arithmetic (x86 before AVX512-BF16/AMX) run torch's bf16 GEMM several
  times slower than fp32 (measured on this project's Xeon: 54 vs 191 GFLOPS), so prefill upcasts weight
  tiles to fp32 there. With native bf16 the bf16 GEMM wins and tiles stay in bf16.
- One row (decoding): torch's bf16 gemv (addmv) beat its GEMM path by ~1.4x on that Xeon; on an AVX512-BF16
  EPYC the GEMM path (F.linear) is ~1.8x faster than addmv.
A 0.1 s measurement decides both; its result is kept in the cache dir under the CPU's name, torch's version
and the thread count.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F

from bloomtui.engine.compute.profile_cache import kept_or_measured

_ROWS, _IN, _OUT = 256, 1024, 2048
_ONE_ROW_REPS = 20


@dataclass(frozen=True)
class CpuProfile:
    bf16_gflops: float
    fp32_gflops: float
    """Including the upcast of the weight tile, as prefill pays it."""
    gemv_us: float
    """One bf16 row through a 2048 x 1024 bf16 matrix with addmv, microseconds ..."""
    linear_us: float
    """... and with F.linear (the GEMM path)."""

    @property
    def upcast_bf16(self) -> bool:
        return self.fp32_gflops > self.bf16_gflops * 1.1

    @property
    def one_row_linear(self) -> bool:
        """Whether a decoded bf16 row multiplies faster through F.linear than through addmv."""
        return self.gemv_us > self.linear_us * 1.1

    def describe(self) -> str:
        way = "fp32 tiles (weights upcast a tile at a time)" if self.upcast_bf16 else "bf16 GEMM"
        one = "F.linear" if self.one_row_linear else "addmv"
        return (
            f"{way} (measured here: bf16 {self.bf16_gflops:.0f} GFLOPS, fp32 {self.fp32_gflops:.0f} GFLOPS); "
            f"one bf16 row by {one} (addmv {self.gemv_us:.0f} us, F.linear {self.linear_us:.0f} us per 2048 x 1024)"
        )


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _best_seconds(fn, repeats: int = 5) -> float:  # noqa: ANN001
    fn()  # warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure() -> CpuProfile:
    x = torch.randn(_ROWS, _IN).to(torch.bfloat16)
    w = torch.randn(_OUT, _IN).to(torch.bfloat16)
    b = torch.randn(_OUT).to(torch.bfloat16)
    x32 = x.float()
    flop = 2 * _ROWS * _IN * _OUT
    bf16 = _best_seconds(lambda: torch.matmul(x, w.T))
    fp32 = _best_seconds(lambda: torch.matmul(x32, w.float().T))
    row = x[:1]
    gemv = _best_seconds(lambda: [torch.addmv(b, w, row[0]) for _ in range(_ONE_ROW_REPS)])
    linear = _best_seconds(lambda: [F.linear(row, w, b) for _ in range(_ONE_ROW_REPS)])
    return CpuProfile(
        bf16_gflops=flop / bf16 / 1e9,
        fp32_gflops=flop / fp32 / 1e9,
        gemv_us=gemv / _ONE_ROW_REPS * 1e6,
        linear_us=linear / _ONE_ROW_REPS * 1e6,
    )


@cache
def cpu_profile() -> CpuProfile:
    key = f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads"
    profile = kept_or_measured("cpu-profile.json", key, CpuProfile, measure)
    assert profile is not None
    return profile


def multiplies_upcast(dtype: torch.dtype) -> bool:
    """fp32 tiles for many rows unless the weights are bf16 on a CPU whose bf16 GEMM is fast."""
    return dtype != torch.bfloat16 or cpu_profile().upcast_bf16


def prefill_path(dtype: torch.dtype) -> str:
    """How many-row passes multiply, for `info`."""
    if dtype == torch.float32:
        return "float32 GEMM (int8/int4 matrices dequantised a tile at a time)"
    return cpu_profile().describe()
