"""The app's view of an engine: open a model (or the built-in demo) and describe it for the panel.

The app talks to an `EngineHandle` (handle.py), not to `Engine`, so tests and snapshots can swap in a scripted engine.
Everything here runs in a worker thread: opening reads weights.

The engine's modules (torch: seconds to import) load only here, inside the functions that open a
model, so the app's window comes first; `import_engine` brings them in ahead, on a thread the app starts.

An opener first checks what it can without reading weights (the folder or cached repo, its config and layout, a
budget the model can stream under) and only then calls `release`: there the app closes the model in use, whose
memory the new one needs. So a mistyped folder fails while the working model is still open, and stays open.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from bloomtui.engine import DraftSpec, EngineOptions, events
from bloomtui.engine.decode.draft_spec import PROMPT_LOOKUP
from bloomtui.errors import BloomtuiError
from bloomtui.tui.handle import Batch, DraftRequest, EngineHandle, Results
from bloomtui.tui.run_state import ModelInfo

if TYPE_CHECKING:
    from bloomtui.engine.generate import Engine

"""The shipped model the demo opens (bloomtui/demo_models): 8 blocks, trained on the Python docs."""
DEMO_LABEL = "demo model (small, trained on Python docs)"
DEMO_THREADS = 1
"""torch threads for the demo in the app when --threads is not given. Its matrices (hidden 192) are too small to
gain from a second thread (CLI, 300 tokens: 119-134 tok/s on one, 109-130 on two), and on a 2-core machine the
second core is the UI thread's: beside it, two torch threads stall at every parallel region whenever the UI
runs (app: 71-87 tok/s with two threads, 87-112 with one)."""

StatusSink = Callable[[str], None]


@dataclass(frozen=True)
class ModelSpec:
    """What to open: a folder or cached repo id, or the built-in demo; and a draft model to open beside it."""

    source: str | None = None
    demo: bool = False
    draft: str = ""
    """A draft model (folder, cached repo id, or the shipped "trained-draft") held resident for speculative
    decoding; "" for none. Prompt lookup needs no model, so it is not part of what is opened."""

    @property
    def label(self) -> str:
        return DEMO_LABEL if self.demo else str(self.source)


DEMO = ModelSpec(demo=True)


Release = Callable[[], None]
"""Called by an opener once `spec` passed the checks that need no weights, before it loads any."""
Opener = Callable[[ModelSpec, EngineOptions, events.EventSink, StatusSink, threading.Event, Release], EngineHandle]


class RealEngine(EngineHandle):
    """An open `Engine` plus what the panel shows about it."""

    multi_sequence = True

    def __init__(
        self,
        engine: Engine,
        spec: ModelSpec,
        baseline_rss: int,
        draft: Engine | None = None,
        draft_error: str | None = None,
    ) -> None:
        self.engine = engine
        self.baseline_rss = baseline_rss
        self.draft = draft
        """The resident draft model opened for `spec.draft`, if any."""
        self.draft_error = draft_error
        """Why spec.draft could not be used (the model opened without it)."""
        self.generation_defaults = engine.model_plan.generation
        """The model's recommended decoding (generation_config.json), for settings left blank."""
        plan, ckpt = engine.model_plan.plan, engine.model_plan.checkpoint
        self.info = ModelInfo(
            name=DEMO_LABEL if spec.demo else _short_name(spec.source or str(ckpt.folder)),
            n_blocks=plan.n_blocks,
            resident_blocks=plan.resident_blocks,
            head_resident=plan.head_resident,
            budget=plan.budget,
            planned_bytes=plan.total_bytes,
            dtype=str(engine.dtype).removeprefix("torch."),
            layout=ckpt.layout,
            hidden_size=engine.config.hidden_size,
            n_head=engine.config.n_head,
            vocab_size=engine.config.vocab_size,
            draft_kv_bytes_per_token=draft.kv_bytes(1) if draft is not None else 0,
            demo=spec.demo,
            budget_warning=engine.model_plan.budget_warning,
            format_warning=engine.model_plan.format_warning,
            draft=_short_name(spec.draft) if draft is not None else "",
            draft_bytes=draft.model_plan.plan.total_bytes if draft is not None else 0,
        )

    def _run(self, batch: Batch) -> Results:
        return self.engine.generate_many(
            batch.prompts, batch.params, batch.on_event, batch.cancel, self._draft_spec(batch.draft)
        )

    def _draft_spec(self, draft: DraftRequest | None) -> DraftSpec | None:
        if draft is None:
            return None
        if draft.source == PROMPT_LOOKUP:
            return DraftSpec(None, draft.tokens, draft.tree)
        return DraftSpec(self.draft, draft.tokens, draft.tree) if self.draft is not None else None

    def draft_name(self, draft: DraftRequest | None) -> str | None:
        spec = self._draft_spec(draft)
        if spec is None or draft is None:
            return None
        name = "prompt lookup" if spec.model is None else _short_name(draft.source)
        return f"{name} · tree {spec.tree}" if spec.trees else name

    def close(self) -> None:
        self.engine.close()
        if self.draft is not None:
            self.draft.close()


_import_lock = threading.Lock()


def import_engine() -> None:
    """Import what opening a model imports anyway: the engine with torch, and the tokenizer library, so the RSS
    measured after this is the runtime baseline the panel sets the model's memory against.

    One thread at a time: the app's early import and an open worker would otherwise import the same circular
    packages from two threads, where Python may hand one of them a module still half initialized."""
    with _import_lock:
        import tokenizers  # noqa: F401

        import bloomtui.engine.decode.drafting
        import bloomtui.engine.generate
        import bloomtui.engine.plan.residency  # noqa: F401


def _short_name(source: str) -> str:
    path = Path(source)
    # A cached repo id reads better than its snapshot hash folder; a folder is known by its name.
    return source if not path.exists() else path.resolve().name


def open_engine(
    spec: ModelSpec,
    options: EngineOptions,
    on_event: events.EventSink,
    on_status: StatusSink,
    cancel: threading.Event,
    release: Release = lambda: None,
) -> EngineHandle:
    """Open `spec` and its draft model, if any. Raises BloomtuiError when the model cannot open (before
    `release` where the checks without weights find why); a draft that cannot be used leaves the model open
    without it (`draft_error` says why)."""
    import_engine()  # usually done already: the app starts it with its window
    from bloomtui.engine.decode.drafting import budget_after_draft, check_same_tokenizer, open_draft
    from bloomtui.engine.generate import Engine

    if options.threads is None and spec.demo:  # other models follow the load (the engine's cpu_share.py)
        options = replace(options, threads=DEMO_THREADS)
    if spec.demo:
        path = ensure_demo_model(on_status)  # its config.json asks for float32 compute, as wherever it opens
    else:
        path = Path(spec.source or ".")
        on_status(f"opening {spec.label}")
        check_openable(spec.source or ".", options)
    release()
    baseline = psutil.Process().memory_info().rss
    draft, draft_error = None, None
    if spec.draft:
        on_status(f"opening the draft model {_short_name(spec.draft)}")
        try:
            draft = open_draft(spec.draft, options)
            options = budget_after_draft(options, draft.model_plan)  # the draft's bytes count against a given budget
        except BloomtuiError as exc:
            draft, draft_error = _close(draft), f"draft {spec.draft}: {exc.message}"
    if spec.demo and options.ram_budget is None:
        options = replace(options, ram_budget=half_streaming_budget(path, options))
    try:
        engine = Engine.open(spec.source if not spec.demo else path, options, on_event=on_event, cancel=cancel)
    except BaseException:
        _close(draft)
        raise
    if draft is not None:
        try:
            check_same_tokenizer(engine, draft)
        except BloomtuiError as exc:
            draft, draft_error = _close(draft), f"draft {spec.draft}: {exc.message}"
    return RealEngine(engine, spec, baseline, draft, draft_error)


def check_openable(source: str, options: EngineOptions) -> None:
    """Raise what opening `source` would raise before reading weights: no such folder or cached repo, a broken
    config or layout, a RAM budget it cannot stream under. The automatic budget is checked as the most this
    machine can hold: it is measured against the memory available after the model in use is closed."""
    from bloomtui.engine.plan.model_plan import plan_model

    budget = options.ram_budget if options.ram_budget is not None else 1 << 50
    plan_model(source, replace(options, ram_budget=budget))


def _close(engine: Engine | None) -> None:
    if engine is not None:
        engine.close()


def ensure_demo_model(on_status: StatusSink = lambda _s: None) -> Path:
    """The demo checkpoint: shipped inside the package and opened in place, so nothing is written."""
    from bloomtui import demo_models

    on_status("opening the demo model (small, trained on the Python docs)")
    return demo_models.path(demo_models.DEMO)


def half_streaming_budget(path: Path, options: EngineOptions) -> int:
    """A budget that keeps about half the blocks resident and streams the rest, so the demo shows both. The LM
    head is streamed too when it outweighs a block (the trained demo's 8192-row head is 3.5 blocks): a plan that
    keeps it would hold every block instead."""
    from bloomtui.engine.plan.model_plan import plan_model
    from bloomtui.engine.plan.residency import STREAM_SLOTS, budget_for

    mp = plan_model(path, replace(options, ram_budget=1 << 50))
    n = mp.plan.n_blocks
    keep_head = mp.plan.head_bytes <= mp.plan.block_bytes
    blocks = max(0, min(n // 2, n - STREAM_SLOTS - 1))
    return budget_for(mp.checkpoint, mp.dtype.itemsize, resident_blocks=blocks, head_resident=keep_head)
