"""The settings dialog as a user drives it: Samples and the Greedy / sample switch, enter and tab, and what a
blank decoding field comes to."""

from __future__ import annotations

import json

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Switch

from bloomtui import locations
from bloomtui.engine.weights.generation_config import GenerationDefaults
from bloomtui.settings import Settings
from bloomtui.tui.app import BloomApp
from bloomtui.tui.engine_handle import ModelSpec
from bloomtui.tui.screens.settings import SettingsScreen
from tests.tui.fakes import ScriptedOpener
from tests.tui.helpers import wait_until


def _app(settings: Settings) -> BloomApp:
    app = BloomApp(ModelSpec("bigscience/bloom-560m"), opener=ScriptedOpener(), find_models=list, cursor_blink=False)
    app.settings = settings
    return app


async def _dialog(pilot: Pilot, screen: SettingsScreen | None = None) -> SettingsScreen:
    app: BloomApp = pilot.app  # type: ignore[assignment]
    if screen is None:
        await pilot.press("f2")
    else:
        app.push_screen(screen, app._settings_saved)
    await wait_until(pilot, lambda: isinstance(app.screen, SettingsScreen), what="the settings dialog")
    await pilot.pause()
    return app.screen  # type: ignore[return-value]


async def _set_samples(pilot: Pilot, screen: SettingsScreen, text: str) -> None:
    screen.query_one("#samples", Input).value = text
    await pilot.pause()


async def _save(pilot: Pilot) -> dict[str, object]:
    await pilot.press("ctrl+s")
    await wait_until(pilot, lambda: not isinstance(pilot.app.screen, SettingsScreen), what="the dialog to save")
    return json.loads(locations.settings_file().read_text())


@pytest.mark.parametrize("opened_with", [Settings(), Settings(samples=4)], ids=["samples 1", "samples 4"])
async def test_samples_back_to_1_undoes_the_switch_they_turned_on(opened_with: Settings) -> None:
    app = _app(opened_with)
    async with app.run_test(size=(100, 45)) as pilot:
        screen = await _dialog(pilot)
        switch, temperature = screen.query_one("#sample", Switch), screen.query_one("#temperature", Input)
        await _set_samples(pilot, screen, "3")
        assert switch.value and not temperature.disabled
        for back in ("1", ""):  # blank is 1 too
            await _set_samples(pilot, screen, back)
            assert not switch.value and temperature.disabled, back
            assert "greedy" in str(screen.query_one("#sample-label").render())
        saved = await _save(pilot)
    assert saved["sample"] is None and saved["samples"] == 1  # still the model's to decide: never chosen


async def _flip_on(pilot: Pilot, screen: SettingsScreen) -> Switch:
    """The user turns Greedy / sample on themselves: focus and space."""
    switch = screen.query_one("#sample", Switch)
    switch.focus()
    await pilot.press("space")
    await wait_until(pilot, lambda: switch.value, what="space to flip the switch")
    return switch


async def test_a_switch_the_user_turned_on_stays_on_when_samples_go_back_to_1() -> None:
    app = _app(Settings())
    async with app.run_test(size=(100, 45)) as pilot:
        screen = await _dialog(pilot)
        switch = await _flip_on(pilot, screen)
        await _set_samples(pilot, screen, "3")
        await _set_samples(pilot, screen, "1")
        assert switch.value
        saved = await _save(pilot)
    assert saved["sample"] is True


async def test_a_model_that_samples_shows_the_switch_on_until_chosen() -> None:
    app = _app(Settings())
    async with app.run_test(size=(100, 45)) as pilot:
        screen = await _dialog(pilot, SettingsScreen(Settings(), [], GenerationDefaults(do_sample=True)))
        switch = screen.query_one("#sample", Switch)
        assert switch.value
        await _set_samples(pilot, screen, "3")
        await _set_samples(pilot, screen, "1")
        assert switch.value  # back to what the model does
        saved = await _save(pilot)
    assert saved["sample"] is None


async def test_enter_on_the_switch_saves_and_space_flips_it() -> None:
    app = _app(Settings())
    async with app.run_test(size=(100, 45)) as pilot:
        screen = await _dialog(pilot)
        switch = await _flip_on(pilot, screen)
        await pilot.press("enter")
        await wait_until(pilot, lambda: not isinstance(app.screen, SettingsScreen), what="enter to save")
        assert switch.value  # enter did not flip it back
    assert json.loads(locations.settings_file().read_text())["sample"] is True


async def test_tab_goes_from_max_new_tokens_to_the_switch_and_samples_beside_it() -> None:
    app = _app(Settings())
    async with app.run_test(size=(100, 45)) as pilot:
        screen = await _dialog(pilot)
        assert screen.focused is not None and screen.focused.id == "max_new_tokens"
        order = []
        for _ in range(3):
            await pilot.press("tab")
            order.append(screen.focused.id if screen.focused else None)
        assert order == ["sample", "samples", "repetition_penalty"]  # greedy: temperature, top-k, top-p are off
        # On the screen too: the switch's row right below Max new tokens, Samples on it.
        rows = [screen.query_one(f"#{name}").region.y for name in ("max_new_tokens", "sample", "samples")]
        assert rows[0] < rows[1] == rows[2] < screen.query_one("#temperature").region.y


@pytest.mark.parametrize(
    "defaults, temperature, top_k",
    [
        (None, "blank = 0.8 (default)", "blank = 50 (default) · 0 = off"),
        (GenerationDefaults(temperature=0.7, top_k=0), "blank = the model's 0.7", "blank = the model's 0 · 0 = off"),
    ],
    ids=["model sets none", "model sets them"],
)
async def test_blank_decoding_fields_say_what_they_come_to(
    defaults: GenerationDefaults | None, temperature: str, top_k: str
) -> None:
    app = _app(Settings())
    async with app.run_test(size=(100, 45)) as pilot:
        screen = await _dialog(pilot, SettingsScreen(Settings(), [], defaults))
        assert screen.query_one("#temperature", Input).placeholder.startswith(temperature)
        assert screen.query_one("#top_k", Input).placeholder == top_k
