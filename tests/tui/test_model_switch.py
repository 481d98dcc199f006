"""Opening another model while one works: a failed open (a mistyped folder, a budget too small) shows its
error and leaves the working model open and usable; a good one replaces it."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Input

from bloomtui.engine import EngineOptions
from bloomtui.errors import CheckpointError
from bloomtui.settings import Settings
from bloomtui.tui.app import BloomApp
from bloomtui.tui.engine_handle import ModelSpec
from bloomtui.tui.screens.model_picker import ModelPickerScreen
from bloomtui.tui.screens.settings import SettingsScreen
from bloomtui.tui.widgets.engine_panel import EnginePanel
from tests.tui.fakes import PIECES, ScriptedEngine, ScriptedOpener
from tests.tui.helpers import wait_for_panel, wait_until


def _notices(app: BloomApp) -> str:
    return "\n".join(notice.render().plain for notice in app.output.query("Notice"))  # type: ignore[union-attr]


async def _runs(pilot, app: BloomApp, prompt: str = "Still there? ") -> None:  # noqa: ANN001
    app.insert_prompt(prompt)
    await pilot.press("ctrl+j")
    await wait_until(pilot, lambda: not app.running and app.output.exchanges, what="the run")
    assert app.output.exchanges[-1].outcome == "done", app.output.exchanges[-1].status


async def test_a_mistyped_folder_keeps_the_working_model(fake_app: BloomApp, scripted: ScriptedOpener) -> None:
    app = fake_app
    app.settings = Settings(max_new_tokens=3)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.handle is not None)
        name = scripted.engine.info.name
        assert app.sub_title == name
        scripted.error = CheckpointError("/no/such/folder: not a local folder, and not in the local Hugging Face cache")
        await pilot.press("ctrl+o")
        await wait_until(pilot, lambda: isinstance(app.screen, ModelPickerScreen))
        app.screen.query_one("#picker-path", Input).value = "/no/such/folder"
        await pilot.press("tab", "enter")
        await wait_until(pilot, lambda: "not a local folder" in _notices(app), what="the error")
        assert _notices(app).endswith(f"{name} stays open.")
        assert app.handle is scripted.engine and not scripted.engine.closed
        assert app.sub_title == name
        await wait_for_panel(pilot)
        snap = app.query_one(EnginePanel).snapshot
        assert snap.model is not None and snap.model.name == name and snap.state == "idle"
        await _runs(pilot, app)
        assert app.output.exchanges[-1].text == "".join(PIECES[:3])
        scripted.error = None
        await pilot.press("f2")
        await wait_until(pilot, lambda: isinstance(app.screen, SettingsScreen))
        app.screen.query_one("#ram_budget", Input).value = "500"  # below what the fake streams under
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: "below the 101 MB" in _notices(app), what="the budget error")
        assert app.handle is scripted.engine and not scripted.engine.closed
        await _runs(pilot, app, "And now? ")


async def test_a_good_open_replaces_the_model(scripted: ScriptedOpener) -> None:
    second = ScriptedEngine()
    app = BloomApp(ModelSpec("first"), opener=scripted, find_models=list, cursor_blink=False)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.handle is not None)
        first = scripted.engine
        scripted.engine = second
        app.open_model(ModelSpec("second"))
        await wait_until(pilot, lambda: app.handle is second, what="the second model")
        assert first.closed and not second.closed
        assert app.spec == ModelSpec("second")


async def test_a_mistyped_folder_keeps_a_real_model(real_app: BloomApp, tmp_path: Path) -> None:
    app = real_app
    async with app.run_test(size=(140, 45)) as pilot:
        await wait_until(pilot, lambda: app.handle is not None, what="the model to open")
        handle, name, spec = app.handle, app.sub_title, app.spec
        app.open_model(ModelSpec(str(tmp_path / "typo")))
        await wait_until(pilot, lambda: "Bad checkpoint" in _notices(app), what="the error")
        assert app.handle is handle and app.sub_title == name and app.spec == spec
        app.settings = Settings(max_new_tokens=3)
        await _runs(pilot, app)


async def test_a_budget_below_the_minimum_keeps_a_real_model(small_model: Path) -> None:
    app = BloomApp(ModelSpec(str(small_model)), EngineOptions(), find_models=list, cursor_blink=False)
    async with app.run_test(size=(140, 45)) as pilot:
        await wait_until(pilot, lambda: app.handle is not None, what="the model to open")
        handle = app.handle
        app._cli_budget = 1000
        app.open_model(ModelSpec(str(small_model)))
        await wait_until(pilot, lambda: "RAM budget too small" in _notices(app), what="the error")
        assert app.handle is handle
        app.settings = Settings(max_new_tokens=3)
        await _runs(pilot, app)
