"""The Textual app: bindings, and the coordination between widgets and the engine workers.

Engine work runs in thread workers that never touch widgets: opening a model is opening.py's, runs are
runs.py's. A tick at TICK_SECONDS moves pending text into the output pane in one append and, every PANEL_EVERY
ticks while a run goes, redraws the panel from the tracker's snapshot: the UI thread's work does not grow with
the engine's speed.

The window comes before the engine: torch and the engine's modules import on a thread once it is drawn. A run
asked for while the model opens waits for it (runs.py). Quitting leaves the process as soon as Textual has
restored the terminal, without waiting for worker threads or the interpreter's teardown (run_app).

Faults end the app cleanly: termination signals cancel the run, save history and exit through Textual,
which restores the terminal, with a watchdog behind in case Textual cannot (signals.py); an unhandled
exception leaves a crash log (crash_log.py). Below PANEL_SIDE_MIN_WIDTH columns the panel folds into a
one-line status that f4 opens below the output.

ctrl+c is the reflex for "stop": it cancels a running generation (like escape) and, while idle, quits on a
second press within QUIT_PRESS_SECONDS. A selection (in the editor, a dialog's field, or the output) is
copied instead, as the editor's own ctrl+c does, but only while nothing runs.

The digit keys pick one of the last run's samples (runs.py) only while they would type nothing: with the
prompt editor empty; otherwise they reach the editor as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.theme import Theme
from textual.widgets import Header, Input, TextArea

from bloomtui import locations
from bloomtui.cached_models import CachedModel, find_cached_blooms
from bloomtui.engine import EngineOptions
from bloomtui.remote import is_remote_url
from bloomtui.remote.connection import RemoteOptions
from bloomtui.settings import MAX_SAMPLES, Settings, load_settings, save_settings
from bloomtui.tui import signals
from bloomtui.tui.commands import palette_commands
from bloomtui.tui.crash_log import crash_message, write_crash_log
from bloomtui.tui.engine_handle import DEMO, ModelSpec, Opener, import_engine, open_engine
from bloomtui.tui.handle import EngineHandle
from bloomtui.tui.history import load_history, save_history
from bloomtui.tui.opening import KeptModel, ModelOpening
from bloomtui.tui.pending_text import PendingText
from bloomtui.tui.remote_handle import with_remote
from bloomtui.tui.remote_state import RemoteSnapshot, RemoteTracker
from bloomtui.tui.run_state import RunTracker
from bloomtui.tui.runs import RunControl
from bloomtui.tui.screens.model_picker import ModelPickerScreen
from bloomtui.tui.screens.settings import SettingsScreen
from bloomtui.tui.transcript import save_transcript
from bloomtui.tui.widgets.app_footer import AppFooter
from bloomtui.tui.widgets.engine_panel import EnginePanel
from bloomtui.tui.widgets.output_view import Notice, OutputView
from bloomtui.tui.widgets.prompt_editor import PromptEditor
from bloomtui.tui.widgets.remote_panel import RemotePanel
from bloomtui.tui.widgets.status_line import StatusLine

DEMO_ARG = "@demo"
"""A model argument that opens the built-in demo model directly."""
TICK_SECONDS = 0.15
"""How often pending text reaches the output pane: at most this often, however fast the engine goes. Each
redraw of a streaming pane costs the UI thread 5-15 ms of a 2-core machine the engine needs too (a redraw per
token ran the demo at 0.4x the CLI's speed). UI-thread CPU over a 300-token demo run (about 3 s): 1.0 s
at 10 Hz, 0.8 s at 8 Hz, 0.65 s at 6.7 Hz."""
PANEL_EVERY = 3
"""While a run goes, the panel (a dozen widgets to render) redraws every this many ticks (about twice a
second); the text redraws on every tick."""
PANEL_SIDE_MIN_WIDTH = 100
"""Below this many columns the 46-column panel would squeeze the output: it folds into a status line."""
SHORT_HEIGHT = 20
"""Below this many rows the prompt editor shrinks so the output keeps some lines."""
QUIT_PRESS_SECONDS = 2.0
"""Idle, a second ctrl+c within this many seconds quits."""


class BloomApp(ModelOpening, RunControl, App[int]):
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
        Binding("ctrl+c", "interrupt", "Cancel or quit", id="interrupt", show=False, priority=True),
        *(
            Binding(str(n), f"pick({n})", f"Pick sample {n}", id=f"pick-{n}", show=False, priority=True)
            for n in range(1, MAX_SAMPLES + 1)
        ),
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
        samples: int | None = None,
    ) -> None:
        super().__init__()
        self.initial_model = model
        self.options = options
        self.opener = with_remote(opener, remote)
        """Opens a server URL as a RemoteHandle, anything else with `opener`."""
        self.find_models = find_models
        self.hub_endpoint: str | None = None
        """Where the model picker's "prepare from the hub" asks (None: HF_ENDPOINT or huggingface.co)."""
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
        self._cli_samples = samples
        """--samples, likewise, over the saved Samples."""
        self._told_one_sample: object = None
        self._engine_lock = threading.Lock()
        """Held while a worker uses or replaces an engine: closing never races a generation."""
        self.first_frame = threading.Event()
        """Set once the window is drawn: an open's imports wait for it (on 2 busy cores the window came ~0.4 s
        sooner so)."""
        self._shown_version = -1
        self._ticks = 0
        self._kept: KeptModel | None = None
        """The model in use while another opens (opening.py)."""
        self.pending = PendingText()
        """Text the engine made that the output pane has not shown yet (runs.py)."""
        self.queued: str | None = None
        """A prompt submitted while the model opens: it runs once the model is open (runs.py)."""
        self._queued_notice: Notice | None = None
        self.model_hints: list[Notice] = []
        """Notices that no model is open, removed when one opens."""
        self._interrupted_at = -QUIT_PRESS_SECONDS
        """When ctrl+c last asked to quit (monotonic seconds)."""
        self._terminal_modes = signals.terminal_modes()
        """The terminal's modes before Textual makes it raw, for the exit watchdog."""
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
        yield AppFooter()

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
        self.editor.lets_through = lambda character: character.isdigit() and self.can_pick(int(character))
        self.editor.focus()
        self.query_one("#output").border_title = "Output"
        self.query_one("#prompt").border_title = "Prompt"
        self.set_interval(TICK_SECONDS, self._tick)
        if not self.is_headless:  # tests drive the app headless, and keep the test runner's own handlers
            self._undo_signals = signals.install(self._exit_on_signal, self._terminal_modes)
        if self._settings_warning:
            self.notify(self._settings_warning, title="Settings", severity="warning")
        self.call_after_refresh(self._after_first_frame)
        if self.initial_model is not None:
            self.open_model(self.initial_model)  # its worker waits for the first frame (opening.py)
        else:
            self.model_hints.append(
                self.output.notice(
                    "No model given. Choose one, or try the built-in demo model (small, trained on the Python docs)."
                )
            )
            self.push_screen(ModelPickerScreen(self.find_models(), hub_endpoint=self.hub_endpoint), self._model_picked)

    def _after_first_frame(self) -> None:
        """torch and the engine take seconds to import, holding the interpreter much of that time (loading
        libtorch): they start once the window is drawn, on a thread of their own, so they are ready or nearly
        when the user picks a model. A daemon thread: quitting never waits for it."""
        self.first_frame.set()
        model = self.initial_model
        if model is None or not is_remote_url(model.source):  # a server needs no torch
            threading.Thread(target=_preload_engine, name="bloomtui-imports", daemon=True).start()

    def _tick(self) -> None:
        self._ticks += 1
        self.show_pending()
        if not self.running or self._ticks % PANEL_EVERY == 0:
            self.poll_panel()

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

    @property
    def demo_open(self) -> bool:
        """Whether the model open (or opening) is the demo: the palette offers prompts that fit it."""
        if self.handle is not None:
            return bool(getattr(self.handle.info, "demo", False))
        return self.spec is not None and self.spec.demo

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("submit", "cancel") and isinstance(self.screen, ModalScreen):
            return False  # let the dialog have its keys
        busy = self.running or self.queued is not None
        if action == "cancel":
            return True if busy else None  # shown dimmed while idle; escape passes through
        if action == "interrupt" and not busy and self._selection():
            return False  # ctrl+c goes on to copy the selection
        if action == "pick":
            return not isinstance(self.screen, ModalScreen) and self.can_pick(int(str(parameters[0])))
        return True

    def _selection(self) -> str:
        focused = self.focused
        if isinstance(focused, (TextArea, Input)) and focused.selected_text:
            return focused.selected_text
        return self.screen.get_selected_text() or ""

    def _model_picked(self, spec: ModelSpec | None) -> None:
        if spec is not None:
            self.open_model(spec)
        elif self.handle is None:
            hint = self.output.notice("No model open. ctrl+o opens one; the demo model works offline.")
            self.model_hints.append(hint)

    # --- other actions ---

    def insert_prompt(self, text: str) -> None:
        self.editor.set_prompt(text)
        self.editor.focus()

    def action_settings(self) -> None:
        # The dialog shows the budget and draft in effect, which may be --ram-budget and --draft.
        defaults = getattr(self.handle, "generation_defaults", None)  # a server decodes with its own
        screen = SettingsScreen(self._settings_in_effect(), self.find_models(), defaults)
        self.push_screen(screen, self._settings_saved)

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
        if new.samples == effective.samples:  # nor a --samples
            new = replace(new, samples=self.settings.samples)
        else:
            self._cli_samples = None
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
        self.push_screen(ModelPickerScreen(self.find_models(), hub_endpoint=self.hub_endpoint), self._model_picked)

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
        exchange = self.output.latest
        if exchange is None:
            samples = self.output.latest_samples
            if samples is None:
                self.notify("Nothing to copy yet.", severity="warning")
            else:
                self.notify(f"Pick a sample first (1-{samples.samples.count}, or click one).", severity="warning")
            return
        text = exchange.prompt + exchange.text
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

    async def action_interrupt(self) -> None:
        if self.running or self.queued is not None:
            self._interrupted_at = -QUIT_PRESS_SECONDS
            self.action_cancel()
            return
        now = time.monotonic()
        if now - self._interrupted_at <= QUIT_PRESS_SECONDS:
            await self.action_quit()
            return
        self._interrupted_at = now
        self.notify("Press ctrl+c again to quit (or ctrl+q).", timeout=QUIT_PRESS_SECONDS)

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


def _preload_engine() -> None:
    with contextlib.suppress(Exception):  # an open imports it again, and says what failed
        import_engine()


def run_app(
    model: str | None,
    options: EngineOptions,
    remote: RemoteOptions = RemoteOptions(),  # noqa: B008 - frozen
    draft: str | None = None,
    samples: int | None = None,
) -> NoReturn:
    """Run the app on `model` (a folder, a cached repo id, a server URL, DEMO_ARG, or None to choose); `draft`
    and `samples` override the saved Draft and Samples settings for this session. Ends the process."""
    spec = None if model is None else DEMO if model == DEMO_ARG else ModelSpec(model)
    app = BloomApp(spec, options, remote=remote, draft=draft, samples=samples)
    # A loop of our own: asyncio.run's would join the worker threads once the app is done, so a quit would wait
    # for a cancelled run to finish its block (seconds on a big model) or for an open to finish loading.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        code = app.run(loop=loop)
    except Exception as exc:  # failed outside Textual's own handling (driver start-up, shutdown)
        code, app.crash, app.crash_log = 1, exc, write_crash_log(exc)
    if app.crash is not None:
        print(crash_message(app.crash, app.crash_log), file=sys.stderr)
    if app.exit_signal is not None:
        status = signals.exit_status(app.exit_signal)
    elif app.crash is not None:
        status = 1
    else:
        status = code if isinstance(code, int) else app.return_code or 0
    # Leave now, without the interpreter's teardown: with torch loaded it takes 1.2-1.5 s on the 2-core machine,
    # and it would wait for the worker threads. Nothing is left half-written: the terminal is restored, history
    # is saved on every run and settings on every change (each written whole, then renamed into place), a
    # transcript is written on the UI thread before the app returns. The workers write nothing a quit can cut
    # (a run only computes; an open reads, and its measurement caches are measured again if cut), and the
    # memory, mapped files and threads of the engine are the kernel's to free.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
