"""Keys as users reach for them: ctrl+c cancels a run and, idle, quits on a second press (a selection is
copied instead); the footer keeps its main keys whole at 80 columns."""

from __future__ import annotations

import pytest
from textual.widgets._footer import FooterKey

from bloomtui.tui import app as app_module
from bloomtui.tui.app import BloomApp
from bloomtui.tui.widgets.engine_panel import EnginePanel
from tests.tui.fakes import ScriptedOpener
from tests.tui.helpers import wait_for_panel, wait_until


async def _held_run(pilot, app: BloomApp, scripted: ScriptedOpener) -> None:  # noqa: ANN001
    await wait_until(pilot, lambda: app.handle is not None, what="the model to open")
    scripted.engine.hold_token, scripted.engine.hold_block = 5, 3
    app.insert_prompt("Hello ")
    await pilot.press("ctrl+j")
    await wait_until(pilot, scripted.engine.holding.is_set, what="the engine to hold mid-pass")


def _messages(app: BloomApp) -> list[str]:
    return [f"{n.title} {n.message}" for n in app._notifications]


async def test_ctrl_c_cancels_a_running_generation(fake_app: BloomApp, scripted: ScriptedOpener) -> None:
    app = fake_app
    async with app.run_test(size=(120, 36)) as pilot:
        await _held_run(pilot, app, scripted)
        await pilot.press("ctrl+c")
        await wait_until(pilot, lambda: not app.running, what="the cancel to land")
        assert scripted.engine.cancel_seen.is_set()
        assert app.output.exchanges[-1].outcome == "cancelled"
        assert not app._exit and app.return_code is None
        assert not any("quit" in text.lower() for text in _messages(app)), _messages(app)


async def test_ctrl_c_twice_quits_when_idle(fake_app: BloomApp) -> None:
    app = fake_app
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.handle is not None)
        await pilot.press("ctrl+c")
        await pilot.pause()
        assert not app._exit
        assert any("ctrl+c again" in text for text in _messages(app)), _messages(app)
        await pilot.press("ctrl+c")
        await wait_until(pilot, lambda: app._exit, what="the app to exit")
    assert app.return_code == 0


async def test_ctrl_c_presses_far_apart_do_not_quit(fake_app: BloomApp, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "QUIT_PRESS_SECONDS", 0.2)
    app = fake_app
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.handle is not None)
        await pilot.press("ctrl+c")
        await pilot.pause(0.4)
        await pilot.press("ctrl+c")
        await pilot.pause()
        assert not app._exit
        assert any("ctrl+c again" in text for text in _messages(app))  # asked again (the first one has expired)


async def test_ctrl_c_copies_a_selection_in_the_editor(fake_app: BloomApp) -> None:
    app = fake_app
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.handle is not None)
        await pilot.press(*"copy me")
        app.editor.select_all()
        await pilot.press("ctrl+c")
        await pilot.pause()
        assert app.clipboard == "copy me"
        assert not any("ctrl+c again" in text for text in _messages(app))
        await pilot.press("ctrl+c")  # a selection is not a quit
        await pilot.pause()
        assert not app._exit


@pytest.mark.parametrize("width", [80, 100, 120])
async def test_footer_keeps_the_main_keys_whole(fake_app: BloomApp, width: int) -> None:
    app = fake_app
    async with app.run_test(size=(width, 24)) as pilot:
        await wait_until(pilot, lambda: app.handle is not None)
        await wait_for_panel(pilot)
        await pilot.pause()
        keys = [key for key in app.screen.query(FooterKey) if key.display and key.region.width]
        palette = next(key for key in keys if key.has_class("-command-palette"))
        shown = {key.description for key in keys if key is not palette}
        assert {"Run", "Cancel", "Settings", "Model", "Quit"} <= shown, shown
        for key in keys:
            if key is not palette:
                # Whole: the key's full label fits before the palette key, nothing cut.
                assert key.region.right <= palette.region.x, (key.description, key.region, palette.region)
                assert key.render().plain.strip() == f"{key.key_display} {key.description}", key.description
        assert app.query_one(EnginePanel) is not None
