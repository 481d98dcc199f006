"""While the model loads: a run asked for then waits and starts when the model is open; escape or ctrl+c cancels
it; a failed open drops it; opening another model carries it over. Also, once a model is open, the "no model"
notices go, and a prompt past the model's training context is said to be so (and still runs)."""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from textual import events as events_module
from textual.pilot import Pilot
from textual.widgets import Static

from bloomtui.engine import EngineOptions, events
from bloomtui.errors import CancelRequested, CheckpointError
from bloomtui.settings import Settings
from bloomtui.tui.app import BloomApp
from bloomtui.tui.engine_handle import DEMO, ModelSpec, Release, StatusSink
from bloomtui.tui.handle import Batch, Results
from bloomtui.tui.screens.model_picker import ModelPickerScreen
from bloomtui.tui.widgets.status_line import summary
from tests.tui.fakes import PIECES, ScriptedEngine, ScriptedOpener
from tests.tui.helpers import wait_for_panel, wait_until


@dataclass
class SlowOpener:
    """Holds each open until `go` is set (or the open is cancelled), then opens as `inner` does: a big model's
    minutes of loading, ended when the test says."""

    inner: ScriptedOpener = field(default_factory=ScriptedOpener)
    go: threading.Event = field(default_factory=threading.Event)
    holding: threading.Event = field(default_factory=threading.Event)

    def __call__(
        self,
        spec: ModelSpec,
        options: EngineOptions,
        on_event: events.EventSink,
        on_status: StatusSink,
        cancel: threading.Event,
        release: Release = lambda: None,
    ) -> ScriptedEngine:
        self.holding.set()
        while not (self.go.is_set() or cancel.is_set()):
            cancel.wait(0.01)
        if cancel.is_set():
            raise CancelRequested
        return self.inner(spec, options, on_event, on_status, cancel, release)


def _notices(app: BloomApp) -> str:
    return "\n".join(notice.render().plain for notice in app.output.query("Notice"))  # type: ignore[union-attr]


BLOOM = ModelSpec("bigscience/bloom-560m")


def _app(opener: SlowOpener | ScriptedOpener, model: ModelSpec | None = BLOOM) -> BloomApp:
    app = BloomApp(model, opener=opener, find_models=list, cursor_blink=False)
    app.settings = Settings(max_new_tokens=4)
    return app


async def _queue(pilot: Pilot, app: BloomApp, opener: SlowOpener, prompt: str) -> None:
    """Type `prompt` and press ctrl+j while the model loads."""
    await wait_until(pilot, opener.holding.is_set, what="the open to be under way")
    assert app.tracker.snapshot().state == "loading"
    app.insert_prompt(prompt)
    await pilot.press("ctrl+j")
    await wait_until(pilot, lambda: app.queued == prompt, what="the run to be queued")


async def test_a_run_asked_for_while_loading_starts_when_the_model_is_open() -> None:
    opener = SlowOpener()
    app = _app(opener)
    async with app.run_test(size=(120, 36)) as pilot:
        await _queue(pilot, app, opener, "SELECT")
        assert app.editor.text == ""
        assert "Queued" in _notices(app) and "SELECT" in _notices(app)
        await wait_for_panel(pilot)
        assert "queued" in app.query_one("#panel-state", Static).render().plain  # type: ignore[union-attr]
        assert "queued" in summary(app.tracker.snapshot(), "f4").plain  # the narrow terminal's status line
        assert not app.output.exchanges and opener.inner.engine.runs == 0
        opener.go.set()
        await wait_until(pilot, lambda: app.output.exchanges and not app.running, what="the queued run")
        exchange = app.output.exchanges[-1]
        assert (exchange.prompt, exchange.outcome) == ("SELECT", "done")
        assert exchange.text == "".join(PIECES[:4])
        assert app.queued is None and "Queued" not in _notices(app)
        await wait_for_panel(pilot)
        assert "queued" not in app.query_one("#panel-state", Static).render().plain  # type: ignore[union-attr]
        assert app.history[-1] == "SELECT"


@pytest.mark.parametrize("key", ["escape", "ctrl+c"])
async def test_escape_or_ctrl_c_cancels_the_queued_run(key: str) -> None:
    opener = SlowOpener()
    app = _app(opener)
    async with app.run_test(size=(120, 36)) as pilot:
        await _queue(pilot, app, opener, "Hello")
        await pilot.press(key)
        await wait_until(pilot, lambda: app.queued is None, what="the cancel")
        assert "queued run was cancelled" in _notices(app)
        assert app.editor.text == "Hello"  # back where it was typed
        assert not app._exit  # ctrl+c cancelled; it did not count towards quitting
        opener.go.set()
        await wait_until(pilot, lambda: app.handle is not None, what="the model to open")
        await pilot.pause()
        assert not app.output.exchanges and not app.running and opener.inner.engine.runs == 0


async def test_a_failed_open_drops_the_queued_run_with_the_error() -> None:
    opener = SlowOpener(ScriptedOpener(error=CheckpointError("/no/such/folder: not a local folder")))
    app = _app(opener)
    async with app.run_test(size=(120, 36)) as pilot:
        await _queue(pilot, app, opener, "Hello")
        opener.go.set()
        await wait_until(pilot, lambda: app.queued is None, what="the queued run to be dropped")
        notices = _notices(app)
        assert "not a local folder" in notices
        assert "queued run was dropped" in notices
        assert app.editor.text == "Hello"
        assert not app.output.exchanges and not app.running
        await wait_for_panel(pilot)
        assert app.tracker.snapshot().state == "error" and not app.tracker.snapshot().queued


async def test_a_queued_run_goes_to_the_model_opened_instead() -> None:
    opener = SlowOpener()
    app = _app(opener)
    async with app.run_test(size=(120, 36)) as pilot:
        await _queue(pilot, app, opener, "Hello")
        app.open_model(ModelSpec("/another/model"))  # what ctrl+o does once a model is picked
        assert "will start on /another/model" in _notices(app)
        await wait_for_panel(pilot)
        assert app.tracker.snapshot().queued  # the new open's panel says so too
        opener.go.set()
        await wait_until(pilot, lambda: app.output.exchanges and not app.running, what="the queued run")
        assert [spec.source for spec, _ in opener.inner.calls] == ["/another/model"]
        assert app.output.exchanges[-1].outcome == "done"


async def test_submitting_again_while_queued_says_so() -> None:
    opener = SlowOpener()
    app = _app(opener)
    async with app.run_test(size=(120, 36)) as pilot:
        await _queue(pilot, app, opener, "Hello")
        app.insert_prompt("Another")
        await pilot.press("ctrl+j")
        await pilot.pause()
        assert app.queued == "Hello" and app.editor.text == "Another"
        assert any("queued" in str(n.message) for n in app._notifications)
        opener.go.set()
        await wait_until(pilot, lambda: app.output.exchanges and not app.running, what="the queued run")
        assert app.output.exchanges[-1].prompt == "Hello" and app.editor.text == "Another"


async def test_the_no_model_notice_goes_once_a_model_is_open() -> None:
    scripted = ScriptedOpener()
    app = _app(scripted, model=None)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ModelPickerScreen))
        assert "No model given" in _notices(app)
        await pilot.press("escape")  # dismissed: a second "no model" notice
        await wait_until(pilot, lambda: "No model open" in _notices(app))
        app.action_open_demo()
        await wait_until(pilot, lambda: app.handle is not None)
        await pilot.pause()
        assert "No model given" not in _notices(app) and "No model open" not in _notices(app)
        assert "is open" in _notices(app) or "Type a prompt" in _notices(app)
    assert scripted.calls[0][0] == DEMO


LONG = "the prompt is 30 tokens, 3.8x the 8-token context this model was trained on: what it writes will be poor"


@dataclass
class LongPromptEngine(ScriptedEngine):
    """Says, as the real engine does before its prefill, that the prompt is past the training context."""

    def _run(self, batch: Batch) -> Results:
        batch.on_event(events.LongPrompt(self.runs + 1, 30, 8, LONG))
        return super()._run(batch)


async def test_a_prompt_past_the_training_context_is_noticed_and_still_runs() -> None:
    app = _app(ScriptedOpener(LongPromptEngine()))
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.handle is not None)
        app.insert_prompt("A long prompt")
        await pilot.press("ctrl+j")
        await wait_until(pilot, lambda: app.output.exchanges and not app.running, what="the run")
        assert app.output.exchanges[-1].outcome == "done"
        notice = app.output.query("Notice").last()
        assert notice.render().plain == LONG[0].upper() + LONG[1:]  # type: ignore[union-attr]
        # Above the run it is about, not below its text.
        children = list(app.output.children)
        assert children.index(notice) == children.index(app.output.runs[1]) - 1
        assert any("8-token context" in str(n.message) for n in app._notifications)


@pytest.fixture(scope="module")
def short_context_model(small_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """small_model, with a config saying it was trained on 8-token sequences."""
    path = Path(shutil.copytree(small_model, tmp_path_factory.mktemp("context") / "short"))
    config = json.loads((path / "config.json").read_text())
    config["seq_length"] = 8
    (path / "config.json").write_text(json.dumps(config))
    return path


async def test_the_real_engine_says_a_prompt_is_past_its_training_context(
    short_context_model: Path, streaming_options: EngineOptions
) -> None:
    app = BloomApp(ModelSpec(str(short_context_model)), streaming_options, find_models=list, cursor_blink=False)
    app.settings = Settings(max_new_tokens=2)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.handle is not None, timeout=60, what="the model to open")
        app.insert_prompt("The Python tutorial explains lists, tuples, dictionaries and sets in detail")
        await pilot.press("ctrl+j")
        await wait_until(pilot, lambda: app.output.exchanges and not app.running, timeout=60, what="the run")
        assert app.output.exchanges[-1].outcome == "done"
        assert "8-token context" in _notices(app)
        app.insert_prompt("Short")
        await pilot.press("ctrl+j")
        await wait_until(pilot, lambda: len(app.output.exchanges) == 2 and not app.running, timeout=60)
        assert _notices(app).count("8-token context") == 1


async def test_keys_still_waiting_in_the_editor_when_ctrl_j_comes_are_part_of_the_prompt() -> None:
    """ctrl+j is the app's priority binding: while torch imports on another thread, keys typed just before it
    can still wait in the editor's queue when the app handles it; the queued prompt must still hold them."""
    opener = SlowOpener()
    app = _app(opener)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, opener.holding.is_set, what="the open to be under way")
        app.editor.focus()
        for character in "list":  # queued for the editor, not yet handled when ctrl+j is
            app.editor.post_message(events_module.Key(character, character))
        app.action_submit()
        await wait_until(pilot, lambda: app.queued is not None, what="the run to be queued")
        assert app.queued == "list"
        opener.go.set()
        await wait_until(pilot, lambda: app.output.exchanges and not app.running, what="the queued run")
        assert app.output.exchanges[-1].prompt == "list"
