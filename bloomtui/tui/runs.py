"""Runs for the app (a mixin of `BloomApp`): submit a prompt, generate in a worker, show its text, end or cancel it.

The worker never touches a widget: panel status goes into the run's tracker, text into `PendingText`, and the
app's tick (`show_pending`) moves the text to the output pane a few times a second in one append. Each run is
numbered, so that late events of a cancelled run are ignored.

With the Samples setting above 1, a run writes that many samples of the prompt side by side in shared passes
(`generate_many`; seed S+i for sample i). Once it has ended, keys 1..N (while the prompt editor is empty) or a
click pick one: the prompt and that sample go into the editor, so the next run continues it. A server writes one
continuation per request: there the run has one sample, and the app says why once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace

from textual import work
from textual.widgets import Input, TextArea
from textual.worker import Worker, WorkerState, get_current_worker

from bloomtui.engine import events
from bloomtui.engine.decode.draft_spec import AUTO, seeded_sampling
from bloomtui.engine.sampling_params import SamplingParams, sample_params
from bloomtui.errors import BloomtuiError, UsageError
from bloomtui.settings import Settings
from bloomtui.tui.handle import DraftRequest, EngineHandle
from bloomtui.tui.history import remember
from bloomtui.tui.messages import LongPromptWarned, RunEnded
from bloomtui.tui.pending_text import PendingText
from bloomtui.tui.remote_state import RemoteTracker
from bloomtui.tui.run_state import RunTracker, run_status
from bloomtui.tui.sample_rates import aggregate_rate
from bloomtui.tui.widgets.output_view import Notice, OutputView
from bloomtui.tui.widgets.prompt_editor import PromptEditor
from bloomtui.tui.widgets.samples_view import SamplesView

QUEUED = "Queued: the run starts when the model is open"
QUEUED_PREVIEW = 60
"""Characters of the queued prompt's first line its notice shows."""


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
    _settings_in_effect: Callable[[], Settings]
    _told_one_sample: object
    """The handle the app last said runs one sample (a server), so it says so once per connection."""
    queued: str | None
    """The prompt of a run asked for while the model opens: it starts when the model is open."""
    _queued_notice: Notice | None

    def action_submit(self) -> None:
        # ctrl+j is the app's (a priority binding): keys typed just before it may still wait in the editor's
        # queue, most of all while torch imports on another thread, and the prompt would lose its end. The
        # editor reads its text once it has handled them.
        self.editor.call_later(self._submit)

    def _submit(self) -> None:
        prompt = self.editor.text
        notify = self.notify  # type: ignore[attr-defined]
        if self.running or self.queued is not None:
            notify(f"A run is {'in progress' if self.running else 'queued'}: escape cancels it.", severity="warning")
            return
        if not prompt.strip():
            notify("Type a prompt first.", severity="warning")
            return
        if self.handle is None:
            if self.tracker.snapshot().state == "loading":
                self._queue(prompt)
            else:
                notify("No model is open: ctrl+o opens one (the demo model works offline).", severity="warning")
            return
        if self._start(prompt):
            self.editor.set_prompt("")

    def _start(self, prompt: str) -> bool:
        """Run `prompt` on the open model; False when the settings do not give valid parameters for it. The
        editor is the caller's: a queued run starts while the user may be typing the next prompt."""
        assert self.handle is not None
        notify = self.notify  # type: ignore[attr-defined]
        settings = self._settings_in_effect()
        if settings.samples > 1 and not getattr(self.handle, "multi_sequence", False):
            if self._told_one_sample is not self.handle:
                self._told_one_sample = self.handle
                notify(f"Samples ({settings.samples}) apply to local models: a server writes one continuation.")
            settings = replace(settings, samples=1)
        try:
            params = settings.sampling_params(getattr(self.handle, "generation_defaults", None))
        except UsageError as exc:
            notify(exc.message, title="Settings", severity="error")
            return False
        remember(self.history, prompt)
        self._save_history()
        self.run_number += 1
        self.running = True
        self.refresh_bindings()  # type: ignore[attr-defined]
        draft = self._draft_request()
        if draft is not None and draft.tree == AUTO and seeded_sampling(params):
            draft = replace(draft, tree=None)  # chains, as the engine would draft them: the panel says so
        n = settings.samples
        self.tracker.start(self.run_number, params.max_new_tokens, self.handle.draft_name(draft) or "", n)
        if n > 1:
            self.output.start_samples(self.run_number, prompt, self.handle.info.name, n)
        else:
            self.output.start_run(self.run_number, prompt, self.handle.info.name)
        self._generate(self.run_number, prompt, sample_params(params, n), self.handle, draft, self.tracker)
        self.poll_panel()
        return True

    # --- a run asked for while the model opens ---

    def _queue(self, prompt: str) -> None:
        """Keep `prompt` until the model is open (loading a big model's resident set takes minutes)."""
        remember(self.history, prompt)
        self._save_history()
        self.queued = prompt
        self.editor.set_prompt("")
        first = prompt.strip().splitlines()[0]
        preview = first if len(first) <= QUEUED_PREVIEW else first[: QUEUED_PREVIEW - 1] + "…"
        self._queued_notice = self.output.notice(f"{QUEUED}; escape cancels it. Prompt: {preview}")
        self.show_queued()

    def show_queued(self) -> None:
        """Put the queued state in the panel (a new open's tracker starts without it)."""
        if isinstance(self.tracker, RunTracker):  # a server connects in a moment: its panel has no such line
            self.tracker.queue(self.queued is not None)
        self.refresh_bindings()  # type: ignore[attr-defined]
        self.poll_panel()

    def _take_queued(self) -> str | None:
        prompt, self.queued = self.queued, None
        if self._queued_notice is not None:
            self._queued_notice.remove()
            self._queued_notice = None
        if prompt is not None:
            self.show_queued()
        return prompt

    def start_queued(self) -> None:
        """The model is open: run what was queued (settings this model cannot use drop it, as a submit would)."""
        prompt = self._take_queued()
        if prompt is not None and not self._start(prompt):
            self._give_back(prompt, "The queued run did not start")

    def drop_queued(self, why: str) -> None:
        """Forget the queued run, saying `why` (cancelled, the model did not open)."""
        prompt = self._take_queued()
        if prompt is not None:
            self._give_back(prompt, why)

    def _give_back(self, prompt: str, why: str) -> None:
        # The prompt goes back where it was typed, unless something new is there (then ↑ recalls it).
        if self.editor.text.strip():
            self.output.notice(f"{why}; ↑ in the prompt recalls it.")
        else:
            self.editor.set_prompt(prompt)
            self.output.notice(f"{why}; its prompt is back in the editor.")

    @work(thread=True, exclusive=True, exit_on_error=False, group="generate", description="generate")
    def _generate(
        self,
        run: int,
        prompt: str,
        params: list[SamplingParams],
        handle: EngineHandle,
        draft: DraftRequest | None,
        tracker: RunTracker | RemoteTracker,
    ) -> None:
        """`prompt` once per entry of `params` (samples side by side when there are several)."""
        worker: Worker[None] = get_current_worker()
        pending = self.pending
        many = len(params) > 1
        post = self.post_message  # type: ignore[attr-defined]

        def sink(event: events.Event) -> None:
            tracker.feed(run, event)
            if isinstance(event, events.TokenGenerated):
                if event.text:
                    pending.add(run, event.text, sequence=event.sequence)
            elif isinstance(event, events.Drafted):
                pending.add(run, event.text, guess=True, sequence=event.sequence)
            elif many and isinstance(event, events.Done | events.Cancelled):
                pending.end(run, event)  # its pane says so while the other samples go on
            elif isinstance(event, events.LongPrompt):
                post(LongPromptWarned(run, event.message))

        with self._engine_lock:
            if worker.is_cancelled:  # cancelled (or the model replaced) before it started
                results: list[events.Done | events.Cancelled] = [
                    events.Cancelled(0, (), "", 0, sequence=i) for i in range(len(params))
                ]
                for result in results:
                    sink(result)
                post(RunEnded(run, results))
                return
            try:
                if many:
                    results = handle.generate_many([prompt] * len(params), params, sink, worker.cancelled_event, draft)
                else:
                    results = [handle.generate(prompt, params[0], sink, worker.cancelled_event, draft)]
            except BloomtuiError as exc:
                post(RunEnded(run, None, exc.message, exc.title))
                return
            except Exception as exc:  # a bug or a broken shard mid-run: report it, keep the app alive
                message = f"{type(exc).__name__}: {exc}"
                tracker.feed(run, events.Error(0, message))
                post(RunEnded(run, None, message, "Engine failure"))
                return
        post(RunEnded(run, results))

    def show_pending(self) -> None:
        """Move the text the engine made since the last call to the output pane, in one append."""
        pieces = self.pending.take()
        if self.running:
            current = [piece for piece in pieces if piece.run == self.run_number]
            if current:
                self.output.show(self.run_number, current)

    def on_long_prompt_warned(self, message: LongPromptWarned) -> None:
        """Said above the run's output (it still runs: ALiBi has no hard limit), and in a toast."""
        view = self.output.runs.get(message.run)
        if view is None or message.run != self.run_number:
            return
        text = message.text[:1].upper() + message.text[1:]
        self.output.mount(Notice(text, markup=False), before=view)
        self.notify(text, title="Long prompt", severity="warning", timeout=10)  # type: ignore[attr-defined]

    def on_run_ended(self, message: RunEnded) -> None:
        if message.run != self.run_number:
            return  # a run the user already moved on from
        self.show_pending()  # the run's last pieces were added before this message was posted
        self.running = False
        self.refresh_bindings()  # type: ignore[attr-defined]
        results = message.results
        if results is None:
            self.output.finish(message.run, "error", f"error: {message.error}")
            self.notify(message.error or "unknown error", title=message.title, severity="error", timeout=10)  # type: ignore[attr-defined]
        elif len(results) == 1:
            self.output.finish(message.run, *run_status(results[0]))
        else:
            for i, result in enumerate(results):
                self.output.finish_sample(message.run, i, *run_status(result))
            self.output.finish(message.run, *samples_status(results))
        self.poll_panel()

    # --- picking a sample ---

    def can_pick(self, number: int) -> bool:
        """Whether key `number` picks a sample now: the last run wrote that many or more and has ended, and the
        key would not type into a prompt or field that has text (the editor empty, or focus elsewhere)."""
        view = self.output.latest_samples
        if view is None or view.running or not 1 <= number <= view.samples.count:
            return False
        focused = self.focused  # type: ignore[attr-defined]
        if isinstance(focused, TextArea):
            return not focused.text
        return not (isinstance(focused, Input) and focused.value)

    def action_pick(self, number: int) -> None:
        self.pick_sample(number - 1)

    def pick_sample(self, index: int) -> None:
        view = self.output.latest_samples
        if view is None or not 0 <= index < view.samples.count:
            return
        if view.running:
            self.notify("Pick a sample once the run has ended (escape ends it now).", severity="warning")  # type: ignore[attr-defined]
            return
        exchange = view.pick(index)
        self.editor.set_prompt(exchange.prompt + exchange.text)
        self.editor.focus()

    def on_samples_view_picked(self, message: SamplesView.Picked) -> None:
        if message.control is self.output.latest_samples:
            self.pick_sample(message.index)
        else:
            self.notify("Only the last run's samples can be picked.", severity="warning")  # type: ignore[attr-defined]

    def action_cancel(self) -> None:
        if self.queued is not None:
            self.drop_queued("The queued run was cancelled")
        elif self.running:
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


def samples_status(results: list[events.Done | events.Cancelled]) -> tuple[str, str]:
    """(outcome, status line) of a run of several samples: done when every sample is, with their rate together."""
    tokens = sum(result.new_tokens for result in results)
    if not all(isinstance(result, events.Done) for result in results):
        return "cancelled", f"cancelled after {tokens} tokens in {len(results)} samples"
    rate = aggregate_rate(results)
    together = f" · {rate:.1f} tok/s in all" if rate else ""
    return "done", f"done · {len(results)} samples · {tokens} tokens{together}"
