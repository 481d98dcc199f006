"""Samples on the real engine: the tiny checkpoint's samples are the single runs with seed S+i, the panel
shows their speeds; with the shipped draft each pane shows its own guesses and keeps only verified text."""

from __future__ import annotations

from dataclasses import replace

from bloomtui.engine.sampling_params import sample_params
from bloomtui.settings import Settings
from bloomtui.tui.app import BloomApp
from bloomtui.tui.engine_handle import DEMO
from bloomtui.tui.widgets.engine_panel import EnginePanel
from bloomtui.tui.widgets.samples_view import SamplesView
from tests.tui.helpers import wait_for_panel, wait_until


async def _samples(pilot, app: BloomApp, settings: Settings, prompt: str) -> SamplesView:  # noqa: ANN001
    """Run `prompt` with `settings` (once the model is open) to its end; the run's samples."""
    await wait_until(pilot, lambda: app.handle is not None, what="the model to open")
    app.settings = settings
    app.insert_prompt(prompt)
    await pilot.press("ctrl+j")
    await wait_until(pilot, lambda: app.output.runs and not app.running, what="the samples")
    view = app.output.latest_samples
    assert view is not None
    return view


async def test_samples_are_the_single_runs_with_seed_s_plus_i(real_app: BloomApp) -> None:
    app = real_app
    async with app.run_test(size=(140, 45)) as pilot:
        prompt = "Once upon a time"
        view = await _samples(pilot, app, Settings(max_new_tokens=12, samples=3, seed=5), prompt)
        assert [e.outcome for e in view.exchanges] == ["done"] * 3
        params = app.settings.sampling_params()
        assert params.temperature > 0  # samples sample: this checkpoint's default is greedy
        engine = app.handle.engine  # type: ignore[union-attr]
        alone = [engine.generate(prompt, replace(params, seed=5 + i)).text for i in range(3)]
        assert [exchange.text for exchange in view.exchanges] == alone
        assert len(set(alone)) > 1  # they are samples, not one text three times
        await wait_for_panel(pilot)
        snap = app.query_one(EnginePanel).snapshot
        assert (snap.state, snap.sequences, snap.tokens) == ("done", 3, 12)
        assert len(snap.sample_rates) == 3 and all(rate and rate > 0 for rate in snap.sample_rates)
        assert snap.aggregate_rate is not None and snap.aggregate_rate > max(snap.sample_rates)  # type: ignore[type-var]
        await pilot.press("2")
        assert app.editor.text == prompt + alone[1]


async def test_samples_with_a_draft_show_each_panes_guesses_and_keep_verified_text(isolated_dirs) -> None:  # noqa: ANN001
    app = BloomApp(DEMO, find_models=list, cursor_blink=False, draft="trained-draft", samples=2)
    guessed: set[int] = set()
    async with app.run_test(size=(140, 45)) as pilot:
        await wait_until(pilot, lambda: app.handle is not None, what="the model to open")
        show = app.output.show

        def watched(run, pieces):  # noqa: ANN001, ANN202
            pieces = list(pieces)
            guessed.update(piece.sequence for piece in pieces if piece.guess and piece.text)
            return show(run, pieces)

        app.output.show = watched  # type: ignore[method-assign]
        prompt = "A list comprehension is"
        view = await _samples(pilot, app, Settings(max_new_tokens=40, repetition_penalty=1.2, seed=3), prompt)
        handle = app.handle
        settings = app._settings_in_effect()
        params = sample_params(settings.sampling_params(handle.generation_defaults), 2)  # type: ignore[union-attr]
        direct = handle.engine.generate_many(  # type: ignore[union-attr]
            [prompt] * 2,
            params,
            draft=handle._draft_spec(app._draft_request()),  # type: ignore[union-attr]
        )
        assert [exchange.text for exchange in view.exchanges] == [result.text for result in direct]
        assert guessed == {0, 1}  # each pane showed its own draft's guesses
        assert all(pane.guess == "" for pane in view.panes)  # none left unverified
        await wait_for_panel(pilot)
        snap = app.query_one(EnginePanel).snapshot
        assert snap.draft_name == "trained-draft" and 0 < snap.draft_accepted <= snap.draft_proposed
