"""The model picker's "Prepare from the hub": a real prepare from the stand-in hub on the screen's worker, its
progress shown, escape stopping it, a second start resuming, and the prepared model opening when done."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textual.widgets import Input, OptionList, Static

from bloomtui.tui.app import BloomApp
from bloomtui.tui.engine_handle import ModelSpec
from bloomtui.tui.screens.hub_prepare import HubPrepareScreen
from bloomtui.tui.screens.model_picker import ModelPickerScreen
from tests.checkpoints import write_checkpoint
from tests.hub_standin import HubStandIn
from tests.tui.fakes import ScriptedOpener
from tests.tui.helpers import wait_until

REPO = "bigscience/bloom-standin"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    stand_in = HubStandIn()
    stand_in.add(REPO, write_checkpoint(tmp_path / "src", layout="bigscience", dtype="float16").path)
    yield stand_in
    stand_in.close()


async def _open_hub_screen(app: BloomApp, pilot, out: Path) -> HubPrepareScreen:  # noqa: ANN001 - a Pilot
    await wait_until(pilot, lambda: isinstance(app.screen, ModelPickerScreen))
    options = app.screen.query_one("#picker-options", OptionList)
    options.highlighted = next(i for i in range(options.option_count) if options.get_option_at_index(i).id == "hub")
    await pilot.press("enter")
    await wait_until(pilot, lambda: isinstance(app.screen, HubPrepareScreen))
    screen = app.screen
    assert isinstance(screen, HubPrepareScreen)
    screen.query_one("#hub-repo", Input).value = REPO
    screen.query_one("#hub-out", Input).value = str(out)
    return screen


def _status(screen: HubPrepareScreen) -> str:
    return str(screen.query_one("#hub-status", Static).render())


async def test_prepare_from_the_hub_opens_the_result(scripted: ScriptedOpener, hub: HubStandIn, tmp_path: Path) -> None:
    app = BloomApp(None, opener=scripted, find_models=list, cursor_blink=False)
    app.hub_endpoint = hub.url
    out = tmp_path / "out"
    async with app.run_test(size=(120, 40)) as pilot:
        await _open_hub_screen(app, pilot, out)
        await pilot.click("#hub-start")
        await wait_until(pilot, lambda: app.handle is not None, timeout=60)
    assert scripted.calls[0][0] == ModelSpec(str(out))
    assert json.loads((out / "config.json").read_text())["quantization_config"]["weights"] == "int4"


async def test_escape_stops_and_start_resumes(scripted: ScriptedOpener, hub: HubStandIn, tmp_path: Path) -> None:
    app = BloomApp(None, opener=scripted, find_models=list, cursor_blink=False)
    app.hub_endpoint = hub.url
    hub.faults.rate = 100_000  # slow enough to stop mid-way
    out = tmp_path / "out"
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await _open_hub_screen(app, pilot, out)
        await pilot.click("#hub-start")
        await wait_until(pilot, lambda: "shard 2/" in _status(screen), timeout=60)
        await pilot.press("escape")
        await wait_until(pilot, lambda: _status(screen).startswith("Stopped."), timeout=30)
        assert isinstance(app.screen, HubPrepareScreen) and (tmp_path / "out.partial" / "journal.json").is_file()
        hub.faults.rate = None
        await pilot.click("#hub-start")
        await wait_until(pilot, lambda: app.handle is not None, timeout=60)
    assert scripted.calls[0][0] == ModelSpec(str(out)) and not (tmp_path / "out.partial").exists()
