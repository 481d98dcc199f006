"""SVG snapshots of the main screen and dialogs, driven by the scripted engine so every run draws the same.

Update after an intended change with `pytest tests/tui/test_snapshots.py --snapshot-update`, and look at
the report (snapshot_report.html) before committing the new SVGs.
"""

from __future__ import annotations

from textual.pilot import Pilot
from textual.widgets import Input

from bloomtui.settings import Settings
from bloomtui.tui.app import BloomApp
from bloomtui.tui.engine_handle import ModelSpec
from tests.tui.fakes import PIECES, ScriptedOpener
from tests.tui.helpers import wait_for_panel, wait_until

SIZE = (130, 40)
SQL = "The SQL command to extract all the users whose name starts with A is: "


def _app(opener: ScriptedOpener) -> BloomApp:
    return BloomApp(ModelSpec("bigscience/bloom-560m"), opener=opener, find_models=list, cursor_blink=False)


async def _opened(pilot: Pilot) -> None:
    await wait_until(pilot, lambda: pilot.app.handle is not None)  # type: ignore[attr-defined]
    await wait_for_panel(pilot)


def test_main_screen_idle(snap_compare, scripted: ScriptedOpener) -> None:  # noqa: ANN001
    assert snap_compare(_app(scripted), terminal_size=SIZE, run_before=_opened)


def test_main_screen_mid_generation(snap_compare, scripted: ScriptedOpener) -> None:  # noqa: ANN001
    scripted.engine.hold_token, scripted.engine.hold_block = 12, 9
    app = _app(scripted)
    app.settings = Settings(max_new_tokens=20)

    async def run_before(pilot: Pilot) -> None:
        await _opened(pilot)
        app.insert_prompt(SQL)
        await pilot.press("ctrl+j")
        await wait_until(pilot, scripted.engine.holding.is_set)
        await wait_until(pilot, lambda: app.output.exchanges[-1].text == "".join(PIECES[:12]))
        await wait_for_panel(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_settings_dialog(snap_compare, scripted: ScriptedOpener) -> None:  # noqa: ANN001
    app = _app(scripted)

    async def run_before(pilot: Pilot) -> None:
        await _opened(pilot)
        await pilot.press("f2")
        await wait_until(pilot, lambda: app.screen.query("#settings-dialog"))
        for field in app.screen.query(Input):
            field.cursor_blink = False

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_no_model_picker(snap_compare, scripted: ScriptedOpener) -> None:  # noqa: ANN001
    app = BloomApp(None, opener=scripted, find_models=list, cursor_blink=False)

    async def run_before(pilot: Pilot) -> None:
        await wait_until(pilot, lambda: app.screen.query("#picker-options"))
        for field in app.screen.query(Input):
            field.cursor_blink = False

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
