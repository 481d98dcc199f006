"""Samples: N continuations of one prompt, side by side (stacked on narrow terminals), streaming at once; keys
1..N pick one to continue from; escape cancels them all; the transcript keeps each; the panel shows their speed.

The scripted engine writes sample i as its pieces rotated by 3i (fakes.py), so the samples differ.

Update the snapshots after an intended change with `pytest tests/tui/test_samples.py --snapshot-update`.
"""

from __future__ import annotations

import json

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Static, Switch

from bloomtui import locations
from bloomtui.cli import main
from bloomtui.settings import Settings, load_settings, save_settings
from bloomtui.tui.app import BloomApp
from bloomtui.tui.engine_handle import ModelSpec
from bloomtui.tui.screens.settings import SettingsScreen
from bloomtui.tui.widgets.engine_panel import EnginePanel
from bloomtui.tui.widgets.run_output import RunOutput
from bloomtui.tui.widgets.samples_view import SamplePane, SamplesView, grid_shape
from bloomtui.tui.widgets.status_line import StatusLine
from tests.tui.fakes import ScriptedEngine, ScriptedOpener
from tests.tui.helpers import wait_for_panel, wait_until

PROMPT = "The SQL command to extract all the users whose name starts with A is: "


def _app(engine: ScriptedEngine, settings: Settings | None = None, **kwargs: object) -> BloomApp:
    spec = ModelSpec("bigscience/bloom-560m")
    app = BloomApp(spec, opener=ScriptedOpener(engine), find_models=list, cursor_blink=False, **kwargs)  # type: ignore[arg-type]
    app.settings = settings or Settings(max_new_tokens=20, samples=4, seed=7)
    return app


def _view(app: BloomApp) -> SamplesView:
    view = app.output.latest_samples
    assert view is not None, "the last run wrote one continuation"
    return view


async def _run(pilot: Pilot, prompt: str = PROMPT) -> None:
    app: BloomApp = pilot.app  # type: ignore[assignment]
    await wait_until(pilot, lambda: app.handle is not None, what="the model to open")
    app.insert_prompt(prompt)
    await pilot.press("ctrl+j")


async def _held(pilot: Pilot, engine: ScriptedEngine, tokens: int) -> SamplesView:
    """Started and held mid-pass once every sample shows `tokens` tokens (or has ended before)."""
    app: BloomApp = pilot.app  # type: ignore[assignment]
    await _run(pilot)
    await wait_until(pilot, engine.holding.is_set, what="the engine to hold mid-pass")
    view = _view(app)

    def shown() -> bool:
        return all(len(e.pieces) == tokens or e.outcome != "running" for e in view.exchanges)

    await wait_until(pilot, shown, what=f"{tokens} tokens each")
    return view


async def _ended(pilot: Pilot) -> SamplesView:
    app: BloomApp = pilot.app  # type: ignore[assignment]
    await _run(pilot)
    await wait_until(pilot, lambda: app.output.runs and not app.running, what="the run to end")
    return _view(app)


def _visible(app: BloomApp, pane: SamplePane) -> bool:
    return app.output.region.contains_region(pane.region)


async def test_samples_stream_side_by_side_at_once_and_the_panel_shows_their_speed() -> None:
    engine = ScriptedEngine(hold_token=6, hold_block=3)
    app = _app(engine)
    async with app.run_test(size=(140, 45)) as pilot:
        view = await _held(pilot, engine, 6)
        assert [len(p) for p in engine.params_asked] == [4]
        assert [p.seed for p in engine.params_asked[0]] == [7, 8, 9, 10]  # sample i: seed S+i
        assert all(p.temperature > 0 for p in engine.params_asked[0])  # samples sample, greedy default or not
        texts = [exchange.text for exchange in view.exchanges]
        assert texts == ["".join(engine.sample_pieces(i)[:6]) for i in range(4)] and len(set(texts)) == 4
        assert all(exchange.outcome == "running" for exchange in view.exchanges)
        panes = view.panes
        # 4 panes in ~90 columns beside the panel: two by two, every one in view while they stream (once the grid
        # has been laid out: on a loaded machine the first read can come before that refresh).
        await wait_until(pilot, lambda: panes[0].region.y == panes[1].region.y, what="the grid's layout")
        assert panes[0].region.y == panes[1].region.y < panes[2].region.y == panes[3].region.y
        assert panes[0].region.x == panes[2].region.x < panes[1].region.x == panes[3].region.x
        assert all(_visible(app, pane) for pane in panes)
        assert "escape cancels all" in view.query_one("SamplesHeader").render().plain  # type: ignore[attr-defined]

        await wait_for_panel(pilot)
        snap = app.query_one(EnginePanel).snapshot
        assert (snap.sequences, snap.sample_tokens, snap.samples_running) == (4, (6, 6, 6, 6), 4)
        assert snap.sample_rates == (1 / 0.9,) * 4 and snap.aggregate_rate == pytest.approx(4 / 0.9)
        lines = str(app.query_one("#panel-samples", Static).render())
        assert "samples 4 · 4 running · 4.4 tok/s in all" in lines and "1: 1.1  2: 1.1  3: 1.1  4: 1.1" in lines
        assert "per sample" in str(app.query_one("#panel-tokens", Static).render())

        await pilot.press("f4")  # the panel hidden: the output is wide enough for all four in one row
        await wait_until(pilot, lambda: len({pane.region.y for pane in panes}) == 1, what="one row")
        assert sorted(pane.region.x for pane in panes) == [pane.region.x for pane in panes]
        engine.release.set()
        await wait_until(pilot, lambda: not app.running)
    assert [exchange.text for exchange in view.exchanges] == ["".join(engine.sample_pieces(i)) for i in range(4)]


async def test_at_80x24_the_samples_stack_and_all_stream_in_view() -> None:
    engine = ScriptedEngine(hold_token=12, hold_block=3)
    app = _app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        view = await _held(pilot, engine, 12)
        panes = view.panes
        assert len({pane.region.x for pane in panes}) == 1  # one column
        assert [pane.region.y for pane in panes] == sorted({pane.region.y for pane in panes})
        assert all(_visible(app, pane) for pane in panes)
        # Each pane shows the end of its text: its latest piece is on screen.
        for i, pane in enumerate(panes):
            assert engine.sample_pieces(i)[11].strip() in pane.render().plain
        await wait_for_panel(pilot)
        line = str(app.query_one(StatusLine).render())
        assert "× 4 samples" in line and "tok/s in all" in line
        engine.release.set()
        await wait_until(pilot, lambda: not app.running)
        # Ended, the panes open to their whole text.
        assert all(pane.render().plain.startswith(pane.exchange.text) for pane in panes)


async def test_a_sample_that_ends_first_says_so_while_the_others_stream() -> None:
    engine = ScriptedEngine(hold_token=8, hold_block=3, sample_lengths=(20, 4))
    app = _app(engine)
    async with app.run_test(size=(140, 45)) as pilot:
        view = await _held(pilot, engine, 8)  # sample 2 stopped at 4: wait for it too
        await wait_until(pilot, lambda: view.exchanges[1].outcome == "done", what="sample 2's end")
        assert view.exchanges[1].status == "done · 4 tokens · end of text · 1.1 tok/s"
        assert "end of text" in view.panes[1].render().plain
        assert [exchange.outcome for exchange in view.exchanges] == ["running", "done", "running", "running"]
        await wait_for_panel(pilot)
        assert app.query_one(EnginePanel).snapshot.samples_running == 3
        engine.release.set()
        await wait_until(pilot, lambda: not app.running)
        # 20 + 4 + 20 + 20 tokens; together, the 60 decoded over the 19 passes (0.9 s each) of the longest.
        assert view.status == "done · 4 samples · 64 tokens · 3.5 tok/s in all"
        assert app.tracker.snapshot().state == "done"


async def test_keys_pick_a_sample_and_the_next_prompt_continues_from_it() -> None:
    engine = ScriptedEngine()
    app = _app(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        view = await _ended(pilot)
        assert "1-4 pick a sample" in str(view.query_one(".samples-status", Static).render())
        app.action_copy_output()
        await pilot.pause()
        assert app.clipboard == "" and "Pick a sample first" in str(list(app._notifications)[-1].message)
        await pilot.press("3")
        third = PROMPT + "".join(engine.sample_pieces(2))
        assert app.editor.text == third  # the prompt and sample 3, ready to continue
        assert view.samples.picked == 2 and view.panes[2].has_class("-picked")
        assert [exchange.picked for exchange in view.exchanges] == [False, False, True, False]
        assert "sample 3 picked" in str(view.query_one(".samples-status", Static).render())
        app.action_copy_output()
        assert app.clipboard == third
        await pilot.press("2")  # the editor has text now: a digit types
        assert app.editor.text == third + "2" and view.samples.picked == 2
        await pilot.press("backspace", "ctrl+j")
        await wait_until(pilot, lambda: len(app.output.runs) == 2 and not app.running, what="the next run")
        assert _view(app).samples.prompt == third
        assert engine.params_asked[-1] and len(engine.params_asked) == 2


async def test_digits_type_while_the_run_goes_and_a_click_picks() -> None:
    engine = ScriptedEngine(hold_token=4, hold_block=3)
    app = _app(engine, Settings(max_new_tokens=6, samples=2))
    async with app.run_test(size=(140, 45)) as pilot:
        view = await _held(pilot, engine, 4)
        await pilot.press("1")  # no pick before the end: the digit reaches the editor
        assert app.editor.text == "1" and view.samples.picked is None
        engine.release.set()
        await wait_until(pilot, lambda: not app.running)
        await pilot.press("2")  # the editor is not empty: still typing
        assert app.editor.text == "12" and view.samples.picked is None
        await pilot.click(view.panes[1])
        await wait_until(pilot, lambda: view.samples.picked == 1, what="the click to pick")
        assert app.editor.text == PROMPT + "".join(engine.sample_pieces(1)[:6])


async def test_escape_cancels_every_sample_and_keeps_their_text() -> None:
    engine = ScriptedEngine(hold_token=5, hold_block=3, sample_lengths=(20, 20, 3))
    app = _app(engine)
    async with app.run_test(size=(140, 45)) as pilot:
        view = await _held(pilot, engine, 5)
        await pilot.press("escape")
        await wait_until(pilot, lambda: not app.running, what="the cancel to land")
        assert engine.cancel_seen.is_set()
        outcomes = [(e.outcome, e.status, len(e.pieces)) for e in view.exchanges]
        assert outcomes == [
            ("cancelled", "cancelled after 5 tokens", 5),
            ("cancelled", "cancelled after 5 tokens", 5),
            ("done", "done · 3 tokens · end of text · 1.1 tok/s", 3),  # it had ended before the cancel
            ("cancelled", "cancelled after 5 tokens", 5),
        ]
        assert view.status == "cancelled after 18 tokens in 4 samples"
        await wait_for_panel(pilot)
        assert app.query_one(EnginePanel).snapshot.state == "cancelled"
        await pilot.press("4")  # a cancelled run's samples can be picked too
        assert app.editor.text == PROMPT + "".join(engine.sample_pieces(3)[:5])


async def test_the_transcript_keeps_every_sample_labelled() -> None:
    engine = ScriptedEngine()
    app = _app(engine, Settings(max_new_tokens=5, samples=3))
    async with app.run_test(size=(140, 45)) as pilot:
        await _ended(pilot)
        await pilot.press("2", "ctrl+s")
        await pilot.pause()
    [path] = locations.transcripts_dir().glob("transcript-*.md")
    text = path.read_text()
    assert "## 1. bloom-560m (scripted) · 3 samples" in text and text.count(PROMPT) == 1
    for i, label in enumerate(("**Sample 1/3**", "**Sample 2/3 (picked)**", "**Sample 3/3**")):
        sample = "".join(engine.sample_pieces(i)[:5])
        assert f"{label}\n\n```\n{sample}\n```" in text, label


async def test_samples_setting_is_saved_turns_sampling_on_and_refuses_greedy() -> None:
    app = _app(ScriptedEngine(), Settings())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f2")
        await wait_until(pilot, lambda: isinstance(app.screen, SettingsScreen))
        screen = app.screen
        switch = screen.query_one("#sample", Switch)
        assert not switch.value
        screen.query_one("#samples", Input).value = "3"
        await wait_until(pilot, lambda: switch.value, what="samples to turn sampling on")
        switch.value = False  # back to greedy: refused, with the reason
        await pilot.pause()
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen is screen
        assert "3 samples need sampling" in str(screen.query_one("#settings-error", Static).render())
        screen.query_one("#samples", Input).value = "9"
        switch.value = True
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert "Samples must be in 1..8, got 9" in str(screen.query_one("#settings-error", Static).render())
        screen.query_one("#samples", Input).value = "3"
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: not isinstance(app.screen, SettingsScreen))
    saved = json.loads(locations.settings_file().read_text())
    assert (saved["samples"], saved["sample"]) == (3, True)
    assert load_settings()[0].samples == 3
    assert BloomApp(opener=ScriptedOpener()).settings.samples == 3  # read at start-up


async def test_samples_on_the_command_line_apply_to_this_session_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from bloomtui.tui import app as app_module

    asked: list[int | None] = []
    monkeypatch.setattr(app_module, "run_app", lambda model, options, remote, draft, samples: asked.append(samples))
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    main(["--demo", "--samples", "4"])
    main(["app", "--demo"])
    assert asked == [4, None]
    assert main(["--samples", "9"]) == 2

    save_settings(Settings(max_new_tokens=4, samples=2))
    engine = ScriptedEngine()
    app = BloomApp(ModelSpec("x"), opener=ScriptedOpener(engine), find_models=list, cursor_blink=False, samples=3)
    async with app.run_test(size=(140, 45)) as pilot:
        await _ended(pilot)
        assert len(engine.params_asked[-1]) == 3
        await pilot.press("f2")
        await wait_until(pilot, lambda: isinstance(app.screen, SettingsScreen))
        assert app.screen.query_one("#samples", Input).value == "3"  # the one in effect
        app.screen.query_one("#max_new_tokens", Input).value = "5"
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: not isinstance(app.screen, SettingsScreen))
    assert load_settings()[0] == Settings(max_new_tokens=5, samples=2)  # --samples is not saved


async def test_samples_refuse_a_greedy_run_and_a_server_runs_one(monkeypatch: pytest.MonkeyPatch) -> None:
    save_settings(Settings(sample=False, max_new_tokens=4))
    engine = ScriptedEngine()
    app = BloomApp(ModelSpec("x"), opener=ScriptedOpener(engine), find_models=list, cursor_blink=False, samples=2)
    async with app.run_test(size=(140, 45)) as pilot:
        await _run(pilot)
        await pilot.pause()
        assert not app.running and not engine.params_asked  # greedy chosen on purpose: said, not run
        assert "2 samples need sampling" in str(list(app._notifications)[-1].message)

    one = ScriptedEngine(multi_sequence=False)  # as a server's handle
    app = BloomApp(ModelSpec("x"), opener=ScriptedOpener(one), find_models=list, cursor_blink=False, samples=4)
    app.settings = Settings(max_new_tokens=4)
    async with app.run_test(size=(140, 45)) as pilot:
        for _ in range(2):
            await _run(pilot)
            await wait_until(pilot, lambda: not app.running and app.output.runs)
        assert [len(params) for params in one.params_asked] == [1, 1]
        assert isinstance(app.output.runs[app.run_number], RunOutput)
        told = [n for n in app._notifications if "Samples (4) apply to local models" in str(n.message)]
        assert len(told) == 1  # once per connection


def test_grid_shape_balances_rows_and_stacks_when_narrow() -> None:
    assert grid_shape(4, 90, stacked=False) == (2, 2)  # 3 fit: 2 x 2, not 3 + 1
    assert grid_shape(4, 136, stacked=False) == (4, 1)
    assert grid_shape(8, 136, stacked=False) == (4, 2)
    assert grid_shape(3, 20, stacked=False) == (1, 3)
    assert grid_shape(4, 200, stacked=True) == (1, 4)


@pytest.mark.parametrize("size", [(130, 40), (80, 24)], ids=["wide", "80x24"])
def test_snapshot_four_samples_streaming(snap_compare, size: tuple[int, int]) -> None:  # noqa: ANN001
    engine = ScriptedEngine(hold_token=12, hold_block=9, sample_lengths=(20, 9))
    app = _app(engine)

    async def run_before(pilot: Pilot) -> None:
        await _held(pilot, engine, 12)
        await wait_for_panel(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


def test_samples_settings_sample_and_are_checked() -> None:
    from bloomtui.engine.weights.generation_config import GenerationDefaults
    from bloomtui.errors import UsageError

    greedy_model = GenerationDefaults(do_sample=False, repetition_penalty=1.2)
    assert Settings().sampling_params(greedy_model).greedy
    sampled = Settings(samples=4).sampling_params(greedy_model)  # left to the model: samples sample
    assert (sampled.temperature, sampled.top_k, sampled.top_p, sampled.repetition_penalty) == (0.8, 50, 0.95, 1.2)
    for wrong, message in (
        (Settings(samples=4, sample=False), "4 samples need sampling"),
        (Settings(samples=2, sample=True, temperature=0.0), "need a Temperature above 0"),
        (Settings(samples=0), "Samples must be in 1..8, got 0"),
        (Settings(samples=9), "Samples must be in 1..8, got 9"),
    ):
        with pytest.raises(UsageError, match=message):
            wrong.validated()
    with pytest.raises(UsageError, match="Samples: '4' is not a valid int"):
        Settings.from_dict({"samples": "4"})
    save_settings(Settings(samples=5))
    assert load_settings() == (Settings(samples=5), None)


def test_tracker_ends_a_run_of_samples_with_its_last_sample() -> None:
    from bloomtui.engine import events
    from bloomtui.tui.run_state import RunTracker, memory_ceiling
    from tests.tui.fakes import fake_info

    tracker = RunTracker()
    tracker.opened(fake_info(4), rss=900)
    tracker.start(1, 10, sequences=2)
    one = memory_ceiling(tracker.snapshot())
    for index in range(3):
        for sequence, seconds in ((0, 0.5), (1, 0.25)):
            tracker.feed(1, events.TokenGenerated(1, index, 5, "x", -1.0, seconds, sequence=sequence))
    snap = tracker.snapshot()
    assert snap.sample_tokens == (3, 3) and snap.sample_rates == (2.0, 4.0) and snap.aggregate_rate == 6.0

    def done(sequence: int, tokens: int, decode: float) -> events.Done:
        return events.Done(1, (5,) * tokens, "x", 4, tokens, 0.1, decode, (tokens - 1) / decode, 900, 0, "eos",
                           passes=tokens, sequence=sequence)  # fmt: skip

    tracker.feed(1, done(1, 3, 1.0))
    snap = tracker.snapshot()
    assert (snap.state, snap.samples_running, snap.sample_rates) == ("running", 1, (2.0, 2.0))
    tracker.feed(1, done(0, 5, 2.0))
    snap = tracker.snapshot()
    assert (snap.state, snap.message, snap.passes) == ("done", "2 samples · 8 tokens", 5)
    assert snap.aggregate_rate == (4 + 2) / 2.0  # decoded tokens over the longest sample's decode time
    # Each sample holds its own KV cache: the ceiling's run part doubles.
    tracker.start(2, 10)
    assert one is not None and memory_ceiling(tracker.snapshot()).run < one.run  # type: ignore[union-attr]
