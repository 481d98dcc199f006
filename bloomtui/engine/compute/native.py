"""Native few-row multiplies (native_gemv.c): built once per machine with its C compiler, loaded with ctypes.

torch's one-row kernels read BLOOM's matrices well below the memory's speed (on this project's Xeon: bf16
addmv 24 GB/s, the int8 weight-only kernel 15, where plain reads reach 30), and decoding is nothing but
reading weights. The native kernels stream each weight row once for every input row, so decode and draft
verification get the same numbers. They need x86-64 with AVX-512 or AVX2 and a C compiler with OpenMP at run time;
anywhere else `kernels()` is None and matmul.py keeps torch's kernels (the eager path). `describe()` says
which path runs and why (`bloomtui info`); BLOOMTUI_NATIVE=0 turns the native path off, and
BLOOMTUI_NATIVE=avx2 (or another of FAMILIES) builds another CPU family's kernels where this CPU runs them, so an
AVX-512 machine can test and measure the path an AVX2-only desktop takes.

The build takes well under a second and happens once: the library is kept in the cache dir under a name that
hashes the source, the compiler, the CPU and the OpenMP runtime, so a home shared between machines never
loads a library built for another CPU. It links the OpenMP runtime torch already loaded, so both share one
thread team instead of two fighting over the cores.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, replace
from functools import cache
from math import inf
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from bloomtui.engine.compute.cpu_profile import cpu_name
from bloomtui.engine.compute.profile_cache import kept_or_measured
from bloomtui.engine.weights.quant import int4_layout, pack_int4

SOURCE = Path(__file__).with_name("native_gemv.c")
MAX_ROWS = 16
"""Rows the native kernels take in one call; more (prefill, big trees) are GEMM work for torch."""
K_MULTIPLE = 64
_DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1}
FAMILIES: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {
    "avx2": (("-march=haswell",), frozenset({"avx2", "fma", "f16c"})),
    "avx512": (("-march=skylake-avx512",), frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"})),
    "avx512-bf16": (
        ("-march=cooperlake",),
        frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx512_vnni", "avx512_bf16"}),
    ),
}
"""The CPU families the kernels have paths for: (compiler flags, the /proc/cpuinfo flags a CPU needs to run
them). Each -march names the family's first CPU (Haswell: AVX2 + FMA; Skylake-SP: AVX-512 without BF16;
Cooper Lake: AVX-512 BF16), so a build holds no instruction from a later one."""
_why_not = ""


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _openmp_runtime() -> str | None:
    """The OpenMP library torch loaded (from this process's mappings), to link against the same one."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.split()[-1] if len(line.split()) >= 6 else ""
        name = os.path.basename(path)
        if name.startswith(("libgomp", "libiomp5")) and ".so" in name:
            return path
    return None


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build(cc: str, runtime: str | None, arch: tuple[str, ...], out: Path) -> str | None:
    """Compile SOURCE into `out` for `arch` (compiler flags); None, or why it failed."""
    with tempfile.TemporaryDirectory(prefix="bloomtui-native-") as tmp:
        obj, lib = Path(tmp) / "gemv.o", Path(tmp) / "gemv.so"
        link = [runtime, f"-Wl,-rpath,{os.path.dirname(runtime)}"] if runtime else ["-fopenmp"]
        steps = [
            [cc, "-O3", *arch, "-fopenmp", "-fPIC", "-c", str(SOURCE), "-o", str(obj)],
            [cc, "-shared", str(obj), "-o", str(lib), *link],
        ]
        for step in steps:
            try:
                done = subprocess.run(step, capture_output=True, text=True, timeout=120)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"{os.path.basename(cc)} failed to run: {exc}"
            if done.returncode != 0:
                first = (done.stderr.strip().splitlines() or ["no output"])[0]
                return f"{os.path.basename(cc)} could not build the kernels: {first}"
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            staged = out.with_suffix(f".{os.getpid()}.tmp")
            shutil.copyfile(lib, staged)
            os.replace(staged, out)  # atomic: another process never loads half a library
        except OSError as exc:
            return f"could not keep the built kernels in {out.parent}: {exc}"
    return None


def _library_path(cc: str, runtime: str | None, arch: tuple[str, ...]) -> Path:
    from bloomtui.locations import cache_dir

    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        version = ""
    parts = [SOURCE.read_text(), version, cpu_name(), " ".join(sorted(_cpu_flags())), str(runtime), *arch]
    key = "\n".join(parts)
    return cache_dir() / "native" / f"gemv-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"


@dataclass(frozen=True)
class NativeKernels:
    lib: ctypes.CDLL
    path: Path
    isa: str
    """The instructions the build uses: "AVX-512 BF16" (bf16 pairs multiplied natively), "AVX-512" or "AVX2"."""
    for_bf16: bool = True
    """Used for bf16 matrices (measured faster than torch's one-row kernels here) ..."""
    for_int8: bool = True
    """... for int8 ones ..."""
    for_int4: bool = True
    """... and for int4 ones (where the build has the int4 kernel: `has_int4`)."""
    has_int4: bool = False
    """Whether this build reads this CPU's int4 packing (torch's AVX-512 one, 64-row blocks)."""

    def takes(self, x: Tensor, in_features: int) -> bool:
        return x.dim() == 2 and 0 < x.shape[0] <= MAX_ROWS and in_features % K_MULTIPLE == 0 and x.dtype in _DTYPE_CODE

    def bf16(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        """x @ w.T + b for bf16 x [m, k] (m <= MAX_ROWS) and w [n, k]: bf16 [m, n]."""
        x, w = x.contiguous(), w.contiguous()
        b = b.contiguous() if b is not None else None
        m, k = x.shape
        n = w.shape[0]
        y = torch.empty((m, n), dtype=torch.bfloat16)
        failed = self.lib.bf16_rows(
            x.data_ptr(), w.data_ptr(), b.data_ptr() if b is not None else None, y.data_ptr(),
            m, n, k, torch.get_num_threads(),
        )  # fmt: skip
        if failed:
            raise MemoryError("no memory for the bf16 kernel's input rows")
        return y

    def int8(self, x: Tensor, qweight: Tensor, scales: Tensor, b: Tensor | None) -> Tensor:
        """x @ (qweight * scales[:, None]).T + b, in x's dtype (scales and b in it too)."""
        x, qweight, scales = x.contiguous(), qweight.contiguous(), scales.to(x.dtype).contiguous()
        b = b.to(x.dtype).contiguous() if b is not None else None
        m, k = x.shape
        n = qweight.shape[0]
        y = torch.empty((m, n), dtype=x.dtype)
        failed = self.lib.int8_rows(
            x.data_ptr(), qweight.data_ptr(), scales.data_ptr(), b.data_ptr() if b is not None else None,
            y.data_ptr(), m, n, k, _DTYPE_CODE[x.dtype], torch.get_num_threads(),
        )  # fmt: skip
        if failed:
            raise MemoryError("no memory for the int8 kernel's input rows")
        return y

    def int4(self, x: Tensor, qweight: Tensor, scales: Tensor, group_size: int, b: Tensor | None) -> Tensor:
        """x @ W.T + b for W packed by torch's int4 packing (quant.py) with (scale, zero) pairs `scales`."""
        if not self.has_int4:
            raise ValueError(f"the {self.isa} build has no int4 kernel for this CPU's packing")
        x, qweight, scales = x.contiguous(), qweight.contiguous(), scales.to(x.dtype).contiguous()
        b = b.to(x.dtype).contiguous() if b is not None else None
        m, k = x.shape
        n = qweight.shape[0]
        order = torch.tensor(int4_layout().order, dtype=torch.int32)
        lo, hi = order[0::2].contiguous(), order[1::2].contiguous()
        y = torch.empty((m, n), dtype=x.dtype)
        failed = self.lib.int4_rows(
            x.data_ptr(), qweight.data_ptr(), scales.data_ptr(), b.data_ptr() if b is not None else None,
            y.data_ptr(), m, n, k, group_size, lo.data_ptr(), hi.data_ptr(), _DTYPE_CODE[x.dtype],
            torch.get_num_threads(),
        )  # fmt: skip
        if failed:
            raise MemoryError("no memory for the int4 kernel's input rows")
        return y


def _open(path: Path) -> NativeKernels:
    lib = ctypes.CDLL(str(path))
    p, n, i = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    lib.bf16_rows.argtypes = [p, p, p, p, n, n, n, i]
    lib.bf16_rows.restype = i
    lib.int8_rows.argtypes = [p, p, p, p, p, n, n, n, i, i]
    lib.int8_rows.restype = i
    lib.native_isa.restype = ctypes.c_char_p
    lib.native_has_int4.restype = i
    if lib.native_has_int4():
        lib.int4_rows.argtypes = [p, p, p, p, p, n, n, n, n, p, p, i, i]
        lib.int4_rows.restype = i
    has_int4 = bool(lib.native_has_int4()) and int4_layout().rows == 64
    return NativeKernels(lib, path, lib.native_isa().decode(), has_int4=has_int4)


def family_arch(family: str) -> tuple[str, ...] | str:
    """The compiler flags of one of FAMILIES, or why this CPU cannot run that family's kernels."""
    if family not in FAMILIES:
        return f"BLOOMTUI_NATIVE={family!r} is not 0, 1 or one of {', '.join(FAMILIES)}"
    arch, needs = FAMILIES[family]
    missing = sorted(needs - _cpu_flags())
    return f"this CPU cannot run the {family} kernels (it lacks {', '.join(missing)})" if missing else arch


def build(arch: tuple[str, ...] = ("-march=native",)) -> NativeKernels | str:
    """The kernels built for `arch` (kept in the cache dir), or why they cannot run here."""
    flags = _cpu_flags()
    if os.uname().machine not in ("x86_64", "AMD64") or not ({"avx512f"} <= flags or {"avx2", "fma"} <= flags):
        return "this CPU has neither AVX-512 nor AVX2 with FMA"
    cc = _compiler()
    if cc is None:
        return "no C compiler found (install gcc, or set CC)"
    runtime = _openmp_runtime()
    try:
        path = _library_path(cc, runtime, arch)
    except OSError as exc:  # the C source missing from an install
        return f"the kernels' source is unreadable: {exc}"
    if not path.is_file():
        failure = _build(cc, runtime, arch, path)
        if failure:
            return failure
    try:
        return _open(path)
    except OSError as exc:
        return f"the built kernels did not load: {exc}"


@cache
def kernels() -> NativeKernels | None:
    """The native kernels, built on first use on this machine; None where they cannot run (see describe())."""
    global _why_not
    asked = os.environ.get("BLOOMTUI_NATIVE", "1").strip().lower()
    if asked == "0":
        _why_not = "turned off (BLOOMTUI_NATIVE=0)"
        return None
    arch = ("-march=native",) if asked in ("1", "", "native") else family_arch(asked)
    if isinstance(arch, str):
        _why_not = arch
        return None
    built = build(arch)
    if isinstance(built, str):
        _why_not = built
        return None
    return built


_SWEEP = (12, 4096, 1024)
"""Matrices of a one-row timing: 100 MB of bf16, bloom-560m's MLP shape, read once per sweep."""


@dataclass(frozen=True)
class NativeProfile:
    """Milliseconds per sweep of one row through _SWEEP's matrices, native against torch's best one-row way."""

    bf16_native_ms: float
    bf16_torch_ms: float
    int8_native_ms: float
    int8_torch_ms: float
    int4_native_ms: float
    """inf where the build has no int4 kernel."""
    int4_torch_ms: float


def _paired_ms(fns: list, mats: list, rounds: int = 5) -> list[float]:  # noqa: ANN001
    """Best milliseconds per sweep of each fn over `mats`, the fns taking turns each round, so a burst of other
    work on the machine slows them alike rather than deciding the choice."""
    best = [float("inf")] * len(fns)
    for r in range(rounds + 1):  # round 0 warms up
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            for m in mats:
                fn(m)
            if r:
                best[i] = min(best[i], time.perf_counter() - t0)
    return [t * 1e3 for t in best]


def measure(native: NativeKernels) -> NativeProfile:
    count, n, k = _SWEEP
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, k, generator=gen).bfloat16()
    mats = [torch.randn(n, k, generator=gen).bfloat16() for _ in range(count)]
    mv, linear, native_bf16 = _paired_ms(
        [lambda w: torch.mv(w, x[0]), lambda w: F.linear(x, w), lambda w: native.bf16(x, w, None)], mats
    )
    torch_bf16 = min(mv, linear)
    q8 = [(torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8), torch.rand(n).bfloat16()) for _ in mats]
    del mats
    torch_int8, native_int8 = _paired_ms(
        [lambda q: torch.ops.aten._weight_int8pack_mm(x, q[0], q[1]), lambda q: native.int8(x, q[0], q[1], None)], q8
    )
    del q8
    group = 64
    codes = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.int32)
    scale, zero = torch.rand(n, k // group, generator=gen) / 8, torch.rand(n, k // group, generator=gen)
    packed, pairs = pack_int4(codes, scale, zero)
    q4 = [(packed.clone(), pairs.bfloat16()) for _ in range(count)]
    fns = [lambda q: torch.ops.aten._weight_int4pack_mm_for_cpu(x, q[0], group, q[1])]
    if native.has_int4:
        fns.append(lambda q: native.int4(x, q[0], q[1], group, None))
    torch_int4, native_int4 = [*_paired_ms(fns, q4), inf][:2]
    return NativeProfile(native_bf16, torch_bf16, native_int8, torch_int8, native_int4, torch_int4)


@cache
def chosen() -> NativeKernels | None:
    """The native kernels with the matrices they multiply faster than torch on this machine (measured once
    and kept, like cpu_profile), or None."""
    native = kernels()
    if native is None:
        return None
    key = f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads | {native.path.name}"
    profile = kept_or_measured("native-profile.json", key, NativeProfile, lambda: measure(native))
    assert profile is not None
    picked = replace(
        native,
        for_bf16=profile.bf16_native_ms < profile.bf16_torch_ms,
        for_int8=profile.int8_native_ms < profile.int8_torch_ms,
        for_int4=native.has_int4 and profile.int4_native_ms < profile.int4_torch_ms,
    )
    return picked if picked.for_bf16 or picked.for_int8 or picked.for_int4 else None


def describe() -> str:
    """Which one-row kernels run, for `bloomtui info`."""
    native = kernels()
    if native is None:
        return f"torch's one-row kernels (native ones not used: {_why_not})"
    picked = chosen()
    way = native.isa
    if (asked := os.environ.get("BLOOMTUI_NATIVE", "").strip().lower()) in FAMILIES:
        way += f" (forced: BLOOMTUI_NATIVE={asked})"
    kinds = (("bf16", "for_bf16"), ("int8", "for_int8"), ("int4", "for_int4"))
    uses = [name for name, flag in kinds if picked is not None and getattr(picked, flag)]
    if not uses:
        return f"torch's one-row kernels (the native {way} ones built here measured slower)"
    return f"native {way} kernels for {', '.join(uses)} rows, torch's for the rest (built at {native.path})"
