"""Many-row passes: row chunks equal one pass, the fp32-tile path equals the native one, progress events, and
cancel inside a long prefill."""

from __future__ import annotations

import threading

import pytest
import torch

from bloomtui.engine import Engine, SamplingParams
from bloomtui.engine import events as ev
from bloomtui.engine.compute.matmul import Matmul
from bloomtui.engine.stream import passes
from tests.checkpoints import oracle, reference_greedy, write_checkpoint

LONG = "The quick brown fox jumps over the lazy dog, and then it sleeps under a tree. " * 12


def greedy(path, monkeypatch=None, rows=None, upcast=None, n=8):  # noqa: ANN001, ANN201
    if rows is not None:
        monkeypatch.setattr(passes, "PREFILL_ROWS", rows)
    engine = Engine.open(path)
    if upcast is not None:
        monkeypatch.setattr(type(engine), "upcast", property(lambda _self: upcast))
    seen: list[ev.Event] = []
    try:
        result = engine.generate(LONG, SamplingParams(max_new_tokens=n, ignore_eos=True), on_event=seen.append)
        ids = engine.encode(LONG)
    finally:
        engine.close()
    logprobs = [e.logprob for e in seen if isinstance(e, ev.TokenGenerated)]
    return list(result.token_ids), logprobs, ids, seen


def test_row_chunks_match_transformers(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    written = write_checkpoint(tmp_path / "m", preset="small", dtype="float32", untied=True)
    ids, logprobs, prompt_ids, seen = greedy(written.path, monkeypatch, rows=37)
    assert len(prompt_ids) > 3 * 37  # several chunks per block, the last one partial
    want_ids, want_lp = reference_greedy(oracle(written), prompt_ids, 8)
    assert ids == want_ids
    assert max(abs(a - b) for a, b in zip(logprobs, want_lp, strict=True)) < 1e-3
    progress = [e for e in seen if isinstance(e, ev.PrefillProgress)]
    assert progress and progress[-1].done == progress[-1].total == len(prompt_ids) * 4
    assert all(p.tokens == len(prompt_ids) for p in progress)
    block = next(e for e in seen if isinstance(e, ev.BlockDone))
    assert block.kind == "prefill" and block.rows == len(prompt_ids)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_fp32_tiles_match_the_native_path(tmp_path, monkeypatch, dtype) -> None:  # noqa: ANN001
    written = write_checkpoint(tmp_path / "m", preset="small", dtype=dtype, untied=True)
    native = greedy(written.path, monkeypatch, upcast=False)
    tiled = greedy(written.path, monkeypatch, upcast=True)
    assert tiled[0] == native[0]
    tolerance = 1e-5 if dtype == "float32" else 5e-2  # fp32 is unchanged; bf16 differs by rounding only
    assert max(abs(a - b) for a, b in zip(tiled[1], native[1], strict=True)) < tolerance


def test_tiles_bound_the_upcast_and_check_between_them() -> None:
    calls = []
    mm = Matmul(upcast=True, check=lambda: calls.append(1), tile_bytes=64 * 32 * 4)
    w = torch.randn(256, 32).to(torch.bfloat16)
    x = torch.randn(7, 32).to(torch.bfloat16)
    out = mm(x, w)
    assert len(calls) == 4  # 256 rows in tiles of 64
    assert torch.allclose(out.float(), x.float() @ w.float().T, rtol=1e-2, atol=1e-2)  # bf16 output rounding


def test_cancel_lands_inside_the_prefill(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    written = write_checkpoint(tmp_path / "m", preset="small", dtype="float32")
    monkeypatch.setattr(passes, "PREFILL_ROWS", 16)
    monkeypatch.setattr(passes, "_PROGRESS_SECONDS", 0.0)  # an event per chunk
    engine = Engine.open(written.path)
    cancel = threading.Event()
    seen: list[ev.Event] = []

    def on_event(event: ev.Event) -> None:
        seen.append(event)
        if isinstance(event, ev.PrefillProgress) and event.done >= 32:
            cancel.set()  # mid-way through the first block: two chunks done

    try:
        result = engine.generate(LONG, SamplingParams(max_new_tokens=4), on_event=on_event, cancel=cancel)
        assert isinstance(result, ev.Cancelled) and result.new_tokens == 0
        assert not [e for e in seen if isinstance(e, ev.BlockDone)]  # stopped before the first block ended
        again = engine.generate("Hello", SamplingParams(max_new_tokens=2, ignore_eos=True))
        assert again.new_tokens == 2  # and the engine is ready for the next prompt
    finally:
        engine.close()
