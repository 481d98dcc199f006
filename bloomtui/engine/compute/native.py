"""Native few-row multiplies (native_gemv.c, native_q8.c): built once per machine with its C compiler, loaded
with ctypes.

torch's one-row kernels read BLOOM's matrices well below the memory's speed (on this project's Xeon: bf16
addmv 24 GB/s, the int8 weight-only kernel 15, where plain reads reach 30), and decoding is nothing but
reading weights. The native kernels stream each weight row once for every input row, so decode and draft
verification get the same numbers. int8 and int4 matrices have two kernels each: the exact one (fp32 inputs,
native_gemv.c) and one that quantises the inputs to int8 per block (32 inputs; an int4 matrix's group) and
multiplies in integers (native_q8.c, llama.cpp's way: on AVX2 the only way int4 reads at the memory's speed).
`chosen(activations)` takes the faster, measured once per machine, unless the user asked for one
(EngineOptions.activations).

They need x86-64 with AVX-512 or AVX2 and a C compiler with OpenMP at run time; anywhere else `kernels()` is None
and matmul.py keeps torch's kernels (the eager path). `describe()` says
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
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from bloomtui.engine.compute.cpu_profile import cpu_name
from bloomtui.engine.compute.profile_cache import kept_or_measured
from bloomtui.engine.engine_options import ACTIVATIONS
from bloomtui.engine.weights.quant import pack_int4

HERE = Path(__file__).parent
SOURCES = (HERE / "native_gemv.c", HERE / "native_q8.c")
HEADERS = (HERE / "native_common.h",)
MAX_ROWS = 16
"""Rows the native kernels take in one call; more (prefill, big trees) are GEMM work for torch."""
ROW_BUCKETS = (1, 4, MAX_ROWS)
"""Row counts the exact and integer-dot kernels are timed at: a call of r rows takes the choice made for the first
bucket >= r (decoding one row, a verify pass or a few sequences, a batch). The faster one differs: on the Xeon's
AVX-512 build int8 with int8 inputs wins at 1 and 16 rows and loses at 4."""


def bucket(rows: int) -> int:
    return next((i for i, top in enumerate(ROW_BUCKETS) if rows <= top), len(ROW_BUCKETS) - 1)


K_MULTIPLE = 64
_DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1}
FAMILIES: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {
    "avx2": (("-march=haswell",), frozenset({"avx2", "fma", "f16c"})),
    "avx2-vnni": (("-march=haswell", "-mavxvnni"), frozenset({"avx2", "fma", "f16c", "avx_vnni"})),
    "avx512": (("-march=skylake-avx512",), frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"})),
    "avx512-bf16": (
        ("-march=cooperlake",),
        frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx512_vnni", "avx512_bf16"}),
    ),
}
"""The CPU families the kernels have paths for: (compiler flags, the /proc/cpuinfo flags a CPU needs to run
them). Each -march names the family's first CPU (Haswell: AVX2 + FMA; Skylake-SP: AVX-512 without BF16;
Cooper Lake: AVX-512 BF16), so a build holds no instruction from a later one; avx2-vnni adds AVX-VNNI to Haswell's
(Alder Lake and later desktops, Zen 5: VPDPBUSD on 256-bit registers without AVX-512)."""
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
    """Compile SOURCES into `out` for `arch` (compiler flags); None, or why it failed."""
    with tempfile.TemporaryDirectory(prefix="bloomtui-native-") as tmp:
        objs, lib = [Path(tmp) / f"{src.stem}.o" for src in SOURCES], Path(tmp) / "gemv.so"
        link = [runtime, f"-Wl,-rpath,{os.path.dirname(runtime)}"] if runtime else ["-fopenmp"]
        steps = [
            *(
                [cc, "-O3", *arch, "-fopenmp", "-fPIC", "-c", str(src), "-o", str(obj)]
                for src, obj in zip(SOURCES, objs, strict=True)
            ),
            [cc, "-shared", *map(str, objs), "-o", str(lib), *link],
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
    parts = [
        *(src.read_text() for src in SOURCES + HEADERS),
        version,
        cpu_name(),
        " ".join(sorted(_cpu_flags())),
        str(runtime),
        *arch,
    ]
    key = "\n".join(parts)
    return cache_dir() / "native" / f"gemv-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"


def _call(rc: int, what: str) -> None:
    if rc == -1:
        raise MemoryError(f"no memory for the {what} kernel's input rows")
    if rc:
        raise ValueError(f"the {what} kernel cannot take this shape (int4: inputs a multiple of 64 and of the group)")


def _ptr(t: Tensor | None) -> int | None:
    return t.data_ptr() if t is not None else None


@dataclass(frozen=True)
class NativeKernels:
    lib: ctypes.CDLL
    path: Path
    isa: str
    """The instructions the float kernels use: "AVX-512 BF16" (bf16 pairs multiplied natively), "AVX-512" or "AVX2"."""
    int_isa: str
    """The instruction the integer-dot kernels use (VPDPBUSD or VPMADDUBSW)."""
    for_bf16: bool = True
    """Used for bf16 matrices (measured faster than torch's one-row kernels here) ..."""
    for_int8: bool = True
    """... for int8 ones with exact inputs (else torch's) ..."""
    q8_int8: tuple[bool, ...] = (False,) * 3
    """... int8 ones with the inputs quantised to int8 (native_q8.c), per bucket of ROW_BUCKETS ..."""
    q8_int4: tuple[bool, ...] = (False,) * 3
    """... and int4 ones likewise (else the exact int4 kernel: nothing else reads the int4 layout fast)."""

    def quantized(self, bits: int, rows: int) -> bool:
        """Whether a call of `rows` rows on `bits`-bit weights takes the integer-dot kernel."""
        return (self.q8_int8 if bits == 8 else self.q8_int4)[bucket(rows)]

    def takes(self, x: Tensor, in_features: int) -> bool:
        return x.dim() == 2 and 0 < x.shape[0] <= MAX_ROWS and in_features % K_MULTIPLE == 0 and x.dtype in _DTYPE_CODE

    def bf16(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        """x @ w.T + b for bf16 x [m, k] (m <= MAX_ROWS) and w [n, k]: bf16 [m, n]."""
        x, w = x.contiguous(), w.contiguous()
        b = b.contiguous() if b is not None else None
        m, k = x.shape
        y = torch.empty((m, w.shape[0]), dtype=torch.bfloat16)
        _call(self.lib.bf16_rows(_ptr(x), _ptr(w), _ptr(b), _ptr(y), m, w.shape[0], k, torch.get_num_threads()), "bf16")
        return y

    def int8(self, x: Tensor, qweight: Tensor, scales: Tensor, b: Tensor | None, quantized: bool = False) -> Tensor:
        """x @ (qweight * scales[:, None]).T + b, in x's dtype (scales and b in it too); `quantized`: with x
        quantised to int8 per 32 inputs (native_q8.c)."""
        x, qweight, scales = x.contiguous(), qweight.contiguous(), scales.to(x.dtype).contiguous()
        b = b.to(x.dtype).contiguous() if b is not None else None
        m, k = x.shape
        y = torch.empty((m, qweight.shape[0]), dtype=x.dtype)
        fn = self.lib.q8_int8_rows if quantized else self.lib.int8_rows
        args = (_ptr(x), _ptr(qweight), _ptr(scales), _ptr(b), _ptr(y), m, qweight.shape[0], k, _DTYPE_CODE[x.dtype])
        _call(fn(*args, torch.get_num_threads()), "int8")
        return y

    def int4(
        self, x: Tensor, qweight: Tensor, pairs: Tensor, group_size: int, b: Tensor | None, quantized: bool = False
    ) -> Tensor:
        """x @ W.T + b for W in the int4 rows layout (quant.py) with (scale, zero) pairs [n, k/g, 2], in x's
        dtype; `quantized`: with x quantised to int8 per 32 inputs (native_q8.c)."""
        x, qweight, pairs = x.contiguous(), qweight.contiguous(), pairs.to(x.dtype).contiguous()
        b = b.to(x.dtype).contiguous() if b is not None else None
        m, k = x.shape
        n = qweight.shape[0]
        y = torch.empty((m, n), dtype=x.dtype)
        fn = self.lib.q8_int4_rows if quantized else self.lib.int4_rows
        args = (_ptr(x), _ptr(qweight), _ptr(pairs), _ptr(b), _ptr(y), m, n, k, group_size, _DTYPE_CODE[x.dtype])
        _call(fn(*args, torch.get_num_threads()), "int4")
        return y


def _open(path: Path) -> NativeKernels:
    lib = ctypes.CDLL(str(path))
    p, n, i = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    lib.bf16_rows.argtypes = [p, p, p, p, n, n, n, i]
    for name in ("int8_rows", "q8_int8_rows"):
        getattr(lib, name).argtypes = [p, p, p, p, p, n, n, n, i, i]
    for name in ("int4_rows", "q8_int4_rows"):
        getattr(lib, name).argtypes = [p, p, p, p, p, n, n, n, n, i, i]
    for name in ("bf16_rows", "int8_rows", "q8_int8_rows", "int4_rows", "q8_int4_rows"):
        getattr(lib, name).restype = i
    lib.native_isa.restype = lib.q8_isa.restype = ctypes.c_char_p
    lib.q8_quantize.argtypes = [p, n, n, i, n, p, p, p]  # the inputs' quantiser alone, for the tests
    lib.q8_quantize.restype = None
    return NativeKernels(lib, path, lib.native_isa().decode(), lib.q8_isa().decode())


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
    """Milliseconds per sweep through _SWEEP's matrices: one row through the native kernels against torch's best
    one-row way, and the exact kernels against the integer-dot ones at each of ROW_BUCKETS' row counts."""

    bf16_native_ms: float
    bf16_torch_ms: float
    int8_torch_ms: float
    int8_native_ms: list[float]
    int8_q8_ms: list[float]
    int4_native_ms: list[float]
    int4_q8_ms: list[float]


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


def _exact_and_integer(
    call: Callable[[Tensor, tuple, bool], Tensor], xs: list[Tensor], mats: list
) -> list[list[float]]:
    """Per input in xs: [exact ms, integer-dot ms] of call(x, matrix, quantized) over the matrices, paired."""
    return [_paired_ms([lambda q, x=x: call(x, q, False), lambda q, x=x: call(x, q, True)], mats) for x in xs]


def measure(native: NativeKernels) -> NativeProfile:
    count, n, k = _SWEEP
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(rows, k, generator=gen).bfloat16() for rows in ROW_BUCKETS]
    x = xs[0]
    mats = [torch.randn(n, k, generator=gen).bfloat16() for _ in range(count)]
    mv, linear, native_bf16 = _paired_ms(
        [lambda w: torch.mv(w, x[0]), lambda w: F.linear(x, w), lambda w: native.bf16(x, w, None)], mats
    )
    del mats
    q8 = [
        (torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8), torch.rand(n).bfloat16())
        for _ in range(count)
    ]
    (int8_torch,) = _paired_ms([lambda q: torch.ops.aten._weight_int8pack_mm(x, q[0], q[1])], q8)
    int8 = _exact_and_integer(lambda r, q, z: native.int8(r, q[0], q[1], None, z), xs, q8)
    del q8
    group = 64
    codes = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.int32)
    scale, zero = torch.rand(n, k // group, generator=gen) / 8, torch.rand(n, k // group, generator=gen)
    packed, pairs = pack_int4(codes, scale, zero)
    q4 = [(packed.clone(), pairs.bfloat16()) for _ in range(count)]
    int4 = _exact_and_integer(lambda r, q, z: native.int4(r, q[0], q[1], group, None, z), xs, q4)
    return NativeProfile(
        native_bf16,
        min(mv, linear),
        int8_torch,
        [exact for exact, _ in int8],
        [q for _, q in int8],
        [exact for exact, _ in int4],
        [q for _, q in int4],
    )


@cache
def profile() -> NativeProfile | None:
    """The kept (or, the first time on this machine, measured) profile of the native kernels, or None."""
    native = kernels()
    if native is None:
        return None
    key = f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads | {native.path.name}"
    return kept_or_measured("native-profile.json", key, NativeProfile, lambda: measure(native))


def check_activations(activations: str | None) -> str:
    """`activations` as one of ACTIVATIONS (None is auto)."""
    activations = (activations or "auto").strip().lower()
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations must be one of {', '.join(ACTIVATIONS)}, got {activations!r}")
    return activations


@cache
def chosen(activations: str = "auto") -> NativeKernels | None:
    """The native kernels with the matrices they multiply, or None where they cannot run. bf16 and exact int8
    rows go native where measured faster than torch; int8 and int4 rows take the integer-dot kernels where
    `activations` is "int8", or "auto" and they measured faster than the exact kernels here."""
    native, measured = kernels(), profile()
    if native is None or measured is None:
        return None
    activations = check_activations(activations)

    def faster(q8: list[float], exact: list[float]) -> tuple[bool, ...]:
        return tuple(activations == "int8" or (activations == "auto" and a < b) for a, b in zip(q8, exact, strict=True))

    exact_int8 = [min(measured.int8_native_ms[0], measured.int8_torch_ms), *measured.int8_native_ms[1:]]
    return replace(
        native,
        for_bf16=measured.bf16_native_ms < measured.bf16_torch_ms,
        for_int8=measured.int8_native_ms[0] < measured.int8_torch_ms,
        q8_int8=faster(measured.int8_q8_ms, exact_int8),
        q8_int4=faster(measured.int4_q8_ms, measured.int4_native_ms),
    )


def forget() -> None:
    """Build, measure and choose again on next use (after BLOOMTUI_NATIVE or the cache dir changed)."""
    kernels.cache_clear()
    profile.cache_clear()
    chosen.cache_clear()


def _quantised_rows(on: tuple[bool, ...], exact_ms: list[float], q8_ms: list[float], activations: str, isa: str) -> str:
    """How int8/int4 rows are multiplied (per bucket of rows) and why."""
    if activations != "auto":
        return f"with int8 inputs by {isa} (asked)" if on[0] else "exact (asked)"
    spans = ("1", "2-4", f"5-{MAX_ROWS}")
    ratios = " / ".join(f"{e / q:.2f}x" for e, q in zip(exact_ms, q8_ms, strict=True))
    if all(on) or not any(on):
        way = f"with int8 inputs by {isa}" if all(on) else "exact"
    else:
        taken = ", ".join(span for span, q8 in zip(spans, on, strict=True) if q8)
        left = ", ".join(span for span, q8 in zip(spans, on, strict=True) if not q8)
        way = f"with int8 inputs by {isa} at {taken} rows, exact at {left}"
    return f"{way} (int8 inputs measured {ratios} the exact kernel's speed here at {' / '.join(spans)} rows)"


def describe(activations: str | None = None) -> str:
    """Which one-row kernels run and why, for `bloomtui info`."""
    native = kernels()
    if native is None:
        return f"torch's one-row kernels, int4 dequantised a tile at a time (native ones not used: {_why_not})"
    activations = check_activations(activations)
    picked, measured = chosen(activations), profile()
    assert picked is not None and measured is not None
    way = native.isa
    if (asked := os.environ.get("BLOOMTUI_NATIVE", "").strip().lower()) in FAMILIES:
        way += f" (forced: BLOOMTUI_NATIVE={asked})"
    exact_int8 = [min(measured.int8_native_ms[0], measured.int8_torch_ms), *measured.int8_native_ms[1:]]
    int8 = _quantised_rows(picked.q8_int8, exact_int8, measured.int8_q8_ms, activations, native.int_isa)
    if not picked.q8_int8[0] and not picked.for_int8:
        int8 += "; one exact row by torch's kernel"
    int4 = _quantised_rows(picked.q8_int4, measured.int4_native_ms, measured.int4_q8_ms, activations, native.int_isa)
    bf16 = "native" if picked.for_bf16 else "torch's (native measured slower)"
    return f"native {way} kernels: bf16 rows {bf16}; int8 rows {int8}; int4 rows {int4} (built at {native.path})"
