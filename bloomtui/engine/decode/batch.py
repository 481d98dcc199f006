"""Several sequences per weight pass: the loop every generation runs, for one sequence or many.

When blocks stream, the disk sets the price of a pass and it costs nearly the same for one row or eight, so
every running sequence rides every pass: each brings its new rows (its prompt when it joins, then its last
token and any drafted ones) with its own caches and positions, and takes back its rows of logits. A
sequence that joins prefills in the next pass without padding anyone; one that ends (EOS, a stop string, its
length, its own cancel) leaves and the passes shrink. Sequences with the same prompt (N samples) prefill it
once and start from copies of its caches. Each sequence gets what it would get alone: the same float32 results
to rounding (logprobs within 1e-4); in bfloat16, several rows may go through another kernel than one row
alone and round differently (measured in README's "Headless CLI").
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from bloomtui.engine.compute.model import Alibi
from bloomtui.engine.events import Cancelled, Done, EventSink, PassKind, PhaseChanged
from bloomtui.engine.stream.passes import RowsDropped, Segment
from bloomtui.errors import CancelRequested

if TYPE_CHECKING:
    from bloomtui.engine.decode.sequence import SequenceRun
    from bloomtui.engine.stream.open_model import OpenModel
    from bloomtui.engine.stream.passes import Passes

Ended = Done | Cancelled


class Batch:
    """The running sequences of one run and the passes they share."""

    def __init__(self, model: OpenModel, passes: Passes, generation: int, emit: EventSink) -> None:
        self.model, self.passes = model, passes
        self.generation, self.emit = generation, emit
        self.alibi = Alibi(model.config.n_head, model.dtype)
        self.running: list[SequenceRun] = []
        self.joining: list[SequenceRun] = []
        self.passes_run = 0
        self._passes_at_use = 0
        self.interrupted = False
        """A pass stopped part-way (all its rows dropped): call use() with a fresh Passes before stepping on."""

    def use(self, passes: Passes) -> None:
        """Run the next passes through `passes` (a new prefetcher), keeping the run's tallies."""
        passes.bytes_read += self.passes.bytes_read
        passes.peak_rss = max(passes.peak_rss, self.passes.peak_rss)
        self.passes, self.interrupted = passes, False
        self._passes_at_use = self.passes_run

    def add(self, seq: SequenceRun) -> None:
        """`seq` joins at the next pass."""
        self.joining.append(seq)

    @property
    def active(self) -> bool:
        return bool(self.running or self.joining)

    def step(self) -> list[Ended]:
        """One pass over every running and joining sequence; returns (and emits) the results of those
        that ended in it. Raises CancelRequested when the run's cancel flag is set (see cancel_all)."""
        assert not self.interrupted, "an interrupted batch needs use() first"
        ended = [self._end(s) for s in self.running + self.joining if s.cancel.is_set()]
        self.running = [s for s in self.running if not s.cancel.is_set()]
        joining, self.joining = [s for s in self.joining if not s.cancel.is_set()], []
        # One prefill per distinct prompt: the rest copy its caches after the pass.
        leaders: dict[tuple[int, ...], SequenceRun] = {}
        followers: list[tuple[SequenceRun, SequenceRun]] = []
        for s in joining:
            key = tuple(s.prompt_ids)
            if key in leaders:
                followers.append((s, leaders[key]))
            else:
                leaders[key] = s
        riders = self.running + list(leaders.values())
        self.running = riders
        # Followers wait in `joining` until they adopt their leader's caches, so a pass that stops part-way
        # (a run cancel, or every rider's own) still finds them to end or to carry on.
        self.joining = [f for f, _ in followers]
        if not riders:
            return ended
        self.model.fit_threads()
        t0 = time.perf_counter()
        segments, kinds = [], set()
        for s in riders:
            ids, start, kind = s.next_rows()
            assert s.caches is not None
            kinds.add(kind)
            like_decode = len(ids) == 1 or kind == "verify"
            segments.append(Segment(ids, start, s.caches, like_decode, dropped=s.cancel.is_set, tree=s.tree_rows))
        kind: PassKind = "prefill" if "prefill" in kinds else "verify" if "verify" in kinds else "decode"
        step = min(len(s.token_ids) for s in riders)
        rows = sum(len(seg.ids) for seg in segments)
        t_pass = time.perf_counter()  # drafting is over: the pass's own cost from here (tree budgets fit it)
        try:
            hidden = self.passes.hidden_rows(segments, self.alibi, kind, step)
        except RowsDropped:
            # Every rider was cancelled mid-pass. The pass stopped part-way, so the prefetcher that fed it is
            # out of step: the owner of the loop gives the batch a new one (use()) before the next step.
            self.interrupted = True
            ended += [self._end(s) for s in riders]
            self.running = []
            return ended
        taking = [(s, h[-s.logit_rows :]) for s, h in zip(riders, hidden, strict=True) if h is not None]
        logits = self.passes.logits(torch.cat([h for _, h in taking]), like_decode=True)
        cfg = self.model.config
        self.emit(PhaseChanged(self.generation, "sampling", cfg.n_layer, cfg.n_layer))
        now = time.perf_counter()
        seconds, pass_seconds = now - t0, now - t_pass
        self.passes_run += 1
        row = 0
        rows_of: dict[int, torch.Tensor] = {}
        for s, h in taking:
            rows_of[id(s)] = logits[row : row + h.shape[0]]
            row += h.shape[0]
        self.joining = []
        for s, leader in followers:
            if id(leader) in rows_of:
                s.adopt(leader)
                rows_of[id(s)] = rows_of[id(leader)]
                self.running.append(s)
            else:
                self.joining.append(s)  # its leader was cancelled mid-pass: it prefills next time
                self.passes.prefetch.ensure(self.passes_run - self._passes_at_use + s.params.max_new_tokens)
        for s in self.running:
            if id(s) in rows_of:
                s.take(rows_of[id(s)], seconds, rows, pass_seconds, timed=kind != "prefill")
        ended += [self._end(s) for s in self.running if s.finished or id(s) not in rows_of]
        self.running = [s for s in self.running if not s.finished and id(s) in rows_of]
        return ended

    def cancel_all(self) -> list[Ended]:
        """After the run's cancel: every sequence still running or waiting ends as Cancelled."""
        ended = [self._end(s, cancelled=True) for s in self.running + self.joining]
        self.running, self.joining = [], []
        return ended

    def _end(self, s: SequenceRun, cancelled: bool = False) -> Ended:
        s.close()
        result = s.done(self.passes.peak_rss, self.passes.bytes_read) if s.finished and not cancelled else s.cancelled()
        self.emit(result)
        return result


def run_batch(batch: Batch) -> list[Ended]:
    """Pass after pass until every sequence has ended or a pass was interrupted (batch.interrupted: give it
    a new Passes and call again); a run cancel ends the rest as Cancelled."""
    ended: list[Ended] = []
    try:
        while batch.active and not batch.interrupted:
            ended += batch.step()
    except CancelRequested:
        ended += batch.cancel_all()
    return ended
