"""One pass over the weights for a run of positions: embed, every block (resident or streamed), ln_f, head.

Generation, perplexity scoring and draft verification all run passes; they differ only in how many rows a
pass carries and which logits they need. A pass may carry several sequences (segments), each with its own
KV caches and positions: the weights are read and multiplied once for all of them.
Many-row passes take their rows through each block in chunks, so
memory beyond the KV cache is one chunk's activations, and the cancel flag is checked between chunks and
between weight tiles (a long prefill stops within a second). Progress of many-row passes is reported as
`PrefillProgress` events.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil
import torch
from torch import Tensor

from bloomtui.engine.compute.matmul import Matmul, row_slice
from bloomtui.engine.compute.model import SCORE_BYTES, Alibi, KVCache, Span, TreeRows, block_spans, layer_norm
from bloomtui.engine.compute.native import NativeKernels
from bloomtui.engine.events import BlockDone, EventSink, PassKind, PhaseChanged, PrefillProgress
from bloomtui.engine.stream.loader import Prefetcher, WeightStore
from bloomtui.errors import CancelRequested

if TYPE_CHECKING:
    from bloomtui.engine.weights.config import BloomConfig

PREFILL_ROWS = 1024
"""Rows taken through a block at once: large enough that upcasting a weight tile is paid over many rows."""
_PROGRESS_SECONDS = 0.25


class RowsDropped(CancelRequested):
    """Every segment of a pass was cancelled on its own: the pass stopped part-way."""


def _never() -> bool:
    return False


@dataclass
class Segment:
    """One sequence's rows in a pass: `ids` at positions start.., attending through its own per-block caches."""

    ids: Sequence[int]
    start: int
    caches: list[KVCache]
    decode_like: bool = True
    """Multiply as a decode pass does (prefill and scoring rows: as many-row passes do; see matmul.py)."""
    dropped: Callable[[], bool] = _never
    """True once the sequence was cancelled: its rows leave the pass after the current block."""
    tree: TreeRows | None = None
    """The rows are a token tree (see model.TreeRows), not a chain."""

    def span(self, a: int, b: int, r0: int, r1: int, block: int, mm: Matmul) -> Span:
        """This segment's part of pass rows r0:r1, as a span of that chunk (its rows are a:b of the pass)."""
        lo, hi = max(a, r0) - a, min(b, r1) - a
        tree = self.tree.rows(lo, hi) if self.tree is not None else None
        return Span(lo + a - r0, hi + a - r0, self.caches[block], self.start + lo, mm, tree, self.decode_like)


def _row_bounds(segments: list[Segment]) -> list[tuple[int, int]]:
    out, a = [], 0
    for seg in segments:
        out.append((a, a + len(seg.ids)))
        a += len(seg.ids)
    return out


class Passes:
    """Runs passes for one generate/score call and keeps its I/O and memory tallies."""

    def __init__(
        self,
        store: WeightStore,
        config: BloomConfig,
        generation: int,
        emit: EventSink,
        cancel: threading.Event,
        prefetch: Prefetcher,
        upcast: bool,
        one_row_linear: bool = False,
        native: NativeKernels | None = None,
    ) -> None:
        self.store, self.config, self.generation = store, config, generation
        self.emit, self.cancel, self.prefetch = emit, cancel, prefetch
        self.bytes_read = 0
        self.peak_rss = 0
        self._process = psutil.Process()
        # Decode-like passes (one row, or a batch's, a verify pass's or a tree's few to tens) never upcast: a
        # verify row must sum as a decoded one does. More than MAX_ROWS rows of a quantised matrix go through the
        # native kernels in chunks of MAX_ROWS.
        self.mm_one = Matmul(check=self._check, one_row_linear=one_row_linear, native=native, chunks=True)
        self.mm_many = Matmul(upcast=upcast, check=self._check, one_row_linear=one_row_linear, native=native)

    def _check(self) -> None:
        if self.cancel.is_set():
            raise CancelRequested

    def rss(self) -> int:
        rss = self._process.memory_info().rss
        self.peak_rss = max(self.peak_rss, rss)
        return rss

    def hidden(
        self,
        ids: list[int],
        start: int,
        caches: list[KVCache],
        alibi: Alibi,
        kind: PassKind,
        token_index: int,
        tree: TreeRows | None = None,
    ) -> Tensor:
        """Final hidden states (after ln_f) of `ids` at positions start.. (or laid out as `tree`), filling the
        caches: (T, H)."""
        # Verification rows multiply as decoding does (no fp32 upcast), so greedy picks match a draft-free run.
        like_decode = len(ids) == 1 or kind == "verify"
        segment = Segment(ids, start, caches, decode_like=like_decode, tree=tree)
        out = self.hidden_rows([segment], alibi, kind, token_index)[0]
        assert out is not None  # a segment without a drop rule stays to the end
        return out

    def hidden_rows(
        self, segments: list[Segment], alibi: Alibi, kind: PassKind, token_index: int
    ) -> list[Tensor | None]:
        """One pass carrying every segment's rows; per segment its final hidden states (after ln_f), or None
        for one that dropped out. The linears multiply all rows at once (the weights are read once), attention
        runs per segment through its own caches."""
        store, cfg = self.store, self.config
        n, gen = cfg.n_layer, self.generation
        # Prefill-like rows first, so each kind of multiply takes one contiguous run of rows.
        order = sorted(range(len(segments)), key=lambda j: segments[j].decode_like)
        live = [(j, segments[j]) for j in order]
        x, nbytes = store.embed_rows([t for _, seg in live for t in seg.ids])
        self.bytes_read += nbytes
        small = store.small
        eps = cfg.layer_norm_epsilon
        x = layer_norm(x, small["word_embeddings_layernorm.weight"], small["word_embeddings_layernorm.bias"], eps)
        started = last_report = time.perf_counter()
        reports = kind in ("prefill", "score") and x.shape[0] > 1
        for i in range(n):
            rows = x.shape[0]
            bounds = _row_bounds([seg for _, seg in live])
            fetched = None
            weights = store.blocks.get(i)
            if weights is None:
                if not self.prefetch.ready():
                    self.emit(PhaseChanged(gen, "reading", i, n))
                fetched = self.prefetch.take(("block", i))
                weights = fetched.weights
            self.emit(PhaseChanged(gen, "computing", i, n))
            t0 = time.perf_counter()
            for r0 in range(0, rows, PREFILL_ROWS):
                r1 = min(rows, r0 + PREFILL_ROWS)
                # Rows in order: a chunk's keys and values are in the cache before the next chunk attends.
                spans = [
                    seg.span(a, b, r0, r1, i, self._mm(seg))
                    for (_, seg), (a, b) in zip(live, bounds, strict=True)
                    if a < r1 and b > r0
                ]
                x[r0:r1] = block_spans(x[r0:r1], weights, spans, alibi, cfg)
                now = time.perf_counter()
                # Long passes report progress; decode and verify passes carry a few rows only.
                if reports and (now - last_report > _PROGRESS_SECONDS or (i == n - 1 and r1 == rows)):
                    last_report = now
                    done = i * rows + r1
                    eta = (now - started) / done * (n * rows - done)
                    self.emit(PrefillProgress(gen, rows, done, n * rows, i, n, now - started, eta))
            compute = time.perf_counter() - t0
            rss = self.rss()  # before release: a mapped block's pages count until then
            if fetched is not None:
                self.prefetch.release(fetched)
                self.bytes_read += fetched.nbytes
            self.emit(
                BlockDone(
                    gen,
                    index=i,
                    total=n,
                    kind=kind,
                    token_index=token_index,
                    resident=fetched is None,
                    bytes=fetched.nbytes if fetched else 0,
                    read_seconds=fetched.read_seconds if fetched else 0.0,
                    wait_seconds=fetched.wait_seconds if fetched else 0.0,
                    compute_seconds=compute,
                    rss=rss,
                    rows=rows,
                )
            )
            self._check()
            if any(seg.dropped() for _, seg in live):
                # A cancelled sequence leaves the pass at once; the others go on without its rows.
                keep = [k for k, (_, seg) in enumerate(live) if not seg.dropped()]
                if not keep:
                    raise RowsDropped
                x = torch.cat([x[bounds[k][0] : bounds[k][1]] for k in keep])
                live = [live[k] for k in keep]
        x = layer_norm(x, small["ln_f.weight"], small["ln_f.bias"], eps)
        out: list[Tensor | None] = [None] * len(segments)
        for (j, _), (a, b) in zip(live, _row_bounds([seg for _, seg in live]), strict=True):
            out[j] = x[a:b]
        return out

    def _mm(self, segment: Segment) -> Matmul:
        return self.mm_one if segment.decode_like else self.mm_many

    def head_chunks(self, h: Tensor, like_decode: bool = False) -> Iterator[tuple[int, int, Tensor]]:
        """(first vocab row, end row, fp32 logits (R, end - first)) over the whole vocabulary, in order, each
        slice small enough that R rows of it fit in SCORE_BYTES; streamed head chunks are read as they go."""
        store = self.store
        mm = self.mm_one if h.shape[0] == 1 or like_decode else self.mm_many
        width = max(1024, SCORE_BYTES // (4 * h.shape[0]))
        if store.head is not None:
            sources = [(0, store.head, None)]
        else:
            sources = ((store.head_chunk_range(c)[0], None, c) for c in range(store.plan.head_chunks))
        for r0, head, chunk in sources:
            fetched = None
            if head is None:
                fetched = self.prefetch.take(("head", chunk))
                head = fetched.tensor
            for s0 in range(0, head.shape[0], width):
                s1 = min(head.shape[0], s0 + width)
                yield r0 + s0, r0 + s1, mm(h, row_slice(head, s0, s1)).float()
            if fetched is not None:
                self.rss()
                self.prefetch.release(fetched)
                self.bytes_read += fetched.nbytes

    def logits(self, h: Tensor, like_decode: bool = False) -> Tensor:
        """Full fp32 logits (R, vocab rows) for a few rows (sampling, draft verification)."""
        out = torch.empty((h.shape[0], self.store.plan.head_rows), dtype=torch.float32)
        for r0, r1, chunk in self.head_chunks(h, like_decode):
            out[:, r0:r1] = chunk
        return out

    def nll(self, h: Tensor, targets: Tensor) -> Tensor:
        """-log p(target) per row from fp32 logits, with a running log-sum-exp over vocabulary slices."""
        rows = h.shape[0]
        lse = torch.full((rows,), float("-inf"))
        picked = torch.empty(rows)
        for r0, r1, chunk in self.head_chunks(h):
            lse = torch.logaddexp(lse, torch.logsumexp(chunk, dim=-1))
            inside = (targets >= r0) & (targets < r1)
            if inside.any():
                where = inside.nonzero()[:, 0]
                picked[where] = chunk[where, targets[where] - r0]
        return lse - picked
