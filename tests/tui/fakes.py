"""A scripted engine: the same events as the real one, with fixed numbers, and a point where it holds.

Snapshots need a mid-generation screen that is identical on every run; cancel and quit tests need an engine
that is provably in the middle of a pass when the key is pressed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from bloomtui.engine import EngineOptions, SamplingParams, events
from bloomtui.errors import BudgetError
from bloomtui.tui.engine_handle import ModelSpec, Release, StatusSink
from bloomtui.tui.handle import Batch, EngineHandle, Results
from bloomtui.tui.run_state import ModelInfo

N_BLOCKS = 24
BLOCK_BYTES = 50_356_224  # one bloom-560m block in float32
PIECES = (
    "SELECT",
    " *",
    " FROM",
    " users",
    " WHERE",
    " name",
    " LIKE",
    " 'A%';",
    "\n",
    "This",
    " query",
    " returns",
    " every",
    " user",
    " whose",
    " name",
    " starts",
    " with",
    " A",
    ".",
)


def fake_info(n_blocks: int = N_BLOCKS) -> ModelInfo:
    return ModelInfo(
        name="bloom-560m (scripted)",
        n_blocks=n_blocks,
        resident_blocks=frozenset(range(0, n_blocks, 2)),  # every other block, as the planner spreads them
        head_resident=True,
        budget=1_800_000_000,
        planned_bytes=1_700_000_000,
        dtype="float32",
        layout="safetensors, single file",
        hidden_size=1024,
        n_head=16,
    )


@dataclass
class ScriptedEngine(EngineHandle):
    """Emits a deterministic pass per token; holds at (`hold_token`, `hold_block`), and at each of `hold_tokens`,
    until released or cancelled (each hold takes its own release)."""

    info: ModelInfo = field(default_factory=fake_info)
    baseline_rss: int = 250_000_000
    rss_bytes: int = 2_000_000_000
    pieces: tuple[str, ...] = PIECES
    hold_token: int | None = None
    hold_block: int = 0
    hold_tokens: tuple[int, ...] = ()
    holding: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    cancel_seen: threading.Event = field(default_factory=threading.Event)
    closed: bool = False
    runs: int = 0
    blocks_after_cancel: int = 0

    def rss(self) -> int:
        return self.rss_bytes

    def close(self) -> None:
        self.closed = True

    def _hold(self, cancel: threading.Event) -> None:
        self.holding.set()
        while not (cancel.is_set() or self.release.is_set()):
            cancel.wait(0.01)
        self.holding.clear()
        if self.hold_tokens:
            self.release.clear()

    multi_sequence: bool = True
    sample_lengths: tuple[int, ...] = ()
    """Tokens sample i writes before its end of text (default: every sample runs to max_new_tokens)."""
    params_asked: list[list[SamplingParams]] = field(default_factory=list)
    """The parameters of each run, one per sequence."""

    def sample_pieces(self, sequence: int) -> tuple[str, ...]:
        """Sample 0 writes `pieces`; sample i the same pieces rotated by 3i, so samples differ."""
        shift = (3 * sequence) % len(self.pieces)
        return self.pieces[shift:] + self.pieces[:shift]

    def _run(self, batch: Batch) -> Results:
        """One pass per step for every sample still running; a sample ends (Done) at its length."""
        prompts, params, on_event, cancel = batch.prompts, batch.params, batch.on_event, batch.cancel
        self.runs += 1
        self.params_asked.append(list(params))
        gen, n = self.runs, self.info.n_blocks
        count = min(params[0].max_new_tokens, len(self.pieces))
        given = self.sample_lengths
        lengths = [min(count, given[i]) if i < len(given) else count for i in range(len(prompts))]
        ids: list[list[int]] = [[] for _ in prompts]
        text: list[list[str]] = [[] for _ in prompts]
        results: dict[int, events.Done | events.Cancelled] = {}
        for step in range(count):
            running = [i for i in range(len(prompts)) if i not in results]
            if not running:
                break
            kind = "prefill" if step == 0 else "decode"
            for i in range(n):
                if (step == self.hold_token or step in self.hold_tokens) and i == self.hold_block:
                    self._hold(cancel)
                resident = i in self.info.resident_blocks
                if not resident:
                    on_event(events.PhaseChanged(gen, "reading", i, n))
                on_event(events.PhaseChanged(gen, "computing", i, n))
                read = 0.0 if resident else 0.02 + 0.004 * ((i * 7 + step * 3) % 9)
                on_event(
                    events.BlockDone(
                        gen, index=i, total=n, kind=kind, token_index=step, resident=resident,
                        bytes=0 if resident else BLOCK_BYTES, read_seconds=read, wait_seconds=read / 2,
                        compute_seconds=0.01 if step else 0.03, rss=1_950_000_000 + 1_000_000 * (i % 4),
                        rows=len(running),
                    )
                )  # fmt: skip
                if cancel.is_set():
                    self.cancel_seen.set()
                    for s in running:
                        cancelled = events.Cancelled(gen, tuple(ids[s]), "".join(text[s]), len(ids[s]), sequence=s)
                        results[s] = self._end(on_event, cancelled)
                    return [results[s] for s in range(len(prompts))]
            on_event(events.PhaseChanged(gen, "sampling", n, n))
            for s in running:
                piece = self.sample_pieces(s)[step]
                ids[s].append(100 + step)
                text[s].append(piece)
                on_event(events.TokenGenerated(gen, step, ids[s][-1], piece, -1.5, 0.9 if step else 2.1, sequence=s))
                if len(ids[s]) == lengths[s]:
                    results[s] = self._end(on_event, self._done(gen, ids[s], text[s], s, count))
        return [results[s] for s in range(len(prompts))]

    @staticmethod
    def _done(gen: int, ids: list[int], text: list[str], sequence: int, count: int) -> events.Done:
        done = events.Done(
            gen, token_ids=tuple(ids), text="".join(text), prompt_tokens=12, new_tokens=len(ids),
            prefill_seconds=2.1, decode_seconds=0.9 * (len(ids) - 1), tokens_per_second=1 / 0.9,
            peak_rss=1_953_000_000, bytes_read=0, stop_reason="length" if len(ids) == count else "eos",
            passes=len(ids), sequence=sequence,
        )  # fmt: skip
        return done

    @staticmethod
    def _end(on_event: events.EventSink, result: events.Done | events.Cancelled) -> events.Done | events.Cancelled:
        on_event(result)
        return result


@dataclass
class ScriptedOpener:
    """An `Opener` that hands out one ScriptedEngine (or raises `error`), recording what it was asked. Like the
    real one it finds errors (`error`, a budget below 1000 B) before it calls `release`."""

    engine: ScriptedEngine = field(default_factory=ScriptedEngine)
    error: Exception | None = None
    calls: list[tuple[ModelSpec, EngineOptions]] = field(default_factory=list)

    def __call__(
        self,
        spec: ModelSpec,
        options: EngineOptions,
        on_event: events.EventSink,
        on_status: StatusSink,
        cancel: threading.Event,
        release: Release = lambda: None,
    ) -> ScriptedEngine:
        self.calls.append((spec, options))
        if self.error is not None:
            raise self.error
        if options.ram_budget is not None and options.ram_budget < 1000:
            raise BudgetError(f"--ram-budget {options.ram_budget} B is below the 101 MB this model needs to stream")
        release()
        on_event(events.LoadProgress(0, 0, 100, "small tensors"))
        on_event(events.LoadProgress(0, 100, 100, "done"))
        return self.engine
