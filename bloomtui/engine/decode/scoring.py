"""Perplexity of a text under a model, through the same passes as generation (any layout, streamed or not).

The text's tokens are split into consecutive windows of `context` tokens; each window is scored with a fresh
KV cache as transformers' `BloomForCausalLM(input_ids=w, labels=w).loss` scores it: every token but the
window's first is predicted from those before it in the window. A text shorter than `context` is one window,
so its NLL equals transformers' loss. Perplexity = exp(total NLL / predicted tokens). When blocks stream,
several windows share each pass over the weights (`batch`): the result is the same, the reads fewer.
"""

from __future__ import annotations

import math
import threading
import time
from typing import TYPE_CHECKING

import torch

from bloomtui.engine.compute.model import Alibi, KVCache
from bloomtui.engine.events import Event, EventSink
from bloomtui.engine.plan.memory_guard import available_memory, headroom, total_memory
from bloomtui.engine.stream.passes import Segment
from bloomtui.errors import UsageError

if TYPE_CHECKING:
    from bloomtui.engine.stream.open_model import OpenModel


class ScoredTokens(Event):
    """`tokens` predicted tokens scored in `seconds`: `nll` is the mean of their negative log-likelihoods."""

    tokens: int
    nll: float
    seconds: float

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll)


class WindowScored(ScoredTokens, event="window"):
    """One window of a perplexity run finished (`seconds`: its share of the pass it rode)."""

    index: int
    total: int


class Scored(ScoredTokens, event="scored"):
    """A perplexity run finished, its windows taken together."""

    windows: int
    bytes_read: int
    peak_rss: int
    batch: int = 1
    """Windows scored per pass over the weights."""


def windows_of(ids: list[int], context: int) -> list[list[int]]:
    """Consecutive windows of `context` ids; a last window of one id predicts nothing and is dropped."""
    if context < 2:
        raise UsageError(f"--context must be at least 2 tokens, got {context}")
    out = [ids[i : i + context] for i in range(0, len(ids), context)]
    return [w for w in out if len(w) >= 2]


MAX_BATCH = 8
"""Windows per pass chosen by default at most: past that a streamed pass is compute-bound anyway."""


def window_bytes(engine: OpenModel, context: int) -> int:
    """Memory one window of a batch holds through its pass: its KV caches and its rows' hidden states."""
    cfg = engine.config
    itemsize = engine.dtype.itemsize
    return context * cfg.hidden_size * itemsize * (2 * cfg.n_layer + 2)


def default_batch(engine: OpenModel, context: int, windows: int) -> int:
    """Windows per pass: one when every block is resident (many-row passes are compute-bound, nothing is
    shared); when blocks stream, as many as half the memory left free holds, up to MAX_BATCH."""
    if not engine.model_plan.plan.streams or windows < 2:
        return 1
    spare = available_memory() - headroom(total_memory())
    return max(1, min(MAX_BATCH, windows, spare // 2 // window_bytes(engine, context)))


def score(
    engine: OpenModel,
    ids: list[int],
    context: int,
    generation: int,
    emit: EventSink,
    cancel: threading.Event,
    batch: int | None = None,
) -> Scored:
    windows = windows_of(ids, context)
    if not windows:
        raise UsageError("the text has fewer than 2 tokens: nothing to predict")
    if batch is not None and batch < 1:
        raise UsageError(f"--batch must be at least 1, got {batch}")
    batch = min(batch or default_batch(engine, context, len(windows)), len(windows))
    cfg, dtype = engine.config, engine.dtype
    alibi = Alibi(cfg.n_head, dtype, max(len(w) for w in windows))
    started = time.perf_counter()
    total_nll, total_tokens = 0.0, 0
    groups = [windows[g : g + batch] for g in range(0, len(windows), batch)]
    with engine.store.prefetcher(len(groups), cancel) as prefetch:
        passes = engine.passes(generation, emit, cancel, prefetch)
        passes.rss()
        index = 0
        for group in groups:
            engine.fit_threads()
            t0 = time.perf_counter()
            # Each window its own fresh caches, all of them in one pass over the weights.
            segments = [
                Segment(w, 0, [KVCache.empty(cfg, len(w), dtype) for _ in range(cfg.n_layer)], decode_like=False)
                for w in group
            ]
            hidden = passes.hidden_rows(segments, alibi, "score", index)
            del segments
            rows = torch.cat([h[:-1] for h in hidden if h is not None])
            nll = passes.nll(rows, torch.tensor([t for w in group for t in w[1:]])).double()
            seconds = (time.perf_counter() - t0) / len(group)
            row = 0
            for window in group:
                predicted = len(window) - 1
                window_nll = float(nll[row : row + predicted].sum())
                row += predicted
                total_nll += window_nll
                total_tokens += predicted
                mean = window_nll / predicted
                emit(WindowScored(generation, predicted, mean, seconds, index=index, total=len(windows)))
                index += 1
    return Scored(
        generation,
        tokens=total_tokens,
        nll=total_nll / total_tokens,
        seconds=time.perf_counter() - started,
        windows=len(windows),
        bytes_read=passes.bytes_read,
        peak_rss=passes.peak_rss,
        batch=batch,
    )
