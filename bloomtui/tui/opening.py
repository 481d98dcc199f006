"""Opening models for the app (a mixin of `BloomApp`): the model in use stays open until the new one has passed
the checks that need no weights, then it is closed and the new one loads in its memory.

So a mistyped folder or a budget too small shows its error and leaves the working model open and usable
(panel, sub-title and spec back to it). The open model is kept in `_kept` meanwhile; only an open worker,
under the engine lock, closes it (the opener's `release`), and only the UI thread gives it back.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from textual import work
from textual.worker import Worker, get_current_worker

from bloomtui.engine import EngineOptions, events
from bloomtui.errors import BloomtuiError, CancelRequested
from bloomtui.settings import Settings
from bloomtui.tui.engine_handle import ModelSpec, Opener
from bloomtui.tui.handle import DraftRequest, EngineHandle
from bloomtui.tui.messages import EngineFailed, EngineOpened
from bloomtui.tui.remote_state import RemoteInfo, RemoteTracker, tracker_for
from bloomtui.tui.run_state import RunTracker
from bloomtui.tui.widgets.output_view import Notice, OutputView

FIRST_FRAME_WAIT = 2.0
"""At most this many seconds an open waits for the app's first frame (it is drawn well within one)."""


@dataclass(frozen=True)
class KeptModel:
    """The model in use while another opens, with what the app showed for it."""

    handle: EngineHandle
    tracker: RunTracker | RemoteTracker
    spec: ModelSpec | None


class ModelOpening:
    # Provided by BloomApp (a Textual App).
    opener: Opener
    options: EngineOptions
    settings: Settings
    tracker: RunTracker | RemoteTracker
    spec: ModelSpec | None
    handle: EngineHandle | None
    open_request: int
    sub_title: str
    output: OutputView
    workers: object
    _cli_budget: int | None
    _cli_draft: str | None
    _cli_samples: int | None
    _told_one_sample: object
    _engine_lock: threading.Lock
    first_frame: threading.Event
    _shown_version: int
    _kept: KeptModel | None
    poll_panel: Callable[[], None]
    queued: str | None
    show_queued: Callable[[], None]
    start_queued: Callable[[], None]
    drop_queued: Callable[[str], None]
    model_hints: list[Notice]

    def open_model(self, spec: ModelSpec) -> None:
        """Cancel any run and open `spec`, with the draft model the settings name, in a worker; the model in use
        is kept until the new one is known to open (see the module docstring)."""
        spec = replace(spec, draft=self._settings_in_effect().draft_model)
        self.workers.cancel_group(self, "generate")  # type: ignore[attr-defined]
        if self.handle is not None:  # otherwise an open is under way, and it holds what was kept
            self._kept = KeptModel(self.handle, self.tracker, self.spec)
            self.handle = None
        self.spec = spec
        self.tracker, self._shown_version = tracker_for(spec.source), -1
        self.open_request += 1
        self.sub_title = spec.label
        self.tracker.loading(f"opening {spec.label}")
        if self.queued is not None:  # asked for on the model that was opening: it runs on this one instead
            self.show_queued()
            self.output.notice(f"The queued run will start on {spec.label} once it is open.")
        self._open_worker(self.open_request, spec, self._engine_options(), self.tracker)

    def _engine_options(self) -> EngineOptions:
        return replace(self.options, ram_budget=self._settings_in_effect().ram_budget)

    def _settings_in_effect(self) -> Settings:
        """The saved settings with the command line's --ram-budget, --draft and --samples laid over them."""
        settings = self.settings
        if self._cli_budget is not None:
            settings = replace(settings, ram_budget=self._cli_budget)
        if self._cli_draft is not None:
            settings = replace(settings, draft=self._cli_draft)
        if self._cli_samples is not None:
            settings = replace(settings, samples=self._cli_samples)
        return settings

    def _draft_request(self) -> DraftRequest | None:
        settings = self._settings_in_effect()
        if not settings.draft:
            return None
        spec = settings.draft_spec()
        return DraftRequest(settings.draft, spec.tokens, spec.tree)

    def _close_kept(self) -> None:
        """The opener's `release`: in the open worker, under the engine lock."""
        kept, self._kept = self._kept, None
        if kept is not None:
            kept.handle.close()
            del kept
            gc.collect()

    @work(thread=True, exclusive=True, exit_on_error=False, group="engine", description="open model")
    def _open_worker(
        self, request: int, spec: ModelSpec, options: EngineOptions, tracker: RunTracker | RemoteTracker
    ) -> None:
        worker: Worker[None] = get_current_worker()
        released = False

        def on_event(event: events.Event) -> None:
            if isinstance(event, events.LoadProgress):
                tracker.loading(f"loading {event.what}", event.done_bytes, event.total_bytes)

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._close_kept()

        def failed(title: str, message: str) -> None:
            self.post_message(EngineFailed(request, spec, title, message, released))  # type: ignore[attr-defined]

        # Opening imports torch, holding the interpreter for a good part of its seconds: the window comes first.
        self.first_frame.wait(FIRST_FRAME_WAIT)
        with self._engine_lock:  # waits for a cancelled run to let go of the engine in use
            if worker.is_cancelled:
                return
            try:
                handle = self.opener(spec, options, on_event, tracker.loading, worker.cancelled_event, release)
            except CancelRequested:
                return
            except BloomtuiError as exc:
                failed(exc.title, exc.message)
                return
            except Exception as exc:  # the app must stay usable whatever a checkpoint does to the loader
                failed("Cannot open model", f"{type(exc).__name__}: {exc}")
                return
            release()  # an opener that never called it: two models must not stay open
        if worker.is_cancelled:
            handle.close()
            return
        self.post_message(EngineOpened(request, spec, handle, handle.rss()))  # type: ignore[attr-defined]

    def on_engine_opened(self, message: EngineOpened) -> None:
        if message.request != self.open_request:
            message.handle.close()  # superseded while it loaded
            return
        self.handle = message.handle
        info = message.handle.info
        for hint in self.model_hints:  # "No model given..." no longer holds
            hint.remove()
        self.model_hints.clear()
        self.tracker.opened(info, message.rss, message.handle.baseline_rss)  # type: ignore[arg-type]
        self.sub_title = info.name
        output = self.output
        if isinstance(info, RemoteInfo):
            output.notice(f"Connected to {info.url}, serving {info.model}. Escape closes a stream mid-run.")
            if self._draft_request() is not None:
                output.notice("The draft setting applies to local models only; the server decodes alone.")
            samples = self._settings_in_effect().samples
            if samples > 1:
                output.notice(f"Samples ({samples}) apply to local models only; the server writes one continuation.")
                self._told_one_sample = message.handle
        elif info.demo:
            output.notice(
                "Demo model open: a 5M-parameter BLOOM the project trained on the Python documentation, so it "
                "writes doc-like English and knows little else; it runs the real engine, half its blocks resident "
                "and half streamed from disk. For a real model: bloomtui download bigscience/bloom-560m"
            )
        else:
            output.notice(f"{info.name} is open.")
        if self.queued is None:
            output.notice("Type a prompt below and press ctrl+j; ctrl+p has example prompts and more.")
        for field, title in (("budget_warning", "RAM budget"), ("format_warning", "Older prepared layout")):
            warning = getattr(info, field, None)  # a server has neither
            if warning:
                output.notice(warning, error=True)
                self.notify(warning, title=title, severity="warning", timeout=10)  # type: ignore[attr-defined]
        draft_error = getattr(message.handle, "draft_error", None)
        if draft_error:
            output.notice(f"{draft_error}; the model runs without a draft model.", error=True)
            self.notify(draft_error, title="Draft model not used", severity="warning", timeout=10)  # type: ignore[attr-defined]
        self.poll_panel()
        self.start_queued()

    def on_engine_failed(self, message: EngineFailed) -> None:
        if message.request != self.open_request:
            return
        self.output.notice(f"{message.title}: {message.message}", error=True)
        self.notify(message.message, title=message.title, severity="error", timeout=10)  # type: ignore[attr-defined]
        kept = self._kept
        if kept is not None and not message.released:
            # Found before anything was closed: back to the model in use, as it was.
            self._kept = None
            self.handle, self.tracker, self.spec = kept.handle, kept.tracker, kept.spec
            self._shown_version = -1
            self.sub_title = kept.handle.info.name
            self.output.notice(f"{kept.handle.info.name} stays open.")
        else:
            self.tracker.failed(message.message, keep_model=False)
            self.sub_title = f"{message.spec.label} (not open)"
        self.drop_queued(f"The queued run was dropped: {message.spec.label} did not open")
        self.poll_panel()

    def close_engine(self, timeout: float = 30.0) -> bool:
        """After an app run in a process that goes on (tests; `run_app` leaves the process instead): wait for a
        cancelled run or open to let go, then free the engine (and one kept while another opened); False on
        timeout."""
        if not self._engine_lock.acquire(timeout=timeout):
            return False
        try:
            for handle in (self.handle, self._kept.handle if self._kept else None):
                if handle is not None:
                    handle.close()
            self.handle, self._kept = None, None
        finally:
            self._engine_lock.release()
        return True
