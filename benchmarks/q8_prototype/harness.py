# ruff: noqa: B023, E501 - a prototype kept as it measured: its timed lambdas run within the loop iteration that
# makes them, and its report lines are long on purpose.
"""Harness for the q8_gemv.c prototype (issue 31, not yet wired into the engine): builds it twice (AVX2, AVX2 +
AVX-VNNI), checks it, times it. Run from the checkout: `python -m benchmarks.q8_prototype.harness check`.

    python harness.py check          tiny shapes: quantiser == torch, kernels == fp64 reference (exact cases too)
    python harness.py errors         bloom-560m shapes: error against the fp64 same-math reference and the exact product
    python harness.py time [COUNT | MB_TARGET e.g. 640MB] [--four]
                                     GB/s of weight bytes, one row (--four: also 4 rows), against torch's and the
                                     project's kernels; ATEN_CPU_CAPABILITY=avx2 makes torch use its AVX2 kernels

Layouts (see q8_gemv.c's header): int8 is the project's (q [n, k], scales [n]); int4 codes are per row, 64-input
chunks of 32 bytes, byte j = code(64c + j) | code(64c + 32 + j) << 4, with (scale, zero) pairs [n, k/g, 2].
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time
from pathlib import Path

BUILD_DIR = Path(os.environ.get("Q8_BUILD_DIR", "/tmp/q8proto"))
os.environ.setdefault("BLOOMTUI_CACHE_DIR", str(BUILD_DIR / "cache"))  # the project builds go here, not ~/.cache
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout holding bloomtui

import torch  # noqa: E402

from bloomtui.engine.compute import native  # noqa: E402
from bloomtui.engine.weights import quant  # noqa: E402

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "q8_gemv.c"
BUILDS = {"avx2": ("-mavx2", "-mfma", "-mf16c"), "vnni": ("-mavx2", "-mfma", "-mavxvnni")}
DT = {torch.float32: 0, torch.bfloat16: 1}
THREADS = 2
SHAPES = ((1024, 4096), (4096, 1024))  # (k, n): bloom-560m's MLP up and down
if os.environ.get("Q8_TINY"):  # a dry run of the code paths, for a busy machine
    SHAPES = ((256, 128), (512, 64))
GROUPS = (32, 64, 128)


def build(name: str) -> ctypes.CDLL:
    """Compile q8_gemv.c for BUILDS[name], linked against the OpenMP runtime torch loaded (as native.py does)."""
    out = BUILD_DIR / "build" / f"q8_{name}.so"
    out.parent.mkdir(parents=True, exist_ok=True)
    runtime = native._openmp_runtime()
    link = [runtime, f"-Wl,-rpath,{os.path.dirname(runtime)}"] if runtime else ["-fopenmp"]
    if not out.exists() or out.stat().st_mtime < SOURCE.stat().st_mtime:
        obj = out.with_suffix(".o")
        subprocess.run(
            ["gcc", "-O3", *BUILDS[name], "-fopenmp", "-fPIC", "-c", str(SOURCE), "-o", str(obj)], check=True
        )
        subprocess.run(["gcc", "-shared", str(obj), "-o", str(out), *link], check=True)
    lib = ctypes.CDLL(str(out))
    p, n, i = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    lib.q8_int8_rows.argtypes = [p, p, p, p, p, n, n, n, i, i]
    lib.q8_int8_rows.restype = i
    lib.q8_int4_rows.argtypes = [p, p, p, p, p, n, n, n, n, i, i]
    lib.q8_int4_rows.restype = i
    lib.q8_quantize.argtypes = [p, n, n, i, p, p, p]
    lib.q8_quantize.restype = None
    lib.q8_isa.restype = ctypes.c_char_p
    return lib


def _ptr(t: torch.Tensor | None) -> int | None:
    return t.data_ptr() if t is not None else None


def q8_int8(lib, x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, b=None) -> torch.Tensor:  # noqa: ANN001
    m, k = x.shape
    n = q.shape[0]
    y = torch.empty(m, n, dtype=x.dtype)
    rc = lib.q8_int8_rows(_ptr(x), _ptr(q), _ptr(scales), _ptr(b), _ptr(y), m, n, k, DT[x.dtype], THREADS)
    assert rc == 0, rc
    return y


def q8_int4(lib, x: torch.Tensor, w4: torch.Tensor, sz: torch.Tensor, g: int, b=None) -> torch.Tensor:  # noqa: ANN001
    m, k = x.shape
    n = w4.shape[0]
    y = torch.empty(m, n, dtype=x.dtype)
    rc = lib.q8_int4_rows(_ptr(x), _ptr(w4), _ptr(sz), _ptr(b), _ptr(y), m, n, k, g, DT[x.dtype], THREADS)
    assert rc == 0, rc
    return y


def quantize_x(lib, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """The C quantiser's (xq [m, k] int8, d [m, k/32] fp32, block sums [m, k/32] int32)."""
    m, k = x.shape
    xq = torch.empty(m, k, dtype=torch.int8)
    d = torch.empty(m, k // 32)
    s = torch.empty(m, k // 32, dtype=torch.int32)
    lib.q8_quantize(_ptr(x), m, k, DT[x.dtype], _ptr(xq), _ptr(d), _ptr(s))
    return xq, d, s


def quantize_x_torch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same quantisation in torch (fp32 ops in the same order): d = max|x| / 127, xq = round(x * (127 / max|x|))."""
    m, k = x.shape
    blocks = x.float().view(m, k // 32, 32)
    amax = blocks.abs().amax(-1)
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    xq = torch.round(blocks * inv[..., None]).to(torch.int8).view(m, k)
    return xq, amax / 127.0


def pack_q4(codes: torch.Tensor) -> torch.Tensor:
    """codes [n, k] (0..15) -> [n, k/2] uint8 in q8_gemv.c's layout."""
    n, k = codes.shape
    c = codes.to(torch.uint8).view(n, k // 64, 2, 32)
    return (c[:, :, 0, :] | (c[:, :, 1, :] << 4)).reshape(n, k // 2).contiguous()


def pairs(scale: torch.Tensor, zero: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(scale, zero) [n, groups] each -> [n, groups, 2] in dtype."""
    return torch.stack([scale, zero], dim=-1).to(dtype).contiguous()


# ---- fp64 references -----------------------------------------------------------------------------------------


def ref_int8_same_math(xq, d, q, scales) -> torch.Tensor:  # noqa: ANN001
    """y = scale_r * sum_b d_b * (sum_{i in b} xq_i q_i), integers exact, floats in fp64."""
    m, k = xq.shape
    n = q.shape[0]
    xb = xq.double().view(m, k // 32, 32)
    qb = q.double().view(n, k // 32, 32)
    idot = torch.einsum("jbi,rbi->jrb", xb, qb)  # exact: |values| < 2^53
    return (idot * d.double()[:, None, :]).sum(-1) * scales.double()[None, :]


def ref_int4_same_math(xq, d, codes, scale, zero, g) -> torch.Tensor:  # noqa: ANN001
    """y = sum_g [ s_g sum_{b in g} d_b idot_b + (z_g - 8 s_g) xs_g ], xs_g = sum_{b in g} d_b sum_{i in b} xq_i."""
    m, k = xq.shape
    n = codes.shape[0]
    xb = xq.double().view(m, k // 32, 32)
    cb = codes.double().view(n, k // 32, 32)
    idot = torch.einsum("jbi,rbi->jrb", xb, cb)  # [m, n, blocks]
    per = g // 32
    gdot = (idot * d.double()[:, None, :]).view(m, n, k // g, per).sum(-1)  # [m, n, groups]
    xs = (xb.sum(-1) * d.double()).view(m, k // g, per).sum(-1)  # [m, groups]
    s, z = scale.double(), zero.double()
    return (gdot * s[None]).sum(-1) + (xs[:, None, :] * (z - 8 * s)[None]).sum(-1)


def dequant_int4(codes, scale, zero, g) -> torch.Tensor:  # noqa: ANN001
    n, k = codes.shape
    c = codes.double().view(n, k // g, g)
    return ((c - 8) * scale.double()[..., None] + zero.double()[..., None]).view(n, k)


def rel(y: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max |err| / max |ref|, mean |err| / max |ref|)"""
    e = (y.double() - ref).abs()
    top = ref.abs().max().item()
    return e.max().item() / top, e.mean().item() / top


# ---- check: tiny shapes ---------------------------------------------------------------------------------------


def exact_inputs(m: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """x whose every block has max |x| = 127 * 2^e: d = 2^e exactly and x * (127 / max) is exact, so every float
    op in the kernels is exact (integers times powers of two well under 2^24) and y must equal the fp64 reference
    bit for bit."""
    xi = torch.randint(-127, 128, (m, k), generator=gen)
    xi.view(m, k // 32, 32)[:, :, 5] = 127 * (torch.randint(0, 2, (m, k // 32), generator=gen) * 2 - 1)
    e = torch.randint(-3, 2, (m, k // 32, 1), generator=gen).double()
    return (xi.view(m, k // 32, 32).double() * 2.0**e).view(m, k).float()


def check() -> None:
    gen = torch.Generator().manual_seed(1)
    libs = {name: build(name) for name in BUILDS}
    for name, lib in libs.items():
        print(f"{name}: {lib.q8_isa().decode()}")
    lib0 = libs["avx2"]
    # quantiser: C == torch, both dtypes, including an all-zero block and ties
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 256, generator=gen).to(dtype)
        x[1, 32:64] = 0
        xq, d, s = quantize_x(lib0, x)
        tq, td = quantize_x_torch(x)
        assert torch.equal(xq, tq), (xq != tq).sum()
        assert torch.equal(d, td)
        assert torch.equal(s, xq.view(3, -1, 32).int().sum(-1))
        assert torch.equal(quantize_x(libs["vnni"], x)[0], xq)
    print("quantiser: C == torch (fp32, bf16, zero block)")

    worst = 0.0
    for name, lib in libs.items():
        for k, n in ((64, 8), (128, 5), (256, 64), (512, 33)):
            for m in (1, 2, 3, 4, 5, 9):
                # int8, exact case: power-of-two scales
                x = exact_inputs(m, k, gen)
                q = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
                sc = 2.0 ** torch.randint(-8, 0, (n,), generator=gen).float()
                xq, d, _ = quantize_x(lib, x)
                y = q8_int8(lib, x, q, sc)
                assert torch.equal(y.double(), ref_int8_same_math(xq, d, q, sc)), (name, k, n, m)
                # int8, random case, with bias, and bf16
                x = torch.randn(m, k, generator=gen)
                sc = torch.rand(n, generator=gen) / 50
                bias = torch.randn(n, generator=gen)
                xq, d, _ = quantize_x(lib, x)
                ref = ref_int8_same_math(xq, d, q, sc) + bias.double()
                worst = max(worst, rel(q8_int8(lib, x, q, sc, bias), ref)[0])
                yb = q8_int8(lib, x.bfloat16(), q, sc.bfloat16(), bias.bfloat16())
                xqb, db, _ = quantize_x(lib, x.bfloat16())
                refb = ref_int8_same_math(xqb, db, q, sc.bfloat16().float()) + bias.bfloat16().double()
                assert rel(yb, refb)[0] < 8e-3, rel(yb, refb)
                # every output row the same whatever m is
                y1 = torch.cat([q8_int8(lib, x[i : i + 1], q, sc, bias) for i in range(m)])
                assert torch.equal(y1, q8_int8(lib, x, q, sc, bias))
                for g in (32, 64, 128, 256):
                    if k % g:
                        continue
                    codes = torch.randint(0, 16, (n, k), generator=gen)
                    w4 = pack_q4(codes)
                    # exact case: scale 2^-s, zero a multiple of it
                    s = 2.0 ** torch.randint(-6, -1, (n, k // g), generator=gen).float()
                    z = torch.randint(-8, 9, (n, k // g), generator=gen).float() * s
                    x = exact_inputs(m, k, gen)
                    xq, d, _ = quantize_x(lib, x)
                    y = q8_int4(lib, x, w4, pairs(s, z, torch.float32), g)
                    assert torch.equal(y.double(), ref_int4_same_math(xq, d, codes, s, z, g)), (name, k, n, m, g)
                    # random case with bias; bf16
                    s, z = torch.rand(n, k // g, generator=gen) / 8, torch.randn(n, k // g, generator=gen) / 4
                    x = torch.randn(m, k, generator=gen)
                    xq, d, _ = quantize_x(lib, x)
                    ref = ref_int4_same_math(xq, d, codes, s, z, g) + bias.double()
                    y = q8_int4(lib, x, w4, pairs(s, z, torch.float32), g, bias)
                    worst = max(worst, rel(y, ref)[0])
                    y1 = torch.cat(
                        [q8_int4(lib, x[i : i + 1], w4, pairs(s, z, torch.float32), g, bias) for i in range(m)]
                    )
                    assert torch.equal(y1, y)
                    sb, zb = s.bfloat16().float(), z.bfloat16().float()
                    xqb, db, _ = quantize_x(lib, x.bfloat16())
                    refb = ref_int4_same_math(xqb, db, codes, sb, zb, g) + bias.bfloat16().double()
                    yb = q8_int4(lib, x.bfloat16(), w4, pairs(s, z, torch.bfloat16), g, bias.bfloat16())
                    assert rel(yb, refb)[0] < 8e-3, rel(yb, refb)
    print(f"kernels: bit-exact on the exact-float cases; random cases max err / max|y| = {worst:.2e} (fp32 order)")
    # both builds give the same numbers? (the integer sums are the same; float order is the same too)
    x = torch.randn(3, 512, generator=gen)
    q = torch.randint(-127, 128, (40, 512), generator=gen, dtype=torch.int8)
    sc = torch.rand(40, generator=gen)
    same = torch.equal(q8_int8(libs["avx2"], x, q, sc), q8_int8(libs["vnni"], x, q, sc))
    print(f"avx2 and vnni builds bit-identical: {same}")


# ---- errors: bloom-560m shapes ---------------------------------------------------------------------------------


def errors() -> None:
    gen = torch.Generator().manual_seed(2)
    lib = build("avx2")
    vnni = build("vnni")
    cur = native.build(("-mavx2", "-mfma"))
    assert not isinstance(cur, str), cur
    print("relative errors: max|err| / max|y| , mean|err| / max|y|   (m = 4 rows of randn x, randn W)")
    cases = [(k, n, False) for k, n in SHAPES] + [(k, n, True) for k, n in SHAPES]
    for k, n, outliers in cases:
        x = torch.randn(4, k, generator=gen)
        if outliers:  # BLOOM-like: a few channels far larger than the rest (every 100th input x 30)
            print("-- x with outlier channels: every 100th input x 30 --")
            x[:, ::100] *= 30
        w = torch.randn(n, k, generator=gen)
        xq, d, _ = quantize_x(lib, x)
        exact_w = x.double() @ w.double().T
        # int8
        q, sc = quant.quantize_int8(w)
        wd = q.double() * sc.double()[:, None]
        exact = x.double() @ wd.T
        y = q8_int8(lib, x, q, sc)
        assert torch.equal(y, q8_int8(vnni, x, q, sc))
        same = rel(y, ref_int8_same_math(xq, d, q, sc))
        print(
            f"k={k:5d} n={n:5d} int8       vs same-math fp64 {same[0]:.1e} {same[1]:.1e} | "
            f"vs exact x.Wq {fmt(rel(y, exact))} | bf16 x (torch's input) {fmt(rel(x.bfloat16().double() @ wd.T, exact))} | "
            f"current native fp32 {fmt(rel(cur.int8(x, q, sc, None), exact))} | weight quant alone {fmt(rel(exact, exact_w))}"
        )
        for g in GROUPS:
            codes, s, z = quant.int4_codes(w, g)
            w4, sz = pack_q4(codes), pairs(s, z, torch.float32)
            wd = dequant_int4(codes, s, z, g)
            exact = x.double() @ wd.T
            y = q8_int4(lib, x, w4, sz, g)
            assert torch.equal(y, q8_int4(vnni, x, w4, sz, g))
            same = rel(y, ref_int4_same_math(xq, d, codes, s, z, g))
            print(
                f"k={k:5d} n={n:5d} int4 g={g:3d} vs same-math fp64 {same[0]:.1e} {same[1]:.1e} | "
                f"vs exact x.Wq {fmt(rel(y, exact))} | bf16 x (torch's input) {fmt(rel(x.bfloat16().double() @ wd.T, exact))} | "
                f"weight quant alone {fmt(rel(exact, exact_w))}"
            )


def fmt(r: tuple[float, float]) -> str:
    return f"{r[0]:.2e} {r[1]:.2e}"


# ---- timing --------------------------------------------------------------------------------------------------


def paired_s(fns: dict, mats: list, rounds: int = 5) -> dict:  # noqa: ANN001
    """Best seconds per sweep of each fn over `mats`, the fns taking turns each round (native.py's _paired_ms)."""
    best = dict.fromkeys(fns, float("inf"))
    for r in range(rounds + 1):  # round 0 warms up
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for mat in mats:
                fn(mat)
            if r:
                best[name] = min(best[name], time.perf_counter() - t0)
    return best


def timing(count: int, target_mb: float = 0, four: bool = False) -> None:
    """count matrices per sweep, or (target_mb) as many as make that many MB; four: also time 4-row calls."""
    torch.set_num_threads(THREADS)
    gen = torch.Generator().manual_seed(3)
    libs = {name: build(name) for name in BUILDS}
    cur = native.build(("-mavx2", "-mfma"))
    cur512 = native.build()
    assert not isinstance(cur, str) and not isinstance(cur512, str)
    print(
        f"torch {torch.__version__} capability {torch.backends.cpu.get_cpu_capability()}, {THREADS} threads, "
        f"{count or str(target_mb) + ' MB of'} matrices per sweep, one bf16 row; GB/s = (codes + scales bytes) per sweep / best of 5 sweeps"
    )
    for k, n in SHAPES:
        x = torch.randn(1, k, generator=gen).bfloat16()
        # int8: one pool of codes, read by every contender
        x4 = torch.randn(4, k, generator=gen).bfloat16()
        if target_mb:
            count = int(target_mb * 1e6 // (n * k))
        big = torch.randint(-127, 128, (count, n, k), generator=gen, dtype=torch.int8)
        mats = [(big[i], (torch.rand(n, generator=gen) / 50).bfloat16()) for i in range(count)]
        fns = {
            "torch _weight_int8pack_mm": lambda t: torch.ops.aten._weight_int8pack_mm(x, t[0], t[1]),
            "project native AVX2 (fp32 FMA)": lambda t: cur.int8(x, t[0], t[1], None),
            f"project native {cur512.isa}": lambda t: cur512.int8(x, t[0], t[1], None),
            **{f"q8 {name}": (lambda lib: lambda t: q8_int8(lib, x, t[0], t[1]))(lib) for name, lib in libs.items()},
        }
        if four:
            fns["project native AVX2 (fp32 FMA) m=4"] = lambda t: cur.int8(x4, t[0], t[1], None)
            fns.update(
                {
                    f"q8 {name} m=4": (lambda lib: lambda t: q8_int8(lib, x4, t[0], t[1]))(lib)
                    for name, lib in libs.items()
                }
            )
        nbytes = count * (n * k + 2 * n)
        report(f"int8 k={k} n={n} ({nbytes / 1e6:.0f} MB)", paired_s(fns, mats), nbytes)
        del big, mats
        # int4: the same codes in both packings; scales per g
        if target_mb:
            count = int(target_mb * 1e6 // (n * k // 2))
        codes = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.int32)
        ours = pack_q4(codes).unsqueeze(0).repeat(count, 1, 1)
        theirs = quant._pack(codes).unsqueeze(0).repeat(count, *([1] * quant._pack(codes).dim()))
        for g in GROUPS:
            s, z = torch.rand(n, k // g, generator=gen) / 8, torch.rand(n, k // g, generator=gen)
            packed_pairs = torch.stack([s.T, z.T], -1).bfloat16().contiguous()  # [groups, n, 2] for torch / project
            our_pairs = pairs(s, z, torch.bfloat16)  # [n, groups, 2]
            mats = [(ours[i], our_pairs.clone(), theirs[i], packed_pairs.clone()) for i in range(count)]
            fns = {
                "torch _weight_int4pack_mm_for_cpu": lambda t: torch.ops.aten._weight_int4pack_mm_for_cpu(
                    x, t[2], g, t[3]
                )
            }
            if cur512.has_int4:
                fns[f"project native {cur512.isa}"] = lambda t: cur512.int4(x, t[2], t[3], g, None)
            for name, lib in libs.items():
                fns[f"q8 {name}"] = (lambda lib: lambda t: q8_int4(lib, x, t[0], t[1], g))(lib)
            if four:
                if cur512.has_int4:
                    fns[f"project native {cur512.isa} m=4"] = lambda t: cur512.int4(x4, t[2], t[3], g, None)
                for name, lib in libs.items():
                    fns[f"q8 {name} m=4"] = (lambda lib: lambda t: q8_int4(lib, x4, t[0], t[1], g))(lib)
            nbytes = count * (n * k // 2 + n * (k // g) * 4)
            report(f"int4 g={g} k={k} n={n} ({nbytes / 1e6:.0f} MB)", paired_s(fns, mats), nbytes)
        del ours, theirs, mats


def report(title: str, best: dict, nbytes: int) -> None:
    print(title)
    for name, sec in best.items():
        print(f"    {name:34s} {nbytes / sec / 1e9:6.1f} GB/s  ({sec * 1e3:7.2f} ms/sweep)")
    sys.stdout.flush()


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "check"
    if what == "check":
        check()
    elif what == "errors":
        errors()
    elif what == "time":
        arg = sys.argv[2] if len(sys.argv) > 2 else "12"
        four = "--four" in sys.argv
        if arg.endswith("MB"):
            timing(0, float(arg[:-2]), four)
        else:
            timing(int(arg), 0, four)
    else:
        raise SystemExit(__doc__)
