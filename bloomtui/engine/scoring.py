"""Perplexity of a text under a model, through the same passes as generation (any layout, streamed or not).

The text's tokens are split into consecutive windows of `context` tokens; each window is one many-row pass
with a fresh KV cache, scored as transformers' `BloomForCausalLM(input_ids=w, labels=w).loss` scores it: every
token but the window's first is predicted from those before it in the window. A text shorter than `context` is
one window, so its NLL equals transformers' loss. Perplexity = exp(total NLL / predicted tokens).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from bloomtui.engine.events import Event, EventSink
from bloomtui.engine.model import Alibi, KVCache
from bloomtui.errors import UsageError

if TYPE_CHECKING:
    from bloomtui.engine.generate import Engine


@dataclass(frozen=True)
class WindowScored(Event):
    """One window of a perplexity run finished."""

    event: ClassVar[str] = "window"
    index: int
    total: int
    tokens: int
    nll: float
    """Mean NLL of this window's predictions."""
    seconds: float


@dataclass(frozen=True)
class Scored(Event):
    """A perplexity run finished: `tokens` predicted tokens, `nll` their mean negative log-likelihood."""

    event: ClassVar[str] = "scored"
    perplexity: float
    tokens: int
    nll: float
    seconds: float
    windows: int
    bytes_read: int
    peak_rss: int


def windows_of(ids: list[int], context: int) -> list[list[int]]:
    """Consecutive windows of `context` ids; a last window of one id predicts nothing and is dropped."""
    if context < 2:
        raise UsageError(f"--context must be at least 2 tokens, got {context}")
    out = [ids[i : i + context] for i in range(0, len(ids), context)]
    return [w for w in out if len(w) >= 2]


def score(
    engine: Engine, ids: list[int], context: int, generation: int, emit: EventSink, cancel: threading.Event
) -> Scored:
    windows = windows_of(ids, context)
    if not windows:
        raise UsageError("the text has fewer than 2 tokens: nothing to predict")
    cfg, dtype = engine.config, engine.dtype
    alibi = Alibi(cfg.n_head, dtype, max(len(w) for w in windows))
    started = time.perf_counter()
    total_nll, total_tokens = 0.0, 0
    with engine.store.prefetcher(len(windows), cancel) as prefetch:
        passes = engine.passes(generation, emit, cancel, prefetch)
        passes.rss()
        for index, window in enumerate(windows):
            engine.fit_threads()
            t0 = time.perf_counter()
            caches = [KVCache.empty(cfg, len(window), dtype) for _ in range(cfg.n_layer)]
            h = passes.hidden(window, 0, caches, alibi, "score", index)
            nll = passes.nll(h[:-1], torch.tensor(window[1:]))
            del caches
            window_nll = float(nll.double().sum())
            total_nll += window_nll
            total_tokens += len(window) - 1
            emit(
                WindowScored(
                    generation,
                    index,
                    len(windows),
                    len(window) - 1,
                    window_nll / (len(window) - 1),
                    time.perf_counter() - t0,
                )
            )
    mean = total_nll / total_tokens
    return Scored(
        generation,
        perplexity=math.exp(mean),
        tokens=total_tokens,
        nll=mean,
        seconds=time.perf_counter() - started,
        windows=len(windows),
        bytes_read=passes.bytes_read,
        peak_rss=passes.peak_rss,
    )
