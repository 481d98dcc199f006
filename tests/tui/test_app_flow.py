"""The app with a scripted engine: streaming, cancel, quit, settings, history, palette and files."""

from __future__ import annotations

import json
from pathlib import Path

from textual.command import CommandList, CommandPalette
from textual.widgets import Input, Select, Static

from bloomtui import locations
from bloomtui.cached_models import CachedModel
from bloomtui.engine import EngineOptions
from bloomtui.errors import CheckpointError
from bloomtui.settings import Settings, load_settings, save_settings
from bloomtui.tui.app import BloomApp
from bloomtui.tui.commands import BLOOM_PROMPTS
from bloomtui.tui.engine_handle import DEMO, ModelSpec
from bloomtui.tui.screens.model_picker import ModelPickerScreen
from bloomtui.tui.screens.settings import SettingsScreen
from bloomtui.tui.widgets.engine_panel import EnginePanel
from bloomtui.tui.widgets.status_line import summary
from tests.tui.fakes import PIECES, ScriptedEngine, ScriptedOpener, fake_info
from tests.tui.helpers import wait_for_panel, wait_until


async def _start_held_run(pilot, app: BloomApp, scripted: ScriptedOpener, hold_token: int = 5) -> None:  # noqa: ANN001
    await wait_until(pilot, lambda: app.handle is not None, what="the model to open")
    scripted.engine.hold_token, scripted.engine.hold_block = hold_token, 3
    app.insert_prompt("The SQL command to extract all the users whose name starts with A is: ")
    await pilot.press("ctrl+j")
    await wait_until(pilot, scripted.engine.holding.is_set, what="the engine to hold mid-pass")


async def test_tokens_stream_while_the_run_is_going(fake_app: BloomApp, scripted: ScriptedOpener) -> None:
    app = fake_app
    async with app.run_test(size=(120, 36)) as pilot:
        await _start_held_run(pilot, app, scripted)
        await wait_until(pilot, lambda: app.output.exchanges[-1].text == "".join(PIECES[:5]), what="5 tokens shown")
        assert app.running
        await wait_for_panel(pilot)
        snap = app.query_one(EnginePanel).snapshot
        assert (snap.state, snap.tokens, snap.block, snap.blocks_done, snap.pass_kind) == ("running", 5, 2, 3, "decode")
        assert snap.read_history and snap.read_mbps is not None
        assert snap.eta_pass is not None and snap.eta_run is not None
        assert snap.seconds_per_token == 0.9
        text = str(app.query_one("#panel-block", Static).render())
        assert "block 3 / 24" in text
        scripted.engine.release.set()
        await wait_until(pilot, lambda: not app.running)
        assert app.output.exchanges[-1].text == "".join(PIECES)


async def test_escape_cancels_keeps_partial_text_then_next_prompt_runs(
    fake_app: BloomApp, scripted: ScriptedOpener
) -> None:
    app = fake_app
    async with app.run_test(size=(120, 36)) as pilot:
        await _start_held_run(pilot, app, scripted)
        await pilot.press("escape")
        await wait_until(pilot, lambda: not app.running, what="the cancel to land")
        assert scripted.engine.cancel_seen.is_set()
        exchange = app.output.exchanges[-1]
        assert (exchange.outcome, exchange.text) == ("cancelled", "".join(PIECES[:5]))
        assert exchange.status == "cancelled after 5 tokens"
        await wait_for_panel(pilot)
        panel = app.query_one(EnginePanel)
        assert panel.snapshot.state == "cancelled"
        assert "cancelled" in str(app.query_one("#panel-state", Static).render())

        # Text of the cancelled run arriving late changes nothing.
        app.pending.add(1, "late")
        scripted.engine.hold_token = None
        app.settings = Settings(max_new_tokens=3)
        app.insert_prompt("Next prompt")
        await pilot.press("ctrl+j")
        app.pending.add(1, "later")
        await wait_until(pilot, lambda: len(app.output.exchanges) == 2 and not app.running)
        assert app.output.exchanges[0].text == "".join(PIECES[:5])
        assert app.output.exchanges[1].text == "".join(PIECES[:3])
        assert app.output.exchanges[1].outcome == "done"


async def test_quit_mid_generation(fake_app: BloomApp, scripted: ScriptedOpener) -> None:
    app = fake_app
    async with app.run_test(size=(120, 36)) as pilot:
        await _start_held_run(pilot, app, scripted)
        await pilot.press("ctrl+q")
        await wait_until(pilot, lambda: app._exit, what="the app to exit")
    assert scripted.engine.cancel_seen.wait(10)
    app.close_engine(timeout=10)
    assert scripted.engine.closed


async def test_settings_dialog_saves_and_persists(fake_app: BloomApp) -> None:
    app = fake_app
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.press("f2")
        await wait_until(pilot, lambda: isinstance(app.screen, SettingsScreen))
        screen = app.screen
        screen.query_one("#max_new_tokens", Input).value = "7"
        await pilot.click("#sample")
        screen.query_one("#temperature", Input).value = "0.7"
        screen.query_one("#seed", Input).value = "42"
        screen.query_one("#repetition_penalty", Input).value = "1.2"
        await pilot.click("#save")
        await wait_until(pilot, lambda: not isinstance(app.screen, SettingsScreen))
    saved = json.loads(locations.settings_file().read_text())
    assert saved["max_new_tokens"] == 7 and saved["sample"] is True and saved["seed"] == 42
    settings, warning = load_settings()
    assert warning is None
    assert (settings.temperature, settings.repetition_penalty) == (0.7, 1.2)
    params = settings.sampling_params()
    assert (params.max_new_tokens, params.temperature, params.seed) == (7, 0.7, 42)


async def _save_draft(pilot, app: BloomApp, value: str) -> None:  # noqa: ANN001
    await pilot.press("f2")
    await wait_until(pilot, lambda: isinstance(app.screen, SettingsScreen))
    app.screen.query_one("#draft", Select).value = value
    await pilot.press("ctrl+s")
    await wait_until(pilot, lambda: not isinstance(app.screen, SettingsScreen))


async def test_draft_setting_persists_and_a_draft_model_reopens_the_model(
    scripted: ScriptedOpener, isolated_dirs: Path
) -> None:
    cached = [CachedModel("bigscience/bloom-560m", isolated_dirs, 1_100_000_000)]
    app = BloomApp(ModelSpec("bigscience/bloom-1b7"), opener=scripted, find_models=lambda: cached, cursor_blink=False)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.handle is not None)
        assert scripted.calls[-1][0].draft == ""
        await _save_draft(pilot, app, "prompt-lookup")  # no model to load: the open model stays
        assert len(scripted.calls) == 1 and load_settings()[0].draft == "prompt-lookup"
        # Offered because it is cached and small (a Select refuses a value it does not list); opened beside the
        # model, so saving it reopens the model.
        await _save_draft(pilot, app, "bigscience/bloom-560m")
        await wait_until(pilot, lambda: len(scripted.calls) == 2 and app.handle is not None)
        assert scripted.calls[-1][0] == ModelSpec("bigscience/bloom-1b7", draft="bigscience/bloom-560m")
        assert load_settings()[0].draft == "bigscience/bloom-560m"


async def test_settings_dialog_refuses_invalid_values(fake_app: BloomApp) -> None:
    app = fake_app
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.press("f2")
        await wait_until(pilot, lambda: isinstance(app.screen, SettingsScreen))
        screen = app.screen
        screen.query_one("#top_p", Input).value = "1.5"
        await pilot.click("#save")
        await pilot.pause()
        assert app.screen is screen  # still open
        assert "Top-p must be in (0, 1]" in str(screen.query_one("#settings-error", Static).render())
        screen.query_one("#top_p", Input).value = "0.9"
        screen.query_one("#ram_budget", Input).value = "lots"
        await pilot.press("ctrl+s")  # a second click this soon would land in the button's press animation
        await pilot.pause()
        assert "RAM budget: cannot read 'lots'" in str(screen.query_one("#settings-error", Static).render())
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.screen is not screen)
    assert not locations.settings_file().exists()


async def test_changing_ram_budget_reopens_the_engine(fake_app: BloomApp, scripted: ScriptedOpener) -> None:
    app = fake_app
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.handle is not None)
        for budget, refused in (("500", True), ("2GB", False)):
            calls, seen = len(scripted.calls), len(app.output.query("Notice"))
            await pilot.press("f2")
            await wait_until(pilot, lambda: isinstance(app.screen, SettingsScreen))
            app.screen.query_one("#ram_budget", Input).value = budget
            await pilot.click("#save")
            await wait_until(pilot, lambda: not isinstance(app.screen, SettingsScreen))
            await wait_until(pilot, lambda n=calls + 1: len(scripted.calls) == n, what="a reopen")
            await wait_until(pilot, lambda: app.handle is not None, what="a model open")
            await wait_for_panel(pilot)
            new = [notice.render().plain for notice in list(app.output.query("Notice"))[seen:]]  # type: ignore[union-attr]
            # Too small: refused before the model in use was closed, so it stays open.
            assert any("below the 101 MB" in notice for notice in new) == refused, new
            assert app.tracker.snapshot().state == "idle"
    assert [options.ram_budget for _spec, options in scripted.calls] == [None, 500, 2_000_000_000]


async def test_open_error_is_shown_and_app_stays_usable(scripted: ScriptedOpener) -> None:
    scripted.error = CheckpointError("/models/x: no config.json here")
    app = BloomApp(ModelSpec("/models/x"), opener=scripted, find_models=list, cursor_blink=False)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.tracker.snapshot().state == "error", what="the error")
        notice = app.output.query("Notice").last()
        assert "Bad checkpoint: /models/x: no config.json here" in notice.render().plain  # type: ignore[union-attr]
        assert any(n.severity == "error" for n in app._notifications)
        await pilot.press(*"Hi", "ctrl+j")  # no model: refused politely
        assert not app.running and not app.output.exchanges
        scripted.error = None
        app.action_open_demo()
        await wait_until(pilot, lambda: app.handle is not None)
        assert scripted.calls[-1][0] == DEMO


async def test_no_model_offers_the_demo_and_how_to_download(scripted: ScriptedOpener) -> None:
    app = BloomApp(None, opener=scripted, find_models=list, cursor_blink=False)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ModelPickerScreen))
        text = " ".join(str(w.render()) for w in app.screen.query(Static))
        assert "No BLOOM model was found" in text
        assert "bloomtui download bigscience/bloom-560m" in text
        options = app.screen.query_one("#picker-options")
        assert "trained on the Python docs" in str(options.get_option_at_index(0).prompt)  # type: ignore[attr-defined]
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.handle is not None)
    assert scripted.calls[0][0] == DEMO


async def test_picker_lists_cached_models(scripted: ScriptedOpener, tmp_path: Path) -> None:
    cached = [CachedModel("bigscience/bloom-560m", tmp_path, 1_118_000_000)]
    app = BloomApp(None, opener=scripted, find_models=lambda: cached, cursor_blink=False)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ModelPickerScreen))
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.handle is not None)
    assert scripted.calls[0][0] == ModelSpec("bigscience/bloom-560m")


async def test_picker_cancel_leaves_a_usable_app(scripted: ScriptedOpener) -> None:
    app = BloomApp(None, opener=scripted, find_models=list, cursor_blink=False)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ModelPickerScreen))
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, ModelPickerScreen))
        assert "ctrl+o opens one" in app.output.query("Notice").last().render().plain  # type: ignore[union-attr]
        await pilot.press("ctrl+o")
        await wait_until(pilot, lambda: isinstance(app.screen, ModelPickerScreen))
        app.screen.query_one("#picker-path", Input).value = "/some/folder"
        await pilot.press("tab", "enter")
        await wait_until(pilot, lambda: app.handle is not None)
    assert scripted.calls[0][0] == ModelSpec("/some/folder")


async def test_history_recall_and_persistence(fake_app: BloomApp) -> None:
    app = fake_app
    app.settings = Settings(max_new_tokens=2)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.handle is not None)
        for prompt in ("first prompt", "second\nprompt"):
            app.insert_prompt(prompt)
            await pilot.press("ctrl+j")
            await wait_until(pilot, lambda: not app.running and app.editor.text == "")
        await pilot.press(*"draft")
        await pilot.press("up")
        assert app.editor.text == "second\nprompt"
        await pilot.press("up")  # cursor is at the end (second line): up moves within the text first
        await pilot.press("up")
        assert app.editor.text == "first prompt"
        await pilot.press("down")
        assert app.editor.text == "second\nprompt"
        await pilot.press("down", "down")
        assert app.editor.text == "draft"
    assert json.loads(locations.history_file().read_text()) == ["first prompt", "second\nprompt"]
    assert BloomApp(opener=ScriptedOpener()).history == ["first prompt", "second\nprompt"]


async def test_palette_inserts_example_prompt(fake_app: BloomApp) -> None:
    app = fake_app
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.press("ctrl+p")
        await pilot.press(*"Example prompt: step")

        def one_match() -> bool:
            if not isinstance(app.screen, CommandPalette):
                return False
            commands = app.screen.query_one(CommandList)
            return commands.option_count == 1 and commands.highlighted == 0

        await wait_until(pilot, one_match, what="the palette to find the command")
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.editor.text == BLOOM_PROMPTS[2][1], what="the example prompt")


async def test_save_transcript_and_copy_output(fake_app: BloomApp) -> None:
    app = fake_app
    app.settings = Settings(max_new_tokens=4)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.handle is not None)
        app.insert_prompt("SQL please: ")
        await pilot.press("ctrl+j")
        await wait_until(pilot, lambda: not app.running)
        await pilot.press("ctrl+s")
        await pilot.pause()
        files = list(locations.transcripts_dir().glob("transcript-*.md"))
        assert len(files) == 1
        text = files[0].read_text()
        assert "SQL please: " in text and "".join(PIECES[:4]) in text and "done" in text
        assert any(str(files[0]) in str(n.message) for n in app._notifications)
        app.action_copy_output()
        assert app.clipboard == "SQL please: " + "".join(PIECES[:4])


async def test_broken_settings_file_warns_and_uses_defaults(scripted: ScriptedOpener) -> None:
    locations.settings_file().write_text("{not json")
    app = BloomApp(ModelSpec("x"), opener=scripted, find_models=list, cursor_blink=False)
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.pause()
        assert app.settings == Settings()
        assert any("not valid JSON" in str(n.message) for n in app._notifications)


async def test_theme_is_remembered(fake_app: BloomApp) -> None:
    save_settings(Settings(theme="nord"))
    app = BloomApp(ModelSpec("x"), opener=ScriptedOpener(), find_models=list, cursor_blink=False)
    async with app.run_test(size=(120, 36)) as pilot:
        assert app.theme == "nord"
        app.theme = "gruvbox"
        await pilot.pause()
    assert load_settings()[0].theme == "gruvbox"


async def test_no_color_is_honoured(monkeypatch, scripted: ScriptedOpener) -> None:  # noqa: ANN001
    monkeypatch.setenv("NO_COLOR", "1")
    app = BloomApp(ModelSpec("x"), opener=scripted, find_models=list, cursor_blink=False)
    assert app.no_color
    app.settings = Settings(max_new_tokens=3)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.handle is not None)
        app.insert_prompt("Hello")
        await pilot.press("ctrl+j")
        await wait_until(pilot, lambda: not app.running)
        assert app.output.exchanges[-1].text == "".join(PIECES[:3])


async def test_cli_budget_shows_in_dialog_and_is_not_saved_unless_changed(scripted: ScriptedOpener) -> None:
    app = BloomApp(ModelSpec("x"), EngineOptions(ram_budget=500), opener=scripted, find_models=list, cursor_blink=False)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.tracker.snapshot().state == "error", what="the budget error")
        await pilot.press("f2")
        await wait_until(pilot, lambda: isinstance(app.screen, SettingsScreen))
        assert app.screen.query_one("#ram_budget", Input).value == "500B"
        app.screen.query_one("#max_new_tokens", Input).value = "9"
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: not isinstance(app.screen, SettingsScreen))
        assert load_settings()[0] == Settings(max_new_tokens=9)  # --ram-budget stays a one-off
        assert len(scripted.calls) == 1
        await pilot.press("f2")
        await wait_until(pilot, lambda: isinstance(app.screen, SettingsScreen))
        app.screen.query_one("#ram_budget", Input).value = "auto"
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: app.handle is not None, what="the reopen with the automatic budget")
    assert [options.ram_budget for _spec, options in scripted.calls] == [500, None]


async def test_every_token_arrives_in_order_at_a_high_event_rate() -> None:
    pieces = tuple(f"{i} " for i in range(1500))
    engine = ScriptedEngine(info=fake_info(8), pieces=pieces)
    app = BloomApp(ModelSpec("x"), opener=ScriptedOpener(engine), find_models=list, cursor_blink=False)
    app.settings = Settings(max_new_tokens=len(pieces))
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.handle is not None)
        app.insert_prompt("count: ")
        await pilot.press("ctrl+j")
        await wait_until(pilot, lambda: not app.running, timeout=60, what="1500 tokens (36,000 events)")
        assert app.output.exchanges[-1].text == "".join(pieces)
        await wait_for_panel(pilot)
        assert app.query_one(EnginePanel).snapshot.tokens == len(pieces)


async def test_blank_seed_is_valid_in_the_settings_dialog(fake_app: BloomApp) -> None:
    app = fake_app
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.press("f2")
        await wait_until(pilot, lambda: isinstance(app.screen, SettingsScreen))
        for name in ("seed", "draft_tokens"):  # blank is documented: no seed, adaptive draft length
            field = app.screen.query_one(f"#{name}", Input)
            field.focus()
            field.value = "7"
            await pilot.pause()
            field.value = ""
            await pilot.press("tab")  # validated on change and on blur
            await pilot.pause()
            assert not field.has_class("-invalid"), name
        seed = app.screen.query_one("#seed", Input)
        seed.value = "x"
        await pilot.pause()
        assert seed.has_class("-invalid")  # not a number still is


async def test_cancelled_is_said_once(fake_app: BloomApp, scripted: ScriptedOpener) -> None:
    app = fake_app
    async with app.run_test(size=(120, 36)) as pilot:
        await _start_held_run(pilot, app, scripted)
        await pilot.press("escape")
        await wait_until(pilot, lambda: not app.running, what="the cancel to land")
        await wait_for_panel(pilot)
        texts = [
            app.output.runs[app.run_number].render().plain,
            str(app.query_one("#panel-state", Static).render()),
            summary(app.tracker.snapshot(), "f4").plain,  # the folded panel's line (hidden at this width)
        ]
        for text in texts:
            assert text.lower().count("cancelled") == 1, text
        assert "cancelled after 5 tokens" in texts[0]


async def _palette_prompts(pilot, app: BloomApp) -> list[str]:  # noqa: ANN001
    await pilot.press("ctrl+p")
    await pilot.press(*"Example prompt")
    await wait_until(
        pilot, lambda: isinstance(app.screen, CommandPalette) and app.screen.query_one(CommandList).option_count
    )
    await pilot.pause(0.3)
    commands = app.screen.query_one(CommandList)
    prompts = [str(commands.get_option_at_index(i).prompt) for i in range(commands.option_count)]
    await pilot.press("escape")
    await wait_until(pilot, lambda: not isinstance(app.screen, CommandPalette))
    return prompts


async def test_example_prompts_fit_the_open_model(scripted: ScriptedOpener) -> None:
    from dataclasses import replace

    app = BloomApp(DEMO, opener=scripted, find_models=list, cursor_blink=False)
    scripted.engine.info = replace(scripted.engine.info, demo=True)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.handle is not None)
        demo = " ".join(await _palette_prompts(pilot, app))
        assert "lists" in demo and "SQL" not in demo and "Spanish" not in demo
        scripted.engine.info = replace(scripted.engine.info, demo=False)
        app.open_model(ModelSpec("bigscience/bloom-560m"))
        await wait_until(pilot, lambda: app.handle is not None and app.spec == ModelSpec("bigscience/bloom-560m"))
        bloom = " ".join(await _palette_prompts(pilot, app))
        assert "SQL" in bloom and "Spanish" in bloom and "lists" not in bloom


async def test_idle_memory_is_not_shown_over_its_ceiling(scripted: ScriptedOpener) -> None:
    # RSS after the open above runtime + budget (the tokenizer, torch's allocator: not in the budget).
    scripted.engine.rss_bytes = scripted.engine.baseline_rss + scripted.engine.info.total_budget + 30_000_000
    app = BloomApp(ModelSpec("x"), opener=scripted, find_models=list, cursor_blink=False)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.handle is not None)
        await wait_for_panel(pilot)
        panel = app.query_one(EnginePanel)
        assert not panel.has_class("-over-budget")
        line = str(app.query_one("#panel-memory", Static).render())
        assert "RSS    2.08 GB of ~" in line, line
        bar = app.query_one("#memory-bar")
        assert bar.progress < bar.total  # type: ignore[attr-defined]


async def test_tokens_reach_the_screen_in_batches_not_one_redraw_each() -> None:
    """A small model makes hundreds of tokens a second: the pane asks for a redraw a few times a second, not
    once per token (that cost the engine half its speed on a 2-core machine)."""
    import time

    from bloomtui.tui.widgets.run_output import RunOutput

    pieces = tuple(f"{i} " for i in range(1500))
    engine = ScriptedEngine(info=fake_info(2), pieces=pieces)
    app = BloomApp(ModelSpec("x"), opener=ScriptedOpener(engine), find_models=list, cursor_blink=False)
    app.settings = Settings(max_new_tokens=len(pieces))
    redraws = 0
    refresh = RunOutput.refresh

    def counting(self: RunOutput, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        nonlocal redraws
        redraws += 1
        return refresh(self, *args, **kwargs)

    RunOutput.refresh = counting  # type: ignore[method-assign]
    try:
        async with app.run_test(size=(120, 36)) as pilot:
            await wait_until(pilot, lambda: app.handle is not None)
            app.insert_prompt("count: ")
            start = time.monotonic()
            await pilot.press("ctrl+j")
            await wait_until(pilot, lambda: not app.running, timeout=60)
            seconds = time.monotonic() - start
            assert app.output.exchanges[-1].text == "".join(pieces)
    finally:
        RunOutput.refresh = refresh  # type: ignore[method-assign]
    assert redraws <= 15 * seconds + 10, (redraws, seconds)
