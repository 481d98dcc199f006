"""Runs for the app (a mixin of `BloomApp`): submit a prompt, generate in a worker, show its text, end or cancel it.

The worker never touches a widget: panel status goes into the run's tracker, text into `PendingText`, and the
app's tick (`show_pending`) moves the text to the output pane a few times a second in one append. Each run is
numbered, so that late events of a cancelled run are ignored.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from textual import work
from textual.worker import Worker, WorkerState, get_current_worker

from bloomtui.engine import SamplingParams, events
from bloomtui.errors import BloomtuiError, UsageError
from bloomtui.settings import Settings
from bloomtui.tui.engine_handle import DraftRequest, EngineHandle
from bloomtui.tui.history import remember
from bloomtui.tui.messages import RunEnded
from bloomtui.tui.pending_text import PendingText
from bloomtui.tui.remote_state import RemoteTracker
from bloomtui.tui.run_state import RunTracker, done_message
from bloomtui.tui.widgets.output_view import OutputView
from bloomtui.tui.widgets.prompt_editor import PromptEditor


class RunControl:
    # Provided by BloomApp (a Textual App).
    settings: Settings
    history: list[str]
    tracker: RunTracker | RemoteTracker
    handle: EngineHandle | None
    run_number: int
    running: bool
    pending: PendingText
    output: OutputView
    editor: PromptEditor
    _engine_lock: threading.Lock
    poll_panel: Callable[[], None]
    _save_history: Callable[[], None]
    _draft_request: Callable[[], DraftRequest | None]

    def action_submit(self) -> None:
        prompt = self.editor.text
        notify = self.notify  # type: ignore[attr-defined]
        if self.running:
            notify("A run is in progress: escape cancels it.", severity="warning")
            return
        if not prompt.strip():
            notify("Type a prompt first.", severity="warning")
            return
        if self.handle is None:
            if self.tracker.snapshot().state == "loading":
                notify("The model is still opening.", severity="warning")
            else:
                notify("No model is open: ctrl+o opens one (the demo model works offline).", severity="warning")
            return
        try:
            params = self.settings.sampling_params(getattr(self.handle, "generation_defaults", None))
        except UsageError as exc:
            notify(exc.message, title="Settings", severity="error")
            return
        remember(self.history, prompt)
        self._save_history()
        self.run_number += 1
        self.running = True
        self.refresh_bindings()  # type: ignore[attr-defined]
        draft = self._draft_request()
        self.tracker.start(self.run_number, params.max_new_tokens, self.handle.draft_name(draft) or "")
        self.output.start_run(self.run_number, prompt, self.handle.info.name)
        self.editor.set_prompt("")
        self._generate(self.run_number, prompt, params, self.handle, draft, self.tracker)
        self.poll_panel()

    @work(thread=True, exclusive=True, exit_on_error=False, group="generate", description="generate")
    def _generate(
        self,
        run: int,
        prompt: str,
        params: SamplingParams,
        handle: EngineHandle,
        draft: DraftRequest | None,
        tracker: RunTracker | RemoteTracker,
    ) -> None:
        worker: Worker[None] = get_current_worker()
        pending = self.pending

        def sink(event: events.Event) -> None:
            tracker.feed(run, event)
            if isinstance(event, events.TokenGenerated):
                if event.text:
                    pending.add(run, event.text)
            elif isinstance(event, events.Drafted):
                pending.add(run, event.text, guess=True)

        post = self.post_message  # type: ignore[attr-defined]
        with self._engine_lock:
            if worker.is_cancelled:  # cancelled (or the model replaced) before it started
                result: events.Done | events.Cancelled = events.Cancelled(0, (), "", 0)
                sink(result)
                post(RunEnded(run, result))
                return
            try:
                result = handle.generate(prompt, params, sink, worker.cancelled_event, draft)
            except BloomtuiError as exc:
                post(RunEnded(run, None, exc.message, exc.title))
                return
            except Exception as exc:  # a bug or a broken shard mid-run: report it, keep the app alive
                message = f"{type(exc).__name__}: {exc}"
                tracker.feed(run, events.Error(0, message))
                post(RunEnded(run, None, message, "Engine failure"))
                return
        post(RunEnded(run, result))

    def show_pending(self) -> None:
        """Move the text the engine made since the last call to the output pane, in one append."""
        pieces = self.pending.take()
        if self.running:
            current = [piece for piece in pieces if piece.run == self.run_number]
            if current:
                self.output.show(self.run_number, current)

    def on_run_ended(self, message: RunEnded) -> None:
        if message.run != self.run_number:
            return  # a run the user already moved on from
        self.show_pending()  # the run's last pieces were added before this message was posted
        self.running = False
        self.refresh_bindings()  # type: ignore[attr-defined]
        result = message.result
        if isinstance(result, events.Done):
            rate = f" · {result.tokens_per_second:.1f} tok/s" if result.tokens_per_second else ""
            self.output.finish(message.run, "done", f"done · {done_message(result)}{rate}")
        elif isinstance(result, events.Cancelled):
            self.output.finish(message.run, "cancelled", f"cancelled after {result.new_tokens} tokens")
        else:
            self.output.finish(message.run, "error", f"error: {message.error}")
            self.notify(message.error or "unknown error", title=message.title, severity="error", timeout=10)  # type: ignore[attr-defined]
        self.poll_panel()

    def action_cancel(self) -> None:
        if self.running:
            self.workers.cancel_group(self, "generate")  # type: ignore[attr-defined]
            remote = isinstance(self.tracker, RemoteTracker)
            what = "closing the stream" if remote else "the engine stops after the current block"
            self.notify(f"Cancelling: {what}.", timeout=2)  # type: ignore[attr-defined]

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        # Workers report their own failures as messages; this catches anything that escaped them.
        if event.state == WorkerState.ERROR:
            error = event.worker.error
            self.notify(f"{type(error).__name__}: {error}", title="Internal error", severity="error")  # type: ignore[attr-defined]
            if event.worker.group == "generate" and self.running:
                self.running = False
                self.output.finish(self.run_number, "error", f"error: {error}")
