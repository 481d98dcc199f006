"""Perplexity through the engine against transformers' BloomForCausalLM(labels=ids).loss."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from bloomtui.engine import Engine, EngineOptions
from bloomtui.engine.decode.scoring import WindowScored, windows_of
from bloomtui.engine.plan.residency import minimum_budget
from bloomtui.engine.weights.checkpoint import Checkpoint
from bloomtui.errors import CancelRequested, UsageError
from tests.checkpoints import oracle, write_checkpoint

TEXT = (
    "Python is an easy to learn, powerful programming language. It has efficient high-level data structures "
    "and a simple but effective approach to object-oriented programming. Its elegant syntax and dynamic typing, "
    "together with its interpreted nature, make it an ideal language for scripting and rapid application "
    "development in many areas on most platforms. "
) * 3


def reference_nll(written, ids: list[int], context: int) -> tuple[float, int]:  # noqa: ANN001
    """Token-weighted mean of transformers' per-window loss."""
    model = oracle(written)
    total, count = 0.0, 0
    for window in windows_of(ids, context):
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([window]), labels=torch.tensor([window])).loss.item()
        total += loss * (len(window) - 1)
        count += len(window) - 1
    return total / count, count


def engine_score(written, context: int, budget: int | None = None):  # noqa: ANN001, ANN201
    engine = Engine.open(written.path, EngineOptions(ram_budget=budget))
    try:
        ids = engine.encode(TEXT)
        return engine.perplexity(TEXT, context), ids, engine.store.plan
    finally:
        engine.close()


@pytest.mark.parametrize(
    "layout", ["safetensors", "safetensors-sharded", "safetensors-underscore", "bin", "bin-sharded", "bigscience"]
)
def test_one_window_equals_transformers_loss_on_every_layout(tmp_path, layout) -> None:  # noqa: ANN001
    written = write_checkpoint(tmp_path / layout, preset="small", layout=layout, untied=layout != "bigscience")
    result, ids, _ = engine_score(written, context=4096)
    want, count = reference_nll(written, ids, 4096)
    assert result.windows == 1 and result.tokens == count == len(ids) - 1
    assert abs(result.nll - want) / want <= 1e-4
    assert math.isclose(result.perplexity, math.exp(want), rel_tol=1e-3)


@pytest.mark.parametrize("streamed", [False, True])
def test_windows_resident_and_streamed(tmp_path, streamed) -> None:  # noqa: ANN001
    written = write_checkpoint(tmp_path / "m", preset="small", layout="safetensors-sharded", untied=True)
    budget = minimum_budget(Checkpoint.open(written.path), 4) if streamed else None
    result, ids, plan = engine_score(written, context=50, budget=budget)
    assert plan.streamed_blocks == (tuple(range(4)) if streamed else ())
    assert not plan.head_resident if streamed else plan.head_resident
    want, count = reference_nll(written, ids, 50)
    assert result.windows == math.ceil(len(ids) / 50) and result.tokens == count
    assert abs(result.nll - want) / want <= 1e-4


def test_batched_windows_score_as_one_per_pass(tmp_path) -> None:  # noqa: ANN001
    written = write_checkpoint(tmp_path / "m", preset="small", layout="bin-sharded", untied=True)
    engine = Engine.open(written.path, EngineOptions(ram_budget=minimum_budget(Checkpoint.open(written.path), 4)))
    try:
        ids = engine.encode(TEXT)
        passes: dict[int, int] = {}
        results = {}
        for batch in (1, 3, None):
            seen: list = []
            results[batch] = engine.perplexity(TEXT, 40, on_event=seen.append, batch=batch)
            passes[batch] = sum(1 for e in seen if getattr(e, "event", "") == "block" and e.index == 0)
            windows = [e for e in seen if isinstance(e, WindowScored)]
            assert [w.index for w in windows] == list(range(results[batch].windows))
    finally:
        engine.close()
    n = math.ceil(len(ids) / 40)
    assert results[1].windows == n and n >= 4 and passes[1] == n
    assert passes[3] == math.ceil(n / 3) and results[3].batch == 3
    # The default streams, so it takes several windows per pass.
    assert results[None].batch > 1 and passes[None] == math.ceil(n / results[None].batch)
    want, _ = reference_nll(written, ids, 40)
    for r in results.values():
        assert abs(r.nll - results[1].nll) <= 1e-6 * results[1].nll and abs(r.nll - want) / want <= 1e-4
        assert r.tokens == results[1].tokens


def test_bf16_model_scores_close_to_transformers(tmp_path) -> None:  # noqa: ANN001
    written = write_checkpoint(tmp_path / "m", preset="small", dtype="bfloat16", untied=True)
    result, ids, _ = engine_score(written, context=4096)
    model = oracle(written, torch.bfloat16)
    with torch.no_grad():
        want = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert abs(result.nll - want) / want < 2e-2  # bf16 rounding; the fp32-tile path is the more exact one


def test_windows_and_events(tmp_path) -> None:  # noqa: ANN001
    assert windows_of(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert windows_of(list(range(9)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # a lone last token predicts nothing
    with pytest.raises(UsageError):
        windows_of([1, 2, 3], 1)
    written = write_checkpoint(tmp_path / "m")
    engine = Engine.open(written.path)
    try:
        seen: list = []
        result = engine.perplexity(TEXT, 40, on_event=seen.append)
        windows = [e for e in seen if isinstance(e, WindowScored)]
        assert [w.index for w in windows] == list(range(result.windows))
        assert sum(w.tokens for w in windows) == result.tokens
        with pytest.raises(UsageError, match="fewer than 2 tokens"):
            engine.perplexity("a", 40)
        cancel = threading.Event()
        cancel.set()
        with pytest.raises(CancelRequested):
            engine.perplexity(TEXT, 40, cancel=cancel)
        assert engine.perplexity(TEXT, 40).nll == pytest.approx(result.nll, rel=1e-6)  # usable after cancel
    finally:
        engine.close()
