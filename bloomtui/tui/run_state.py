"""What the engine panel shows, folded from engine events into immutable snapshots.

The engine thread calls `RunTracker.feed` for every event (hundreds a second on a small model); the UI
polls `snapshot()` a few times a second and redraws only when `version` moved (snapshot_tracker.py). Everything
shown is computed from event data, not the wall clock, so a scripted event stream gives the same picture every time.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from bloomtui.engine import events
from bloomtui.tui.memory_ceiling import run_bytes
from bloomtui.tui.sample_rates import SampleRates
from bloomtui.tui.snapshot_tracker import Live, Snapshot, SnapshotTracker, State

RUN_ALLOWANCE = 32 * 1000**2
"""RSS a run adds beyond its KV cache: torch's allocator pools, the worker thread's malloc arena, activations and
Python objects (about 20 MB measured on the demo model; on a real model, lost in the rounding of its budget)."""
ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelInfo:
    """The open model as the panel describes it."""

    name: str
    n_blocks: int
    resident_blocks: frozenset[int]
    head_resident: bool
    budget: int
    planned_bytes: int
    """Weights held resident plus stream buffers, as planned."""
    dtype: str
    layout: str
    hidden_size: int
    n_head: int
    demo: bool = False
    budget_warning: str | None = None
    """Set when the RAM budget asked for was lowered to what the machine can hold."""
    format_warning: str | None = None
    """Set when the folder's weights are in an older layout that loads more slowly."""
    draft: str = ""
    """The draft model held resident beside it ("" when none); its bytes count against the budget."""
    draft_bytes: int = 0
    vocab_size: int = 0
    """Rows of the model's head (a pass's logits are this wide); 0 when unknown, and the ceiling leaves them out."""
    draft_kv_bytes_per_token: int = 0
    """The draft model's keys and values for one position; 0 when unknown (the ceiling takes the model's)."""

    @property
    def total_budget(self) -> int:
        """The RAM budget the user set: the model's plan plus the draft."""
        return self.budget + self.draft_bytes

    @property
    def streamed_blocks(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.n_blocks) if i not in self.resident_blocks)

    @property
    def kv_bytes_per_token(self) -> int:
        """Keys and values of every block for one position, in the compute dtype."""
        return 2 * self.n_blocks * self.hidden_size * ITEMSIZE.get(self.dtype, 4)


@dataclass(frozen=True)
class PanelSnapshot(Snapshot):
    model: ModelInfo | None = None
    phase: str = ""
    block: int = -1
    """The block being read or computed (0-based), -1 between passes."""
    blocks_done: int = 0
    """Blocks finished in the current pass."""
    pass_kind: str = ""
    tokens: int = 0
    max_tokens: int = 0
    read_mbps: float | None = None
    read_history: tuple[float, ...] = ()
    rss: int | None = None
    peak_rss: int = 0
    baseline_rss: int = 0
    """RSS measured just before the model loaded: Python, torch and the UI, not the model."""
    open_rss: int = 0
    """RSS right after the model opened: the runtime, the resident weights, and what opening added (the tokenizer)."""
    prompt_tokens: int = 0
    """The run's prompt length, once known (a long prompt's prefill reports it; the end of the run does)."""
    seconds_per_token: float | None = None
    eta_pass: float | None = None
    eta_run: float | None = None
    load_done: int = 0
    load_total: int = 0
    prefill_tokens: int = 0
    """Rows of the running many-row pass (the prompt), 0 when none: the panel then shows a prefill bar."""
    prefill_done: int = 0
    prefill_total: int = 0
    draft_name: str = ""
    """What drafts this run ("" when nothing does): the panel then shows acceptance and tokens per pass."""
    draft_proposed: int = 0
    """Tokens drafted (a tree's nodes all count) and, of them, kept."""
    draft_accepted: int = 0
    draft_nodes: int = 0
    """The size of the last drafted tree (0: chains, or no tree yet)."""
    draft_tree_nodes: int = 0
    """Nodes of every tree drafted in this run (chains' tokens not counted)."""
    passes: int = 0
    """Passes over the model's weights in this run (the prefill included)."""
    sequences: int = 1
    """Samples the run writes side by side; `tokens` and `seconds_per_token` are then those of one sample."""
    sample_tokens: tuple[int, ...] = ()
    sample_rates: tuple[float | None, ...] = ()
    """Each sample's tokens/s: over its recent tokens while it runs, over its whole run once done."""
    samples_running: int = 0
    aggregate_rate: float | None = None
    """Tokens/s of all samples together (they share each pass)."""
    queued: bool = False
    """A run waits for the model to open; it starts (and this clears) when the model is open."""

    @property
    def acceptance(self) -> float | None:
        return self.draft_accepted / self.draft_proposed if self.draft_proposed else None

    @property
    def tokens_per_pass(self) -> float | None:
        return self.tokens / self.passes if self.passes else None

    @property
    def nodes_per_pass(self) -> float:
        """Tree nodes per decode pass (auto drafts chains, or nothing, on some)."""
        return self.draft_tree_nodes / max(1, self.passes - 1)


@dataclass
class _Pass:
    kind: str = ""
    done: int = 0
    seconds: float = 0.0
    """Block seconds (compute plus waiting on reads) summed over this pass so far."""


@dataclass
class _Live(Live[PanelSnapshot]):
    current: _Pass = field(default_factory=_Pass)
    block_seconds: dict[tuple[str, int], float] = field(default_factory=dict)
    samples: SampleRates | None = None
    """The samples' speeds, for a run of several."""


class RunTracker(SnapshotTracker[PanelSnapshot]):
    """Engine events folded into `PanelSnapshot`s."""

    _live: _Live

    def __init__(self) -> None:
        super().__init__(_Live(PanelSnapshot()))

    # --- model lifecycle (UI thread or open worker) ---

    def loading(self, what: str, done: int = 0, total: int = 0) -> None:
        with self._lock:
            self._set(state="loading", message=what, load_done=done, load_total=total, phase="loading")

    def opened(self, model: ModelInfo, rss: int | None, baseline_rss: int = 0) -> None:
        with self._lock:
            self._reopen()
            self._set(
                state="idle",
                model=model,
                message="",
                rss=rss,
                baseline_rss=baseline_rss,
                open_rss=rss or 0,
                phase="",
                block=-1,
                blocks_done=0,
                tokens=0,
                read_mbps=None,
                read_history=(),
                seconds_per_token=None,
                eta_pass=None,
                eta_run=None,
                load_done=0,
                load_total=0,
            )

    def queue(self, queued: bool) -> None:
        with self._lock:
            self._set(queued=queued)

    def failed(self, message: str, *, keep_model: bool = True) -> None:
        with self._lock:
            model = self._live.snap.model if keep_model else None
            self._set(state="error", message=message, phase="", block=-1, model=model)

    # --- runs ---

    def start(self, run: int, max_tokens: int, draft_name: str = "", sequences: int = 1) -> None:
        """A new run of `sequences` samples: later events of older runs are dropped from now on."""
        with self._lock:
            self._begin(run)
            live = self._live
            live.current = _Pass()
            live.samples = SampleRates(sequences) if sequences > 1 else None
            self._set(
                state="running",
                message="prefill",
                phase="",
                block=-1,
                blocks_done=0,
                pass_kind="prefill",
                prefill_tokens=0,
                prompt_tokens=0,
                tokens=0,
                max_tokens=max_tokens,
                seconds_per_token=None,
                eta_pass=None,
                eta_run=None,
                peak_rss=0,
                draft_name=draft_name,
                draft_proposed=0,
                draft_accepted=0,
                draft_nodes=0,
                draft_tree_nodes=0,
                passes=0,
                sequences=sequences,
                sample_tokens=(0,) * sequences if sequences > 1 else (),
                sample_rates=(None,) * sequences if sequences > 1 else (),
                samples_running=sequences,
                aggregate_rate=None,
            )

    def _fold(self, event: events.Event) -> None:
        if isinstance(event, events.PhaseChanged):
            self._phase(event)
        elif isinstance(event, events.BlockDone):
            self._block(event)
        elif isinstance(event, events.PrefillProgress):
            self._set(
                prefill_tokens=event.tokens,
                prompt_tokens=max(self._live.snap.prompt_tokens, event.tokens),
                prefill_done=event.done,
                prefill_total=event.total,
                eta_pass=event.eta_seconds,
                message=f"prefill · {event.tokens} tokens",
            )
        elif isinstance(event, events.TokenGenerated):
            self._token(event)
        elif isinstance(event, events.Drafted):
            # A tree proposes all its nodes (`ids` is only its likeliest line), as the engine counts.
            snap = self._live.snap
            proposed = event.nodes or len(event.ids)
            tree = {"draft_nodes": event.nodes, "draft_tree_nodes": snap.draft_tree_nodes + event.nodes}
            self._set(draft_proposed=snap.draft_proposed + proposed, **(tree if event.nodes else {}))
        elif isinstance(event, events.LoadProgress):
            self._set(state="loading", message=event.what, load_done=event.done_bytes, load_total=event.total_bytes)
        elif isinstance(event, events.Done | events.Cancelled) and self._live.samples is not None:
            self._sample_ended(self._live.samples, event)
        elif isinstance(event, events.Done):
            # The run's own rate (decode passes only) replaces the recent-token average, so the panel
            # and the output's status line agree.
            if event.tokens_per_second > 0:
                self._set(seconds_per_token=1 / event.tokens_per_second)
            if event.passes:  # the engine's own counts settle what the events added up to
                self._set(passes=event.passes, draft_proposed=event.draft_proposed, draft_accepted=event.draft_accepted)
            self._set(prompt_tokens=event.prompt_tokens)
            self._finish("done", done_message(event))
        elif isinstance(event, events.Cancelled):
            self._finish("cancelled", f"after {event.new_tokens} tokens")  # shown after "cancelled"
        elif isinstance(event, events.Error):
            self._finish("error", event.message)

    def _phase(self, event: events.PhaseChanged) -> None:
        live = self._live
        if event.phase == "sampling":
            self._set(phase="sampling", block=-1, eta_pass=0.0)
            return
        if live.current.done >= event.total:  # first event of a new pass
            live.current = _Pass(kind="decode")
        self._set(phase=event.phase, block=event.index, blocks_done=live.current.done)

    def _block(self, event: events.BlockDone) -> None:
        live, snap = self._live, self._live.snap
        if live.current.kind != event.kind or live.current.done >= event.total:
            live.current = _Pass(kind=event.kind)
        seconds = event.compute_seconds + event.wait_seconds
        live.current.done = event.index + 1
        live.current.seconds += seconds
        live.block_seconds[(event.kind, event.index)] = seconds
        changes: dict[str, object] = {}
        if not event.resident and event.read_seconds > 0:
            mbps = event.bytes / event.read_seconds / 1e6
            live.history.append(mbps)
            changes.update(read_mbps=mbps, read_history=tuple(live.history))
        eta_pass = self._eta_pass(event)
        remaining_tokens = max(0, snap.max_tokens - event.token_index - 1)
        per_token = snap.seconds_per_token or self._pass_estimate(event)
        self._set(
            block=event.index,
            blocks_done=live.current.done,
            pass_kind=event.kind,
            rss=event.rss,
            peak_rss=max(snap.peak_rss, event.rss),
            eta_pass=eta_pass,
            eta_run=eta_pass + remaining_tokens * per_token if per_token is not None else None,
            message=f"{event.kind} · token {event.token_index + 1}",
            passes=snap.passes + (event.index == 0),
            **changes,
        )

    def _eta_pass(self, event: events.BlockDone) -> float:
        """Remaining blocks of this pass, each at its time in the last pass of the same kind (or this
        pass's mean): resident and streamed blocks take very different times."""
        live = self._live
        mean = live.current.seconds / max(1, live.current.done)
        rest = range(event.index + 1, event.total)
        return sum(live.block_seconds.get((event.kind, i), mean) for i in rest)

    def _pass_estimate(self, event: events.BlockDone) -> float | None:
        """Seconds per decode pass before any decode token was timed: a sum of known decode blocks."""
        known = [live_s for (kind, _i), live_s in self._live.block_seconds.items() if kind == "decode"]
        if len(known) < event.total:
            return None
        return sum(known)

    def _token(self, event: events.TokenGenerated) -> None:
        live = self._live
        if event.index > 0:  # the prefill pass covers the whole prompt: not a per-token cost
            live.token_seconds.append(event.seconds)
        per_token = sum(live.token_seconds) / len(live.token_seconds) if live.token_seconds else None
        remaining = max(0, live.snap.max_tokens - event.index - 1)
        samples: dict[str, object] = {}
        if live.samples is not None:
            live.samples.token(event)
            samples = {"sample_tokens": tuple(live.samples.tokens), "sample_rates": live.samples.rates()}
            samples["aggregate_rate"] = live.samples.aggregate()
        self._set(
            draft_accepted=live.snap.draft_accepted + event.drafted,
            prefill_tokens=0,
            tokens=max(live.snap.tokens, event.index + 1),
            seconds_per_token=per_token if per_token is not None else live.snap.seconds_per_token,
            eta_run=remaining * per_token if per_token is not None else live.snap.eta_run,
            **samples,
        )

    def _sample_ended(self, samples: SampleRates, result: events.Done | events.Cancelled) -> None:
        """One sample of several ended; the run ends with the last."""
        samples.end(result)
        running = sum(ended is None for ended in samples.ended)
        rates = samples.rates()
        self._set(
            sample_tokens=tuple(samples.tokens),
            sample_rates=rates,
            samples_running=running,
            aggregate_rate=samples.aggregate(),
        )
        if running:
            return
        ended = [r for r in samples.ended if r is not None]
        done = [r for r in ended if isinstance(r, events.Done)]
        if len(done) < len(ended):
            self._finish("cancelled", f"after {sum(r.new_tokens for r in ended)} tokens in {len(ended)} samples")
            return
        known = [rate for rate in rates if rate]
        self._set(
            passes=max(r.passes for r in done),
            draft_proposed=sum(r.draft_proposed for r in done),
            draft_accepted=sum(r.draft_accepted for r in done),
            prompt_tokens=done[0].prompt_tokens,
            seconds_per_token=len(known) / sum(known) if known else self._live.snap.seconds_per_token,
        )
        self._finish("done", samples_message(done))

    def _finish(self, state: State, message: str) -> None:
        self._set(state=state, message=message, phase="", block=-1, eta_pass=None, eta_run=None, prefill_tokens=0)


STOP_REASONS = {"eos": "end of text", "stop": "stop string", "length": "token limit"}


def done_message(done: events.Done, note: str = "") -> str:
    """The count and why the run stopped; `note` (how a server's count was found) follows the count."""
    return f"{done.new_tokens} tokens{note} · {STOP_REASONS.get(done.stop_reason, done.stop_reason)}"


def samples_message(done: list[events.Done]) -> str:
    return f"{len(done)} samples · {sum(r.new_tokens for r in done)} tokens"


def run_status(result: events.Done | events.Cancelled) -> tuple[str, str]:
    """(outcome, status line) of a run, or of one sample of a run, as the output shows it when it ends."""
    if isinstance(result, events.Done):
        rate = f" · {result.tokens_per_second:.1f} tok/s" if result.tokens_per_second else ""
        return "done", f"done · {done_message(result)}{rate}"
    return "cancelled", f"cancelled after {result.new_tokens} tokens"


@dataclass(frozen=True)
class MemoryCeiling:
    """The RSS the process can be expected to reach, in the three parts the panel names."""

    runtime: int
    """What is not the model: RSS before the load, or more where opening added more than the budget covers."""
    budget: int
    run: int
    """RUN_ALLOWANCE and what memory_ceiling.run_bytes counts: the run's KV caches (one per sample, the draft's
    too), its logits and its prefill's work."""

    @property
    def total(self) -> int:
        return self.runtime + self.budget + self.run


def memory_ceiling(snap: PanelSnapshot) -> MemoryCeiling | None:
    """None until a model with a budget is open. While nothing runs the ceiling is never below the RSS: an idle
    process holds what it was expected to hold, so only a running one can be over."""
    model = snap.model
    if model is None or not model.total_budget:
        return None
    budget = model.total_budget
    run = RUN_ALLOWANCE + run_bytes(snap)
    ceiling = MemoryCeiling(max(snap.baseline_rss, snap.open_rss - budget), budget, run)
    if snap.state != "running" and snap.rss is not None and snap.rss > ceiling.total:
        ceiling = replace(ceiling, runtime=snap.rss - budget - run)
    return ceiling
