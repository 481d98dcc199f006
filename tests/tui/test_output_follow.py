"""The output pane follows the streamed text: a new run always scrolls to its end, a run keeps following
unless the user scrolled up during it (until they scroll back to the bottom), and re-wrapping (f4, a resize)
keeps the end in view when it was there."""

from __future__ import annotations

from textual.pilot import Pilot

from bloomtui.settings import Settings
from bloomtui.tui.app import BloomApp
from bloomtui.tui.engine_handle import ModelSpec
from tests.tui.fakes import ScriptedEngine, ScriptedOpener, fake_info
from tests.tui.helpers import wait_until

LINES = tuple(f"line {i}\n" for i in range(60))
WORDS = tuple(f"word{i} " for i in range(600))  # wraps: its height depends on the pane's width


def _app(engine: ScriptedEngine) -> BloomApp:
    app = BloomApp(ModelSpec("x"), opener=ScriptedOpener(engine), find_models=list, cursor_blink=False)
    app.settings = Settings(max_new_tokens=len(engine.pieces))
    return app


def _at_end(app: BloomApp) -> bool:
    output = app.output
    return output.max_scroll_y > 0 and output.scroll_y >= output.max_scroll_y


async def _run(pilot: Pilot, app: BloomApp, prompt: str) -> None:
    app.insert_prompt(prompt)
    await pilot.press("ctrl+j")
    await wait_until(pilot, lambda: not app.running and app.output.exchanges[-1].outcome == "done", what="the run")


async def _scroll_up(pilot: Pilot, app: BloomApp) -> None:
    """What a user does to read back: the pane focused, page up."""
    app.output.focus()
    await pilot.press("pageup", "pageup")
    await pilot.wait_for_scheduled_animations()
    await pilot.pause()


async def test_a_new_run_scrolls_to_the_end_after_the_user_scrolled_up() -> None:
    engine = ScriptedEngine(info=fake_info(4), pieces=LINES)
    app = _app(engine)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.handle is not None)
        await _run(pilot, app, "first: ")
        await wait_until(pilot, lambda: _at_end(app), timeout=3, what="the first run's end in view")
        await _scroll_up(pilot, app)
        assert not _at_end(app)
        engine.hold_token = 40
        app.editor.focus()
        app.insert_prompt("second: ")
        await pilot.press("ctrl+j")
        await wait_until(pilot, engine.holding.is_set)
        await wait_until(pilot, lambda: app.output.exchanges[-1].text == "".join(LINES[:40]))
        await wait_until(pilot, lambda: _at_end(app), timeout=3, what="the new run followed")
        engine.release.set()
        await wait_until(pilot, lambda: not app.running)
        await wait_until(pilot, lambda: _at_end(app), timeout=3, what="the end in view when it ends")


async def test_rewrapping_keeps_the_end_in_view() -> None:
    engine = ScriptedEngine(info=fake_info(4), pieces=WORDS)
    app = _app(engine)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.handle is not None)
        await _run(pilot, app, "words: ")
        await wait_until(pilot, lambda: _at_end(app), timeout=3, what="the end in view")
        for _ in range(2):  # f4 hides the panel (wider: shorter text), then shows it (narrower: taller)
            await pilot.press("f4")
            await pilot.pause()
            await wait_until(pilot, lambda: _at_end(app), timeout=3, what="the end in view after f4")
        await pilot.resize_terminal(100, 30)
        await wait_until(pilot, lambda: _at_end(app), timeout=3, what="the end in view after a resize")
        engine.hold_token = 300
        app.insert_prompt("more: ")
        await pilot.press("ctrl+j")
        await wait_until(pilot, engine.holding.is_set)
        await pilot.press("f4")  # re-wrapped mid-run
        await wait_until(pilot, lambda: app.output.exchanges[-1].text == "".join(WORDS[:300]))
        await wait_until(pilot, lambda: _at_end(app), timeout=3, what="the streaming run followed")
        engine.release.set()
        await wait_until(pilot, lambda: not app.running)


async def test_scrolling_up_mid_run_stops_following_until_back_at_the_bottom() -> None:
    engine = ScriptedEngine(info=fake_info(4), pieces=LINES, hold_tokens=(30, 45))
    app = _app(engine)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.handle is not None)
        app.insert_prompt("lines: ")
        await pilot.press("ctrl+j")
        await wait_until(pilot, lambda: engine.holding.is_set() and len(app.output.exchanges[-1].text) > 0)
        await wait_until(pilot, lambda: app.output.exchanges[-1].text == "".join(LINES[:30]))
        await wait_until(pilot, lambda: _at_end(app), timeout=3, what="following while streaming")
        await _scroll_up(pilot, app)
        reading_at = app.output.scroll_y
        engine.release.set()
        await wait_until(pilot, lambda: app.output.exchanges[-1].text == "".join(LINES[:45]))
        await pilot.pause(0.3)
        assert app.output.scroll_y == reading_at  # left where the user is reading
        await pilot.press("end")  # back to the bottom: following resumes
        await pilot.wait_for_scheduled_animations()
        engine.release.set()
        await wait_until(pilot, lambda: not app.running)
        await wait_until(pilot, lambda: _at_end(app), timeout=3, what="following again")
