"""Small terminals: below 100 columns the panel folds into a one-line status (f4 opens it below the output),
and the output keeps its width. Snapshots at 80x24 and 60x15, with the scripted engine as in test_snapshots.

Update after an intended change with `pytest tests/tui/test_small_terminals.py --snapshot-update`.
"""

from __future__ import annotations

import pytest
from textual.pilot import Pilot

from bloomtui.settings import Settings
from bloomtui.tui.app import PANEL_SIDE_MIN_WIDTH, BloomApp
from bloomtui.tui.engine_handle import ModelSpec
from bloomtui.tui.widgets.engine_panel import EnginePanel
from bloomtui.tui.widgets.status_line import StatusLine
from tests.tui.fakes import PIECES, ScriptedOpener
from tests.tui.helpers import wait_for_panel, wait_until

SQL = "The SQL command to extract all the users whose name starts with A is: "
SIZES = {"80x24": (80, 24), "60x15": (60, 15)}


def _app(opener: ScriptedOpener) -> BloomApp:
    return BloomApp(ModelSpec("bigscience/bloom-560m"), opener=opener, find_models=list, cursor_blink=False)


async def _opened(pilot: Pilot) -> None:
    await wait_until(pilot, lambda: pilot.app.handle is not None)  # type: ignore[attr-defined]
    await wait_for_panel(pilot)


async def _mid_generation(pilot: Pilot, scripted: ScriptedOpener) -> None:
    app: BloomApp = pilot.app  # type: ignore[assignment]
    await _opened(pilot)
    app.insert_prompt(SQL)
    await pilot.press("ctrl+j")
    await wait_until(pilot, scripted.engine.holding.is_set)
    await wait_until(pilot, lambda: app.output.exchanges[-1].text == "".join(PIECES[:12]))
    await wait_for_panel(pilot)


@pytest.mark.parametrize("size", list(SIZES))
def test_idle(snap_compare, scripted: ScriptedOpener, size: str) -> None:  # noqa: ANN001
    assert snap_compare(_app(scripted), terminal_size=SIZES[size], run_before=_opened)


@pytest.mark.parametrize("size", list(SIZES))
def test_mid_generation(snap_compare, scripted: ScriptedOpener, size: str) -> None:  # noqa: ANN001
    scripted.engine.hold_token, scripted.engine.hold_block = 12, 9
    app = _app(scripted)
    app.settings = Settings(max_new_tokens=20)

    async def run_before(pilot: Pilot) -> None:
        await _mid_generation(pilot, scripted)

    assert snap_compare(app, terminal_size=SIZES[size], run_before=run_before)


@pytest.mark.parametrize("size", list(SIZES))
def test_panel_opened(snap_compare, scripted: ScriptedOpener, size: str) -> None:  # noqa: ANN001
    """80x24: the panel below the output; 60x15: in the output's place (f4 folds it again)."""
    scripted.engine.hold_token, scripted.engine.hold_block = 12, 9
    app = _app(scripted)
    app.settings = Settings(max_new_tokens=20)

    async def run_before(pilot: Pilot) -> None:
        await _mid_generation(pilot, scripted)
        await pilot.press("f4")
        await wait_until(pilot, lambda: app.query_one(EnginePanel).display)

    assert snap_compare(app, terminal_size=SIZES[size], run_before=run_before)


@pytest.mark.parametrize("width, panel_side", [(PANEL_SIDE_MIN_WIDTH - 1, False), (PANEL_SIDE_MIN_WIDTH, True)])
async def test_output_keeps_its_width_and_f4_toggles(scripted: ScriptedOpener, width: int, panel_side: bool) -> None:
    app = _app(scripted)
    async with app.run_test(size=(width, 30)) as pilot:
        await _opened(pilot)
        panel, status, output = app.query_one(EnginePanel), app.query_one(StatusLine), app.output
        assert panel.display == panel_side and status.display != panel_side
        if not panel_side:
            assert output.size.width >= width - 4  # borders only: nothing beside it
            assert "ready" in str(status.render())
        await pilot.press("f4")
        await pilot.pause()
        assert panel.display != panel_side and status.display == panel_side
        if not panel_side:  # opened below the output, full width
            assert panel.region.y > output.region.y and panel.size.width >= width - 4
        await pilot.press("f4")
        await pilot.pause()
        assert panel.display == panel_side


@pytest.mark.parametrize("size", list(SIZES.values()), ids=list(SIZES))
async def test_settings_dialog_scrolls_to_every_field_on_a_short_terminal(
    scripted: ScriptedOpener, size: tuple[int, int]
) -> None:
    """Ten settings do not fit 24 rows: the dialog scrolls, and moving focus brings each field into view."""
    from textual.widgets import Button

    app = _app(scripted)
    async with app.run_test(size=size) as pilot:
        await _opened(pilot)
        await pilot.press("f2")
        await wait_until(pilot, lambda: app.screen.query("#settings-dialog"))
        dialog = app.screen.query_one("#settings-dialog")
        assert dialog.max_scroll_y > 0
        save = app.screen.query_one("#save", Button)
        save.focus()  # scrolls it into view (animated)
        await wait_until(pilot, lambda: dialog.scrollable_content_region.contains_region(save.region), timeout=3)
        await pilot.press("enter")
        await wait_until(pilot, lambda: not app.screen.query("#settings-dialog"))


FOOTER_KEYS = ("^q Quit", "^j Run", "esc Cancel", "f2 Settings", "^o Model", "^s Save", "f4 Panel")


def _footer_line(app: BloomApp) -> str:
    return app.screen._compositor.render_strips()[-1].text


async def test_footer_keeps_its_keys_whole_giving_up_the_least_needed_first(scripted: ScriptedOpener) -> None:
    """Roomy where all fit; compact at 80 columns, every key still there (^s Save too); at 60, save and model
    (both in the palette) go, and the rest stay whole beside the palette's key."""
    app = _app(scripted)
    async with app.run_test(size=(120, 24)) as pilot:
        await _opened(pilot)
        for width, gone in ((120, ()), (80, ()), (60, ("^o Model", "^s Save")), (100, ())):
            await pilot.resize_terminal(width, 24)
            await pilot.pause()
            line = _footer_line(app)
            assert len(line) == width and line.rstrip().endswith("^p palette"), line
            assert [key for key in FOOTER_KEYS if key not in line] == list(gone), line
            assert ("  ^j Run  " in line) == (width >= 100), line  # roomy: two spaces between keys
