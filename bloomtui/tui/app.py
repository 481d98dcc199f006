"""The Textual app: bindings, and the coordination between widgets and the engine workers.

Engine work runs in thread workers that never touch widgets: tokens arrive as `TokenArrived` messages,
panel status is folded into a `RunTracker` the app polls at 8 Hz, and each run is numbered so that
late events of a cancelled run are ignored.

Faults end the app cleanly: termination signals cancel the run, save history and exit through Textual,
which restores the terminal (signals.py); an unhandled exception leaves a crash log (crash_log.py).
Below PANEL_SIDE_MIN_WIDTH columns the panel folds into a one-line status that f4 opens below the output.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.theme import Theme
from textual.widgets import Footer, Header
from textual.worker import Worker, WorkerState, get_current_worker

from bloomtui import locations
from bloomtui.cached_models import CachedModel, find_cached_blooms
from bloomtui.engine import EngineOptions, SamplingParams, events
from bloomtui.errors import BloomtuiError, CancelRequested, UsageError
from bloomtui.remote.connection import RemoteOptions
from bloomtui.settings import Settings, load_settings, save_settings
from bloomtui.tui import signals
from bloomtui.tui.commands import palette_commands
from bloomtui.tui.crash_log import crash_message, write_crash_log
from bloomtui.tui.engine_handle import DEMO, DraftRequest, EngineHandle, ModelSpec, Opener, open_engine
from bloomtui.tui.history import load_history, remember, save_history
from bloomtui.tui.messages import DraftArrived, EngineFailed, EngineOpened, RunEnded, TokenArrived
from bloomtui.tui.remote_handle import with_remote
from bloomtui.tui.remote_state import RemoteInfo, RemoteSnapshot, RemoteTracker, tracker_for
from bloomtui.tui.run_state import RunTracker
from bloomtui.tui.screens.model_picker import ModelPickerScreen
from bloomtui.tui.screens.settings import SettingsScreen
from bloomtui.tui.transcript import save_transcript
from bloomtui.tui.widgets.engine_panel import EnginePanel
from bloomtui.tui.widgets.output_view import OutputView
from bloomtui.tui.widgets.prompt_editor import PromptEditor
from bloomtui.tui.widgets.remote_panel import RemotePanel
from bloomtui.tui.widgets.status_line import StatusLine

DEMO_ARG = "@demo"
"""A model argument that opens the built-in demo model directly."""
POLL_SECONDS = 1 / 8
PANEL_SIDE_MIN_WIDTH = 100
"""Below this many columns the 46-column panel would squeeze the output: it folds into a status line."""
SHORT_HEIGHT = 20
"""Below this many rows the prompt editor shrinks so the output keeps some lines."""
SIGNAL_EXIT_WAIT = 1.0
"""After a termination signal, how long to wait for a cancelled run to let go of the engine."""


class BloomApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "bloomtui"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (PANEL_SIDE_MIN_WIDTH, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (SHORT_HEIGHT, "-tall")]
    BINDINGS = [
        Binding("ctrl+j,ctrl+enter", "submit", "Run", id="submit", priority=True),
        Binding("escape", "cancel", "Cancel", id="cancel"),
        Binding("f2", "settings", "Settings", id="settings"),
        Binding("ctrl+o", "open_model", "Model", id="open_model"),
        Binding("ctrl+s", "save_transcript", "Save", id="save_transcript"),
        Binding("f4", "toggle_panel", "Panel", id="toggle_panel"),
        Binding("f3", "copy_output", "Copy", id="copy_output", show=False),
        Binding("ctrl+l", "clear", "Clear", id="clear", show=False),
        Binding("ctrl+q", "quit", "Quit", id="quit", priority=True),
    ]

    def __init__(
        self,
        model: ModelSpec | None = None,
        options: EngineOptions = EngineOptions(),  # noqa: B008 - frozen
        *,
        opener: Opener = open_engine,
        find_models: Callable[[], list[CachedModel]] = find_cached_blooms,
        cursor_blink: bool = True,
        remote: RemoteOptions = RemoteOptions(),  # noqa: B008 - frozen
        draft: str | None = None,
    ) -> None:
        super().__init__()
        self.initial_model = model
        self.options = options
        self.opener = with_remote(opener, remote)
        """Opens a server URL as a RemoteHandle, anything else with `opener`."""
        self.find_models = find_models
        self.cursor_blink = cursor_blink
        self.settings, self._settings_warning = load_settings()
        self.history = load_history(locations.history_file())
        self.tracker: RunTracker | RemoteTracker = RunTracker()
        """Replaced on each open: a server gets a RemoteTracker, shown by the RemotePanel."""
        self.spec: ModelSpec | None = None
        """The model last asked for (open, loading or failed): a budget change reopens it."""
        self.handle: EngineHandle | None = None
        """The open engine; only the UI thread assigns it."""
        self.run_number = 0
        self.open_request = 0
        self.running = False
        self._cli_budget = options.ram_budget
        """--ram-budget wins over the saved setting until the user changes the budget in the dialog."""
        self._cli_draft = draft
        """--draft, likewise, over the saved draft."""
        self._engine_lock = threading.Lock()
        """Held while a worker uses or replaces an engine: closing never races a generation."""
        self._shown_version = -1
        self.exit_signal: int | None = None
        """The termination signal that ended the app, if one did."""
        self.crash_log: Path | None = None
        self.crash: BaseException | None = None
        self._undo_signals: Callable[[], None] | None = None

    # --- layout ---

    def compose(self) -> ComposeResult:
        yield Header(icon="✿")
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield OutputView(id="output")
                yield StatusLine("f4", id="status-line")
                yield PromptEditor(self.history, id="prompt")
            yield EnginePanel(id="panel")
            yield RemotePanel(id="remote-panel")
        yield Footer()

    @property
    def output(self) -> OutputView:
        return self.query_one(OutputView)

    @property
    def editor(self) -> PromptEditor:
        return self.query_one(PromptEditor)

    def on_mount(self) -> None:
        if self.settings.theme in self.available_themes:
            self.theme = self.settings.theme
        self.theme_changed_signal.subscribe(self, self._theme_changed)
        self.editor.cursor_blink = self.cursor_blink
        self.editor.focus()
        self.query_one("#output").border_title = "Output"
        self.query_one("#prompt").border_title = "Prompt"
        self.set_interval(POLL_SECONDS, self.poll_panel)
        if not self.is_headless:  # tests drive the app headless, and keep the test runner's own handlers
            self._undo_signals = signals.install(self._exit_on_signal)
        if self._settings_warning:
            self.notify(self._settings_warning, title="Settings", severity="warning")
        if self.initial_model is not None:
            self.open_model(self.initial_model)
        else:
            self.output.notice(
                "No model given. Choose one, or try the built-in demo model (small, trained on the Python docs)."
            )
            self.push_screen(ModelPickerScreen(self.find_models()), self._model_picked)

    def poll_panel(self) -> None:
        snapshot = self.tracker.snapshot()
        if snapshot.version != self._shown_version:
            self._shown_version = snapshot.version
            remote = isinstance(snapshot, RemoteSnapshot)
            # A class, not inline display: the small-terminal fold (app.tcss) decides the engine panel's display.
            self.query_one("#main").set_class(remote, "-remote")
            if remote:
                self.query_one(RemotePanel).show(snapshot)  # type: ignore[arg-type]
            else:
                self.query_one(EnginePanel).show(snapshot)
                self.query_one(StatusLine).show(snapshot)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield from palette_commands(self)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("submit", "cancel") and isinstance(self.screen, ModalScreen):
            return False  # let the dialog have its keys
        if action == "cancel":
            return True if self.running else None  # shown dimmed while idle; escape passes through
        return True

    # --- models ---

    def open_model(self, spec: ModelSpec) -> None:
        """Close the current engine (cancelling any run) and open `spec`, with the draft model the settings
        name, in a worker."""
        spec = replace(spec, draft=self._settings_in_effect().draft_model)
        self.workers.cancel_group(self, "generate")
        old, self.handle = self.handle, None
        self.spec = spec
        self.tracker, self._shown_version = tracker_for(spec.source), -1
        self.open_request += 1
        self.sub_title = spec.label
        self.tracker.loading(f"opening {spec.label}")
        self._open_worker(self.open_request, spec, self._engine_options(), old)

    def _engine_options(self) -> EngineOptions:
        return replace(self.options, ram_budget=self._settings_in_effect().ram_budget)

    def _settings_in_effect(self) -> Settings:
        """The saved settings with the command line's --ram-budget and --draft laid over them."""
        settings = self.settings
        if self._cli_budget is not None:
            settings = replace(settings, ram_budget=self._cli_budget)
        if self._cli_draft is not None:
            settings = replace(settings, draft=self._cli_draft)
        return settings

    def _draft_request(self) -> DraftRequest | None:
        settings = self._settings_in_effect()
        return DraftRequest(settings.draft, settings.draft_tokens or None) if settings.draft else None

    @work(thread=True, exclusive=True, exit_on_error=False, group="engine", description="open model")
    def _open_worker(self, request: int, spec: ModelSpec, options: EngineOptions, old: EngineHandle | None) -> None:
        worker = get_current_worker()

        def on_event(event: events.Event) -> None:
            if isinstance(event, events.LoadProgress):
                self.tracker.loading(f"loading {event.what}", event.done_bytes, event.total_bytes)

        with self._engine_lock:  # waits for a cancelled run to let go of the old engine
            if old is not None:
                old.close()
                del old
                gc.collect()
            if worker.is_cancelled:
                return
            try:
                handle = self.opener(spec, options, on_event, self.tracker.loading, worker.cancelled_event)
            except CancelRequested:
                return
            except BloomtuiError as exc:
                self.post_message(EngineFailed(request, spec, exc.title, exc.message))
                return
            except Exception as exc:  # the app must stay usable whatever a checkpoint does to the loader
                self.post_message(EngineFailed(request, spec, "Cannot open model", f"{type(exc).__name__}: {exc}"))
                return
        if worker.is_cancelled:
            handle.close()
            return
        self.post_message(EngineOpened(request, spec, handle, handle.rss()))

    @on(EngineOpened)
    def _engine_opened(self, message: EngineOpened) -> None:
        if message.request != self.open_request:
            message.handle.close()  # superseded while it loaded
            return
        self.handle = message.handle
        info = message.handle.info
        self.tracker.opened(info, message.rss, message.handle.baseline_rss)
        self.sub_title = info.name
        if isinstance(info, RemoteInfo):
            self.output.notice(f"Connected to {info.url}, serving {info.model}. Escape closes a stream mid-run.")
            if self._draft_request() is not None:
                self.output.notice("The draft setting applies to local models only; the server decodes alone.")
        elif info.demo:
            self.output.notice(
                "Demo model open: a 5M-parameter BLOOM the project trained on the Python documentation, so it "
                "writes doc-like English and knows little else; it runs the real engine, half its blocks resident "
                "and half streamed from disk. For a real model: bloomtui download bigscience/bloom-560m"
            )
        else:
            self.output.notice(f"{info.name} is open.")
        self.output.notice("Type a prompt below and press ctrl+j; ctrl+p has example prompts and more.")
        warning = getattr(info, "budget_warning", None)  # a server has no RAM budget
        if warning:
            self.output.notice(warning, error=True)
            self.notify(warning, title="RAM budget", severity="warning", timeout=10)
        draft_error = getattr(message.handle, "draft_error", None)
        if draft_error:
            self.output.notice(f"{draft_error}; the model runs without a draft model.", error=True)
            self.notify(draft_error, title="Draft model not used", severity="warning", timeout=10)
        self.poll_panel()

    @on(EngineFailed)
    def _engine_failed(self, message: EngineFailed) -> None:
        if message.request != self.open_request:
            return
        self.tracker.failed(message.message, keep_model=False)
        self.sub_title = f"{message.spec.label} (not open)"
        self.output.notice(f"{message.title}: {message.message}", error=True)
        self.notify(message.message, title=message.title, severity="error", timeout=10)
        self.poll_panel()

    def _model_picked(self, spec: ModelSpec | None) -> None:
        if spec is not None:
            self.open_model(spec)
        elif self.handle is None:
            self.output.notice("No model open. ctrl+o opens one; the demo model works offline.")

    # --- runs ---

    def action_submit(self) -> None:
        prompt = self.editor.text
        if self.running:
            self.notify("A run is in progress: escape cancels it.", severity="warning")
            return
        if not prompt.strip():
            self.notify("Type a prompt first.", severity="warning")
            return
        if self.handle is None:
            self.notify("No model is open: ctrl+o opens one (the demo model works offline).", severity="warning")
            return
        try:
            params = self.settings.sampling_params()
        except UsageError as exc:
            self.notify(exc.message, title="Settings", severity="error")
            return
        remember(self.history, prompt)
        self._save_history()
        self.run_number += 1
        self.running = True
        self.refresh_bindings()
        draft = self._draft_request()
        self.tracker.start(self.run_number, params.max_new_tokens, self.handle.draft_name(draft) or "")
        self.output.start_run(self.run_number, prompt, self.handle.info.name)
        self.editor.set_prompt("")
        self._generate(self.run_number, prompt, params, self.handle, draft)
        self.poll_panel()

    @work(thread=True, exclusive=True, exit_on_error=False, group="generate", description="generate")
    def _generate(
        self, run: int, prompt: str, params: SamplingParams, handle: EngineHandle, draft: DraftRequest | None
    ) -> None:
        worker = get_current_worker()

        def sink(event: events.Event) -> None:
            self.tracker.feed(run, event)
            if isinstance(event, events.TokenGenerated):
                self.post_message(TokenArrived(run, event))
            elif isinstance(event, events.Drafted):
                self.post_message(DraftArrived(run, event))

        with self._engine_lock:
            if worker.is_cancelled:  # cancelled (or the model replaced) before it started
                result: events.Done | events.Cancelled = events.Cancelled(0, (), "", 0)
                sink(result)
                self.post_message(RunEnded(run, result))
                return
            try:
                result = handle.generate(prompt, params, sink, worker.cancelled_event, draft)
            except BloomtuiError as exc:
                self.post_message(RunEnded(run, None, exc.message, exc.title))
                return
            except Exception as exc:  # a bug or a broken shard mid-run: report it, keep the app alive
                message = f"{type(exc).__name__}: {exc}"
                self.tracker.feed(run, events.Error(0, message))
                self.post_message(RunEnded(run, None, message, "Engine failure"))
                return
        self.post_message(RunEnded(run, result))

    @on(TokenArrived)
    def _token_arrived(self, message: TokenArrived) -> None:
        # Tokens are posted before their RunEnded, so anything for another or an ended run is stale.
        if message.run == self.run_number and self.running:
            self.output.append(message.run, message.token.text)

    @on(DraftArrived)
    def _draft_arrived(self, message: DraftArrived) -> None:
        if message.run == self.run_number and self.running:
            self.output.show_guess(message.run, message.draft.text)

    @on(RunEnded)
    def _run_ended(self, message: RunEnded) -> None:
        if message.run != self.run_number:
            return  # a run the user already moved on from
        self.running = False
        self.refresh_bindings()
        result = message.result
        if isinstance(result, events.Done):
            rate = f" · {result.tokens_per_second:.1f} tok/s" if result.tokens_per_second else ""
            self.output.finish(message.run, "done", f"done · {self.tracker.snapshot().message}{rate}")
        elif isinstance(result, events.Cancelled):
            self.output.finish(message.run, "cancelled", f"cancelled after {result.new_tokens} tokens")
        else:
            self.output.finish(message.run, "error", f"error: {message.error}")
            self.notify(message.error or "unknown error", title=message.title, severity="error", timeout=10)
        self.poll_panel()

    def action_cancel(self) -> None:
        if self.running:
            self.workers.cancel_group(self, "generate")
            remote = isinstance(self.tracker, RemoteTracker)
            what = "closing the stream" if remote else "the engine stops after the current block"
            self.notify(f"Cancelling: {what}.", timeout=2)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        # Workers report their own failures as messages; this catches anything that escaped them.
        if event.state == WorkerState.ERROR:
            error = event.worker.error
            self.notify(f"{type(error).__name__}: {error}", title="Internal error", severity="error")
            if event.worker.group == "generate" and self.running:
                self.running = False
                self.output.finish(self.run_number, "error", f"error: {error}")

    # --- other actions ---

    def insert_prompt(self, text: str) -> None:
        self.editor.set_prompt(text)
        self.editor.focus()

    def action_settings(self) -> None:
        # The dialog shows the budget and draft in effect, which may be --ram-budget and --draft.
        self.push_screen(SettingsScreen(self._settings_in_effect(), self.find_models()), self._settings_saved)

    def _settings_saved(self, new: Settings | None) -> None:
        if new is None:
            return
        effective = self._settings_in_effect()
        budget_changed = new.ram_budget != effective.ram_budget
        draft_model_changed = new.draft_model != effective.draft_model
        if not budget_changed:  # do not save a --ram-budget the user merely left alone
            new = replace(new, ram_budget=self.settings.ram_budget)
        if new.draft == effective.draft:  # nor a --draft
            new = replace(new, draft=self.settings.draft)
        else:
            self._cli_draft = None
        self.settings = replace(new, theme=self.theme)
        try:
            path = save_settings(self.settings)
        except OSError as exc:
            self.notify(f"Cannot save settings: {exc}", severity="error")
        else:
            self.notify(f"Saved to {path}", title="Settings")
        if budget_changed:
            self._cli_budget = None
        if (budget_changed or draft_model_changed) and self.spec is not None:
            self.open_model(self.spec)

    def _theme_changed(self, theme: Theme) -> None:
        if theme.name != self.settings.theme:
            self.settings = replace(self.settings, theme=theme.name)
            try:
                save_settings(self.settings)
            except OSError:
                pass  # a theme that does not stick is not worth an error

    def action_open_model(self) -> None:
        self.push_screen(ModelPickerScreen(self.find_models()), self._model_picked)

    def action_open_demo(self) -> None:
        self.open_model(DEMO)

    def action_save_transcript(self) -> None:
        exchanges = self.output.exchanges
        if not exchanges:
            self.notify("Nothing to save yet.", severity="warning")
            return
        try:
            path = save_transcript(exchanges, locations.transcripts_dir())
        except OSError as exc:
            self.notify(f"Cannot save the transcript: {exc}", severity="error")
            return
        self.notify(str(path), title="Transcript saved")

    def action_copy_output(self) -> None:
        exchanges = self.output.exchanges
        if not exchanges:
            self.notify("Nothing to copy yet.", severity="warning")
            return
        text = exchanges[-1].prompt + exchanges[-1].text
        self.copy_to_clipboard(text)
        self.notify(f"Copied {len(text)} characters (prompt and continuation).")

    def action_clear(self) -> None:
        if self.running:
            self.notify("Cancel the run before clearing.", severity="warning")
            return
        self.output.clear()

    def action_toggle_panel(self) -> None:
        """Wide terminals: hide or show the side panel. Narrow ones: open the panel below the output, or
        fold it back into the status line."""
        self.query_one("#main").toggle_class("-panel-flipped")

    def _exit_on_signal(self, signum: int) -> None:
        self.exit_signal = signum
        self.workers.cancel_all()  # the engine stops within one block
        self._save_history()
        self.exit(signals.exit_status(signum))

    def on_unmount(self) -> None:
        if self._undo_signals is not None:
            self._undo_signals()
            self._undo_signals = None

    def _handle_exception(self, error: Exception) -> None:
        # Textual's one funnel for unhandled exceptions (it then exits and restores the terminal).
        if self.crash is None:
            self.crash = error
            self.crash_log = write_crash_log(error)
        super()._handle_exception(error)

    async def action_quit(self) -> None:
        # Set every worker's cancel flag first: the engine then stops within one block and exit never waits
        # on a whole generation.
        self.workers.cancel_all()
        self.exit(0)

    def _save_history(self) -> None:
        try:
            save_history(locations.history_file(), self.history)
        except OSError:
            pass  # history is a convenience; losing it must not interrupt a run

    def close_engine(self, timeout: float = 30.0) -> bool:
        """After the app exits: wait for a cancelled run to let go, then free the engine; False on timeout."""
        if not self._engine_lock.acquire(timeout=timeout):
            return False
        try:
            if self.handle is not None:
                self.handle.close()
                self.handle = None
        finally:
            self._engine_lock.release()
        return True


def run_app(
    model: str | None,
    options: EngineOptions,
    remote: RemoteOptions = RemoteOptions(),  # noqa: B008 - frozen
    draft: str | None = None,
) -> int:
    """Run the app on `model` (a folder, a cached repo id, a server URL, DEMO_ARG, or None to choose); `draft`
    overrides the saved draft setting for this session."""
    spec = None if model is None else DEMO if model == DEMO_ARG else ModelSpec(model)
    app = BloomApp(spec, options, remote=remote, draft=draft)
    try:
        code = app.run()
    except Exception as exc:  # failed outside Textual's own handling (driver start-up, shutdown)
        code, app.crash, app.crash_log = 1, exc, write_crash_log(exc)
    if app.crash is not None:
        print(crash_message(app.crash, app.crash_log), file=sys.stderr)
    if app.exit_signal is not None:
        # History is saved and the terminal restored. Whoever sent the signal expects us gone at once, and
        # interpreter teardown with torch loaded takes most of a second (more if a cancelled run is still
        # finishing one big block): free what we can in a moment, then leave; the kernel frees the rest.
        app.close_engine(timeout=SIGNAL_EXIT_WAIT)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(signals.exit_status(app.exit_signal))
    app.close_engine()
    if app.crash is not None:
        return 1
    return code if isinstance(code, int) else app.return_code or 0
