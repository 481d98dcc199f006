"""The native few-row kernels (native.py): sums equal to fp32 references, each row's numbers independent of how
many rows share the call, the engine's ids equal to transformers' and to torch's path, and a clear fallback
where they cannot be built."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bloomtui.engine import Engine, EngineOptions, SamplingParams
from bloomtui.engine import events as ev
from bloomtui.engine.compute import native
from bloomtui.engine.compute.matmul import Matmul, QuantizedLinear
from bloomtui.engine.compute.native import MAX_ROWS
from bloomtui.engine.decode.draft_spec import DraftSpec
from bloomtui.engine.prepare import prepare
from bloomtui.engine.stream import open_model
from bloomtui.engine.weights.quant import int4_codes, pack_int4, quantize_int8
from tests.checkpoints import oracle, reference_greedy, write_checkpoint
from tests.engine.conftest import BUILDS
from tests.engine.test_prepare import oracle_for

PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time"


def _bf16_reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    y = x.double() @ w.double().T
    return (y + b.double() if b is not None else y).float()


@pytest.mark.parametrize("rows", [1, 3, 5, 16])
@pytest.mark.parametrize("bias", [True, False])
def test_bf16_rows_equal_an_fp32_reference_row_by_row(kernels, rows: int, bias: bool) -> None:  # noqa: ANN001
    gen = torch.Generator().manual_seed(rows)
    n, k = 201, 192  # rows no multiple of the threads' split; k three steps of 64
    w = torch.randn(n, k, generator=gen).bfloat16()
    x = torch.randn(rows, k, generator=gen).bfloat16()
    b = torch.randn(n, generator=gen).bfloat16() if bias else None
    got = kernels.bf16(x, w, b)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, n)
    want = _bf16_reference(x, w, b)
    # One rounding to bf16 after fp32 sums: within half a bf16 step of the exact value (plus fp32's drift).
    assert ((got.float() - want).abs() <= want.abs() * 2**-8 + 1e-4).all()
    for i in range(rows):  # the same numbers as a call with this row alone: verify passes equal decode passes
        assert torch.equal(got[i], kernels.bf16(x[i : i + 1], w, b)[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows", [1, 4, 7])
def test_int8_rows_equal_the_dequantised_product(kernels, dtype: torch.dtype, rows: int) -> None:  # noqa: ANN001
    gen = torch.Generator().manual_seed(rows)
    n, k = 130, 128
    qweight, scales = quantize_int8(torch.randn(n, k, generator=gen))
    x = torch.randn(rows, k, generator=gen).to(dtype)
    b = torch.randn(n, generator=gen).to(dtype)
    got = kernels.int8(x, qweight, scales.to(dtype), b)
    assert got.dtype == dtype
    want = x.double() @ (qweight.double() * scales.to(dtype).double()[:, None]).T + b.double()
    tolerance = 2**-8 if dtype == torch.bfloat16 else 1e-6
    assert ((got.double() - want).abs() <= want.abs() * tolerance + 1e-4).all()
    for i in range(rows):
        assert torch.equal(got[i], kernels.int8(x[i : i + 1], qweight, scales.to(dtype), b)[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("rows", "group"), [(1, 64), (5, 32)])
def test_int4_rows_equal_the_dequantised_product(kernels, dtype: torch.dtype, rows: int, group: int) -> None:  # noqa: ANN001
    gen = torch.Generator().manual_seed(rows)
    n, k = 192, 256
    codes, scale, zero = int4_codes(torch.randn(n, k, generator=gen), group)
    packed, pairs = pack_int4(codes, scale, zero)
    weight = QuantizedLinear(4, packed, pairs.to(dtype), group, (n, k))
    x = torch.randn(rows, k, generator=gen).to(dtype)
    b = torch.randn(n, generator=gen).to(dtype)
    got = kernels.int4(x, packed, pairs.to(dtype), group, b)
    want = x.double() @ weight.dequantize_rows(0, n, torch.float64).T + b.double()
    tolerance = 2**-8 if dtype == torch.bfloat16 else 1e-6
    assert ((got.double() - want).abs() <= want.abs() * tolerance + 1e-4).all()
    for i in range(rows):
        assert torch.equal(got[i], kernels.int4(x[i : i + 1], packed, pairs.to(dtype), group, b)[0])


def test_matmul_takes_the_native_path_only_where_it_applies(kernels) -> None:  # noqa: ANN001
    gen = torch.Generator().manual_seed(0)
    mm, eager = Matmul(native=kernels), Matmul()
    w = torch.randn(64, 128, generator=gen).bfloat16()
    x = torch.randn(20, 128, generator=gen).bfloat16()
    assert torch.equal(mm(x[:2], w), kernels.bf16(x[:2], w, None))  # few bf16 rows: native
    assert torch.equal(mm(x, w), eager(x, w))  # more rows than it takes: torch's GEMM
    odd = torch.randn(64, 96, generator=gen).bfloat16()  # 96 inputs: not a multiple of 64
    assert torch.equal(mm(x[:1, :96], odd), eager(x[:1, :96], odd))
    assert torch.equal(mm(x[:1].float(), w.float()), eager(x[:1].float(), w.float()))  # fp32 weights: torch
    codes, scale, zero = int4_codes(w.float(), 64)
    packed, pairs = pack_int4(codes, scale, zero)
    int4 = QuantizedLinear(4, packed, pairs.bfloat16(), 64, (64, 128))
    assert torch.equal(mm(x[:1], int4), kernels.int4(x[:1], packed, pairs.bfloat16(), 64, None))
    assert torch.equal(mm(x, int4), eager(x, int4))  # many rows: dequantised tiles
    fast = replace(kernels, q8_int4=(True,) * 3)
    assert torch.equal(Matmul(native=fast)(x[:1], int4), kernels.int4(x[:1], packed, pairs.bfloat16(), 64, None, True))
    slower = replace(kernels, for_bf16=False)
    assert torch.equal(Matmul(native=slower)(x[:1], w), eager(x[:1], w))  # measured slower here: torch


def test_the_integer_kernels_are_chosen_per_bucket_of_rows(kernels, monkeypatch) -> None:  # noqa: ANN001
    """auto takes the integer-dot kernel only for the row counts where it measured faster; a call goes the way
    its bucket (1, 2-4, 5-16 rows) was chosen; exact and int8 override the measurement."""
    measured = native.NativeProfile(1.0, 2.0, 9.0, [2.0, 2.0, 2.0], [1.0, 3.0, 1.0], [2.0, 2.0, 2.0], [3.0, 1.0, 1.0])
    monkeypatch.setattr(native, "kernels", lambda: kernels)
    monkeypatch.setattr(native, "profile", lambda: measured)
    native.chosen.cache_clear()
    try:
        auto = native.chosen("auto")
        assert auto is not None and auto.q8_int8 == (True, False, True) and auto.q8_int4 == (False, True, True)
        assert [auto.quantized(8, rows) for rows in (1, 2, 4, 5, 16)] == [True, False, False, True, True]
        assert native.chosen("exact").q8_int8 == (False,) * 3 and native.chosen("int8").q8_int4 == (True,) * 3
        assert "at 1, 5-16 rows, exact at 2-4" in native.describe("auto")
    finally:
        native.chosen.cache_clear()
    gen = torch.Generator().manual_seed(0)
    q, scales = quantize_int8(torch.randn(64, 128, generator=gen))
    weight, mm = QuantizedLinear(8, q, scales.bfloat16(), 0, (64, 128)), Matmul(native=auto)
    for rows, quantized in ((1, True), (3, False), (9, True)):
        x = torch.randn(rows, 128, generator=gen).bfloat16()
        assert torch.equal(mm(x, weight), kernels.int8(x, q, scales.bfloat16(), None, quantized))


def _greedy(path: Path, monkeypatch: pytest.MonkeyPatch, kernels, **options):  # noqa: ANN001, ANN003, ANN202
    monkeypatch.setattr(open_model, "chosen", lambda activations="auto": kernels)
    engine = Engine.open(path, EngineOptions(**options))
    tokens: list[ev.TokenGenerated] = []
    try:
        result = engine.generate(
            PROMPT, SamplingParams(max_new_tokens=12, ignore_eos=True), on_event=lambda e: tokens.append(e)
        )
        return list(result.token_ids), [e.logprob for e in tokens if isinstance(e, ev.TokenGenerated)], engine
    finally:
        engine.close()


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_prepared_engine_equals_transformers_through_the_native_kernels(
    kernels,
    weights: str,
    tmp_path,
    monkeypatch,  # noqa: ANN001
) -> None:
    source = write_checkpoint(tmp_path / "src", preset="tiny", dtype="float32", init_std=0.08)
    out = prepare(source.path, tmp_path / weights, weights)
    ids, logprobs, engine = _greedy(out, monkeypatch, kernels, dtype="float32")
    want_ids, want_lp = reference_greedy(oracle_for(out), engine.encode(PROMPT), 12)
    assert ids == want_ids and len(set(ids)) > 3
    assert max(abs(a - b) for a, b in zip(logprobs, want_lp, strict=True)) < 2e-3
    eager_ids, eager_lp, _ = _greedy(out, monkeypatch, None, dtype="float32")
    assert eager_ids == ids
    assert max(abs(a - b) for a, b in zip(logprobs, eager_lp, strict=True)) < 1e-4


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_int8_activations_decode_close_to_the_exact_kernels(kernels, weights: str, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """The integer-dot kernels in a whole model: the first tokens and their logprobs as the exact kernels give
    them, within the inputs' quantisation (benchmarks/activations.py measures the distributions at length)."""
    source = write_checkpoint(tmp_path / "src", preset="tiny", dtype="float32", init_std=0.08)
    out = prepare(source.path, tmp_path / weights, weights, group_size=64)
    exact_ids, exact_lp, _ = _greedy(out, monkeypatch, kernels)
    ids, logprobs, _ = _greedy(out, monkeypatch, replace(kernels, q8_int8=(True,) * 3, q8_int4=(True,) * 3))
    assert ids[:3] == exact_ids[:3]
    assert max(abs(a - b) for a, b in zip(logprobs[:3], exact_lp[:3], strict=True)) < 0.05
    assert logprobs != exact_lp  # the integer path did run


def test_bf16_engine_native_against_transformers_and_torch(kernels, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    written = write_checkpoint(tmp_path / "m", preset="tiny", dtype="bfloat16")  # hidden 64: every matrix native
    ids, logprobs, engine = _greedy(written.path, monkeypatch, kernels)
    want_ids, want_lp = reference_greedy(oracle(written, torch.bfloat16), engine.encode(PROMPT), 12)
    # bf16 rounding may flip a near-tie after which the sequences part: the first steps closely.
    assert ids[0] == want_ids[0] and abs(logprobs[0] - want_lp[0]) < 0.05
    eager_ids, _, _ = _greedy(written.path, monkeypatch, None)
    assert eager_ids[:4] == ids[:4]


def test_verified_drafts_keep_decoding_logprobs_on_the_native_path(kernels, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    written = write_checkpoint(tmp_path / "m", preset="tiny", dtype="bfloat16")
    monkeypatch.setattr(open_model, "chosen", lambda activations="auto": kernels)
    engine = Engine.open(written.path)
    prompt = "one two three four five six one two three four five six one two three"
    params = SamplingParams(max_new_tokens=30, ignore_eos=True)
    try:
        runs = []
        for draft in (None, DraftSpec()):  # plain, then prompt lookup: verify passes of several rows
            seen: list[ev.Event] = []
            result = engine.generate(prompt, params, on_event=seen.append, draft=draft)
            runs.append((result, [e.logprob for e in seen if isinstance(e, ev.TokenGenerated)]))
    finally:
        engine.close()
    (plain, plain_lp), (drafted, drafted_lp) = runs
    assert drafted.token_ids == plain.token_ids and drafted_lp == plain_lp
    assert drafted.draft_accepted > 0  # verify passes did carry several rows


def test_no_compiler_falls_back_to_torch_and_says_why(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("BLOOMTUI_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that fails without a word
    monkeypatch.setattr(native, "_compiler", lambda: "/bin/false")
    failure = native.build()
    assert isinstance(failure, str) and "could not build" in failure
    assert not list(tmp_path.rglob("*.so"))  # nothing half-built is left to load
    native.forget()
    try:
        assert native.kernels() is None and native.chosen() is None
        assert "not used" in native.describe() and "could not build" in native.describe()
        monkeypatch.setenv("BLOOMTUI_NATIVE", "0")
        native.forget()
        assert "BLOOMTUI_NATIVE=0" in native.describe()
    finally:
        native.forget()


def test_a_family_can_be_forced_where_the_cpu_runs_it(monkeypatch) -> None:  # noqa: ANN001
    """BLOOMTUI_NATIVE=avx2 builds the AVX2 kernels on an AVX-512 machine, and `info` says they were forced; a
    family this CPU cannot run, or an unknown name, leaves torch's kernels and says why."""
    if native._compiler() is None:
        pytest.skip("no C compiler here")
    monkeypatch.setattr(native, "_cpu_flags", lambda: {"avx2", "fma", "f16c"})  # an AVX2-only desktop
    assert native.family_arch("avx2") == native.FAMILIES["avx2"][0]
    assert "lacks avx512_bf16" in native.family_arch("avx512-bf16")
    assert "not 0, 1 or one of avx2, avx2-vnni, avx512, avx512-bf16" in native.family_arch("sse")
    monkeypatch.undo()
    runnable = [family for family in native.FAMILIES if not isinstance(native.family_arch(family), str)]
    if not runnable:
        pytest.skip("this CPU runs none of the families' kernels")
    families = (
        ("avx2", "AVX2", "VPMADDUBSW (AVX2)"),
        ("avx2-vnni", "AVX2", "VPDPBUSD (AVX-VNNI)"),
        ("avx512", "AVX-512", "VPMADDUBSW (AVX2)"),
        ("avx512-bf16", "AVX-512 BF16", "VPDPBUSD (AVX-512 VNNI)"),
    )
    for family, isa, int_isa in families:
        if family not in runnable:
            continue
        monkeypatch.setenv("BLOOMTUI_NATIVE", family)
        native.forget()
        try:
            built = native.kernels()
            assert built is not None and built.isa == isa and built.int_isa == int_isa
            assert f"forced: BLOOMTUI_NATIVE={family}" in native.describe()
        finally:
            native.forget()


def test_a_read_only_cache_is_reported_not_raised(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    if native._compiler() is None:
        pytest.skip("no C compiler: nothing is built, so nothing is kept")
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("BLOOMTUI_CACHE_DIR", str(blocked))  # a file where the cache dir should be
    failure = native.build(BUILDS["avx2"])
    assert isinstance(failure, str) and "could not keep the built kernels" in failure


def test_a_built_library_is_kept_and_reused(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("BLOOMTUI_CACHE_DIR", str(tmp_path))
    first = native.build(BUILDS["avx2"])
    if isinstance(first, str):
        pytest.skip(f"the native kernels cannot run on this machine: {first}")
    monkeypatch.setattr(native, "_build", lambda *a: pytest.fail("built again"))
    again = native.build(BUILDS["avx2"])
    assert not isinstance(again, str) and again.path == first.path and again.isa == "AVX2"


def test_many_rows_of_a_quantised_matrix_go_through_the_kernels_in_chunks(kernels) -> None:  # noqa: ANN001
    """A decode-like pass of more than MAX_ROWS rows (a big batch or tree) takes an int4/int8 matrix through the
    native kernels MAX_ROWS rows at a time, each chunk as a pass of that many rows would."""
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(64, 128, generator=gen)
    codes, scale, zero = int4_codes(w, 64)
    packed, pairs = pack_int4(codes, scale, zero)
    int4 = QuantizedLinear(4, packed, pairs.bfloat16(), 64, (64, 128))
    q, scales = quantize_int8(w)
    int8 = QuantizedLinear(8, q, scales.bfloat16(), 0, (64, 128))
    x = torch.randn(MAX_ROWS * 2 + 3, 128, generator=gen).bfloat16()
    chunked = Matmul(native=kernels, chunks=True)
    for weight in (int4, int8):
        one_call = [Matmul(native=kernels)(x[r : r + MAX_ROWS], weight) for r in range(0, x.shape[0], MAX_ROWS)]
        assert torch.equal(chunked(x, weight), torch.cat(one_call))
    assert not torch.equal(Matmul(native=kernels)(x, int4), chunked(x, int4))  # without: a dequantised tile
