"""Continuous batching: one thread runs passes over the weights for every running request's sequences.

Requests wait in a bounded queue and join at the next pass boundary (batch.py) while the sequences already
running stay under `max_batch`; each leaves when done, and its slot goes to the next in line. A request's
events (tokens, its end) go to the sink it brought, called from this thread. A request whose client went
away sets its cancel flag: its rows leave the pass after the current block. Between busy periods the thread
sleeps on the queue and holds no prefetcher (nothing is read ahead while idle).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bloomtui.engine.decode.batch import Batch
from bloomtui.engine.decode.sampling import SamplingParams
from bloomtui.engine.decode.sequence import SequenceRun
from bloomtui.engine.events import BlockDone, Cancelled, Done, Error, Event, TokenGenerated
from bloomtui.errors import BloomtuiError, CancelRequested

if TYPE_CHECKING:
    from bloomtui.engine.decode.draft_spec import DraftSpec
    from bloomtui.engine.generate import Engine

ENDLESS_PASSES = 1 << 40
"""A busy period's prefetcher reads ahead for as many passes as it lasts; it is closed when the period ends."""


class QueueFull(Exception):
    """The queue holds max_queue requests already."""


@dataclass(eq=False)
class Job:
    """One request: its sequences (one per prompt and choice) and where their events go."""

    prompts: list[list[int]]
    params: list[SamplingParams]
    """One per sequence: sequence k continues prompts[k // choices] with params[k]."""
    sink: Callable[[int, Event, dict | None], None]
    """Called from the scheduler thread with (sequence index within the job, event, the engine's figures
    at a token: PassFigures.report)."""
    top_logprobs: int = 0
    cancel: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    first_pass: float | None = None
    """When it joined the batch (its prefill is the next pass): the queue wait ends there."""
    ended: int = 0
    counted_cancelled: bool = False

    @property
    def size(self) -> int:
        return len(self.params)

    def prompt_of(self, k: int) -> list[int]:
        return self.prompts[k * len(self.prompts) // self.size]


@dataclass
class BlockCosts:
    """BlockDone events added up: the bytes streamed from disk, and the seconds spent reading them, waiting for
    them and computing."""

    bytes_read: int = 0
    read_seconds: float = 0.0
    wait_seconds: float = 0.0
    compute_seconds: float = 0.0

    def add(self, event: BlockDone) -> None:
        self.bytes_read += event.bytes
        self.read_seconds += event.read_seconds
        self.wait_seconds += event.wait_seconds
        self.compute_seconds += event.compute_seconds


@dataclass
class Totals(BlockCosts):
    """What /metrics reports: counters since the server started (the blocks' costs among them), and the state
    now."""

    requests: int = 0
    requests_cancelled: int = 0
    requests_failed: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    passes: int = 0
    rows: int = 0
    running: int = 0
    queued: int = 0


@dataclass
class PassFigures(BlockCosts):
    """One pass over the weights: the rows it carried, its wall time, what its blocks cost."""

    rows: int = 0
    started: float = 0.0
    seconds: float = 0.0

    def report(self, totals: Totals) -> dict[str, float | int]:
        """What a stream chunk tells the client about the server (the `bloomtui` field)."""
        return {
            "pass_rows": self.rows,
            "pass_seconds": round(self.seconds, 4),
            "pass_read_bytes": self.bytes_read,
            "read_mb_per_s": round(self.bytes_read / self.read_seconds / 1e6, 1) if self.read_seconds else 0.0,
            "running": totals.running,
            "queued": totals.queued,
            "passes": totals.passes,
        }


class Scheduler:
    """Owns the engine while it serves; `submit` from any thread."""

    def __init__(self, engine: Engine, max_batch: int, max_queue: int, draft: DraftSpec | None = None) -> None:
        self.engine, self.draft = engine, draft
        self.max_batch, self.max_queue = max_batch, max_queue
        self.totals = Totals()
        self._queue: deque[Job] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._halt = threading.Event()
        """Set to stop at once (after a grace period): running sequences end as cancelled."""
        self._owners: dict[int, tuple[Job, int]] = {}
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._serve, name="bloomtui-scheduler", daemon=True)
        self.error: str | None = None
        """Set when the engine failed: every later request is refused with it."""
        self._pass = PassFigures()
        self.last_pass = PassFigures()
        """The latest finished pass, for what a stream reports to its client (read from the HTTP thread)."""

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a request; raises QueueFull when max_queue are waiting, BloomtuiError when stopping."""
        with self._wake:
            if self._stopping or self.error:
                raise BloomtuiError(self.error or "the server is shutting down")
            if self._waiting([*self._queue, job]) > self.max_queue:
                raise QueueFull
            self._queue.append(job)
            self.totals.queued = self._waiting(self._queue)
            self._wake.notify()

    def _waiting(self, queue: list[Job] | deque[Job]) -> int:
        """How many of `queue` must wait: those past the ones that join at the next pass (in order, while
        their sequences fit beside the running ones under max_batch)."""
        room = self.max_batch - len(self._owners)
        for i, job in enumerate(queue):
            if job.size > room:
                return len(queue) - i
            room -= job.size
        return 0

    def stop(self, halt: bool = False) -> None:
        """Take no new requests; with `halt`, also end the running ones now (as cancelled)."""
        with self._wake:
            self._stopping = True
            if halt:
                self._halt.set()
                for job in self._queue:
                    job.cancel.set()
            self._wake.notify()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def busy(self) -> bool:
        """Whether any request runs or waits (read without the lock: a signal handler asks)."""
        return bool(self._owners or self._queue)

    def _serve(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._stopping:
                    self._wake.wait()
                if not self._queue and self._stopping:
                    return
            held = self.draft.model._lock if self.draft is not None and self.draft.model is not None else nullcontext()
            try:
                with held:
                    self.engine.run_locked(lambda _event: None, self._busy_period, emit_result=False)
            except Exception as exc:  # the engine failed: end every request with it, refuse new ones
                message = exc.message if isinstance(exc, BloomtuiError) else f"{type(exc).__name__}: {exc}"
                self._fail_all(message)

    def _busy_period(self, generation: int) -> None:
        """Passes while any request runs or waits. A pass that stops part-way (every row's client gone) leaves
        its prefetcher out of step: the period goes on with a fresh one. A halt ends it."""
        engine, batch = self.engine, None
        while True:
            with engine.store.prefetcher(ENDLESS_PASSES, self._halt) as prefetch:
                passes = engine.passes(generation, self._on_event, self._halt, prefetch)
                if batch is None:
                    batch = Batch(engine, passes, generation, self._on_event)
                else:
                    batch.use(passes)
                while not batch.interrupted:
                    self._admit(batch, generation)
                    if not batch.active:
                        return
                    try:
                        batch.step()
                    except CancelRequested:  # the server halts: every sequence ends as cancelled
                        batch.cancel_all()
                        return
                    finally:
                        self.totals.running = len(self._owners)

    def _admit(self, batch: Batch, generation: int) -> None:
        """Move waiting requests into the batch, in order, while their sequences fit under max_batch."""
        with self._wake:
            while self._queue and self._queue[0].size <= self.max_batch - len(self._owners):
                job = self._queue.popleft()
                if job.cancel.is_set():
                    job.sink(-1, Cancelled(generation, (), "", 0), None)
                    continue
                try:
                    seqs = self._sequences(job, generation)
                except Exception as exc:  # this request's own failure (e.g. its sampler): it alone ends
                    job.sink(-1, Error(generation, f"{type(exc).__name__}: {exc}"), None)
                    continue
                for k, (index, seq) in enumerate(seqs):
                    self._owners[index] = (job, k)
                    batch.add(seq)
                job.first_pass = time.perf_counter()
                self.totals.requests += 1
                self.totals.prompt_tokens += sum(len(p) for p in job.prompts)
            self.totals.queued = self._waiting(self._queue)

    def _sequences(self, job: Job, generation: int) -> list[tuple[int, SequenceRun]]:
        """The job's sequences, each with its own index in the busy period's events."""
        out = []
        for k, params in enumerate(job.params):
            index = next(self._ids)
            max_len = len(job.prompt_of(k)) + params.max_new_tokens
            drafter = self.engine.make_drafter(self.draft, generation, self._halt, max_len)
            seq = SequenceRun(
                self.engine,
                index,
                job.prompt_of(k),
                params,
                generation,
                self._on_event,
                drafter,
                cancel=job.cancel,
                top_logprobs=job.top_logprobs,
                tree=self.draft.budget() if self.draft is not None else None,
            )
            out.append((index, seq))
        return out

    def _on_event(self, event: Event) -> None:
        if isinstance(event, BlockDone):
            self.totals.add(event)
            if event.index == 0:
                self.totals.passes += 1
                self.totals.rows += event.rows
                self._pass = PassFigures(rows=event.rows, started=time.perf_counter() - event.compute_seconds)
            self._pass.add(event)
            if event.index == event.total - 1:
                self._pass.seconds = time.perf_counter() - self._pass.started
                self.last_pass = self._pass
            return
        sequence = getattr(event, "sequence", None)
        if sequence is None or sequence not in self._owners:
            return
        job, k = self._owners[sequence]
        figures = None
        if isinstance(event, TokenGenerated):
            self.totals.generated_tokens += 1
            self.totals.running = len(self._owners)
            figures = self.last_pass.report(self.totals)
        elif isinstance(event, Done | Cancelled):
            del self._owners[sequence]
            job.ended += 1
            if isinstance(event, Cancelled) and not job.counted_cancelled:
                job.counted_cancelled = True
                self.totals.requests_cancelled += 1
        job.sink(k, event, figures)

    def _fail_all(self, message: str) -> None:
        with self._wake:
            self.error = message
            jobs = {job for job, _ in self._owners.values()} | set(self._queue)
            self._owners.clear()
            self._queue.clear()
        for job in jobs:
            self.totals.requests_failed += 1
            job.sink(-1, Error(0, message), None)
