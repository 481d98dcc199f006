"""The app on a real (tiny, random) checkpoint: type, run, watch the panel, cancel, reuse, quit."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from bloomtui.engine import EngineOptions, events
from bloomtui.settings import Settings
from bloomtui.tui.app import BloomApp
from bloomtui.tui.engine_handle import DEMO, ModelSpec, RealEngine
from bloomtui.tui.widgets.engine_panel import EnginePanel
from tests.tui.helpers import wait_for_panel, wait_until


async def _opened(pilot, app: BloomApp) -> None:  # noqa: ANN001
    await wait_until(pilot, lambda: app.handle is not None, what="the model to open")


async def test_type_submit_streams_tokens_and_updates_panel(real_app: BloomApp) -> None:
    app = real_app
    async with app.run_test(size=(140, 45)) as pilot:
        await _opened(pilot, app)
        app.settings = replace(app.settings, max_new_tokens=12)
        await pilot.press(*"Hello")
        assert app.editor.text == "Hello"
        await pilot.press("ctrl+j")
        await wait_until(pilot, lambda: not app.running, what="the run to finish")
        exchange = app.output.exchanges[-1]
        assert exchange.prompt == "Hello"
        assert exchange.outcome == "done"
        assert exchange.text  # streamed pieces, kept apart from the prompt
        assert app.editor.text == ""  # ready for the next prompt
        direct = app.handle.engine.generate("Hello", app.settings.sampling_params())  # type: ignore[union-attr]
        assert exchange.text == direct.text  # no piece lost or reordered on the way to the screen
        await wait_for_panel(pilot)
        snap = app.query_one(EnginePanel).snapshot
        assert snap.state == "done"
        assert snap.tokens == 12
        assert snap.rss and snap.rss > 0
        assert snap.read_mbps is not None and snap.read_history  # half the blocks stream
        assert snap.seconds_per_token is not None
        assert snap.model is not None and snap.model.streamed_blocks


class _Gated:
    """Wraps the real engine's event sink: holds the engine thread after block 1 of token 4 until the
    cancel flag is set (first run only) (so escape provably lands mid-pass), and counts blocks finished after cancel."""

    def __init__(self, inner: RealEngine) -> None:
        self.inner, self.info, self.baseline_rss = inner, inner.info, inner.baseline_rss
        self.holding = threading.Event()
        self.blocks_after_cancel = 0

    def draft_name(self, draft):  # noqa: ANN001, ANN201
        return self.inner.draft_name(draft)

    def generate(self, prompt, params, on_event, cancel: threading.Event, draft=None):  # noqa: ANN001, ANN201
        def sink(event: events.Event) -> None:
            if isinstance(event, events.BlockDone):
                if cancel.is_set():
                    self.blocks_after_cancel += 1
                elif (event.token_index, event.index) == (4, 1) and not self.holding.is_set():
                    self.holding.set()
                    cancel.wait(20)
            on_event(event)

        return self.inner.generate(prompt, params, sink, cancel, draft)

    def rss(self) -> int:
        return self.inner.rss()

    def close(self) -> None:
        self.inner.close()


async def test_escape_cancels_within_one_block_and_next_prompt_works(real_app: BloomApp) -> None:
    app = real_app
    opener = app.opener
    gated: list[_Gated] = []

    def gated_opener(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        gated.append(_Gated(opener(*args, **kwargs)))
        return gated[-1]

    app.opener = gated_opener
    async with app.run_test(size=(140, 45)) as pilot:
        await _opened(pilot, app)
        app.settings = replace(app.settings, max_new_tokens=50)
        app.insert_prompt("The Spanish translation of thank you for your help is: ")
        await pilot.press("ctrl+j")
        await wait_until(pilot, gated[0].holding.is_set, what="the engine to be mid-pass")
        await pilot.press("escape")
        await wait_until(pilot, lambda: not app.running, what="the cancel to land")
        exchange = app.output.exchanges[-1]
        assert exchange.outcome == "cancelled"
        assert "cancelled" in exchange.status
        assert exchange.text  # partial text stays
        assert gated[0].blocks_after_cancel == 0  # stopped right after the block it was in
        await wait_for_panel(pilot)
        assert app.query_one(EnginePanel).snapshot.state == "cancelled"

        app.settings = Settings(max_new_tokens=5)
        app.insert_prompt("Next")
        await pilot.press("ctrl+j")
        await wait_until(pilot, lambda: len(app.output.exchanges) == 2 and not app.running)
        assert app.output.exchanges[-1].outcome == "done"
        assert app.tracker.snapshot().tokens == 5


async def test_quit_mid_generation_does_not_hang(real_app: BloomApp) -> None:
    app = real_app
    async with app.run_test(size=(140, 45)) as pilot:
        await _opened(pilot, app)
        app.settings = replace(app.settings, max_new_tokens=5000)
        app.insert_prompt("Keep going")
        await pilot.press("ctrl+j")
        await wait_until(pilot, lambda: app.tracker.snapshot().tokens >= 2)
        await pilot.press("ctrl+q")
        await wait_until(pilot, lambda: app._exit, what="the app to exit")
    app.close_engine(timeout=20)  # closing after the app returns must not wait on the run
    assert app.handle is None


async def test_broken_checkpoint_is_reported_and_app_stays_usable(small_model, streaming_options, tmp_path) -> None:  # noqa: ANN001
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{this is not json")
    app = BloomApp(ModelSpec(str(broken)), streaming_options, find_models=list, cursor_blink=False)
    async with app.run_test(size=(140, 45)) as pilot:
        await wait_until(pilot, lambda: app.tracker.snapshot().state == "error", what="the error")
        notice = app.output.query("Notice").last().render().plain  # type: ignore[union-attr]
        assert str(broken) in notice and "Bad config" in notice
        assert app.handle is None
        app.open_model(ModelSpec(str(small_model)))
        await _opened(pilot, app)
        app.settings = Settings(max_new_tokens=3)
        app.insert_prompt("Still works")
        await pilot.press("ctrl+j")
        await wait_until(pilot, lambda: app.output.exchanges and not app.running)
        assert app.output.exchanges[-1].outcome == "done"


async def test_budget_too_small_is_reported(small_model) -> None:  # noqa: ANN001
    app = BloomApp(ModelSpec(str(small_model)), EngineOptions(ram_budget=1000), find_models=list, cursor_blink=False)
    async with app.run_test(size=(140, 45)) as pilot:
        await wait_until(pilot, lambda: app.tracker.snapshot().state == "error", what="the error")
        notice = app.output.query("Notice").last().render().plain  # type: ignore[union-attr]
        assert notice.startswith("RAM budget too small:") and "is below" in notice
        await wait_for_panel(pilot)
        assert "below" in str(app.query_one("#panel-state").render())


async def test_builtin_demo_model_opens_and_streams(isolated_dirs) -> None:  # noqa: ANN001
    app = BloomApp(None, find_models=list, cursor_blink=False)
    async with app.run_test(size=(140, 45)) as pilot:
        await wait_until(pilot, lambda: app.screen.query("#picker-options"))
        await pilot.press("enter")  # the demo is the only entry
        await _opened(pilot, app)
        info = app.handle.info  # type: ignore[union-attr]
        assert info.demo and "trained on Python docs" in info.name
        assert info.streamed_blocks and info.resident_blocks  # half and half, so the panel shows both
        notices = [notice.render().plain for notice in app.output.query("Notice")]  # type: ignore[union-attr]
        assert any("trained on the Python documentation" in notice for notice in notices)
        app.settings = Settings(max_new_tokens=4)
        app.insert_prompt("Hello")
        await pilot.press("ctrl+j")
        await wait_until(pilot, lambda: app.output.exchanges and not app.running)
        assert app.output.exchanges[-1].outcome == "done"
        assert not list((isolated_dirs / "cache").glob("*demo*"))  # the shipped demo opens in place: nothing written


@pytest.mark.parametrize("tree", ["", "8"])
async def test_demo_with_its_draft_shows_guesses_and_keeps_only_verified_text(isolated_dirs, tree: str) -> None:  # noqa: ANN001
    """The shipped draft proposes (chains, or trees of 8 nodes), the demo model verifies: guesses are shown
    dimmed while a pass checks them, the panel counts what was kept, and the output (and so transcript and
    copy) holds only verified text, the very text of a run without a draft."""
    app = BloomApp(DEMO, find_models=list, cursor_blink=False, draft="trained-draft")
    guesses: list[str] = []
    async with app.run_test(size=(140, 45)) as pilot:
        await _opened(pilot, app)
        info = app.handle.info  # type: ignore[union-attr]
        assert info.draft == "trained-draft" and 0 < info.draft_bytes < info.total_budget
        show = app.output.show

        def watched(run, pieces):  # noqa: ANN001, ANN202
            pieces = list(pieces)
            guesses.extend(piece.text for piece in pieces if piece.guess)
            return show(run, pieces)

        app.output.show = watched  # type: ignore[method-assign]
        app.settings = Settings(max_new_tokens=40, repetition_penalty=1.2, draft_tree=tree)
        prompt = "A list comprehension is"
        app.insert_prompt(prompt)
        await pilot.press("ctrl+j")
        await wait_until(pilot, lambda: app.output.exchanges and not app.running, what="the drafted run")
        exchange = app.output.exchanges[-1]
        plain = app.handle.engine.generate(prompt, app.settings.sampling_params())  # type: ignore[union-attr]
        assert exchange.outcome == "done" and exchange.text == plain.text
        assert any(guesses)
        assert app.output.runs[app.run_number].guess == ""  # nothing unverified left on screen
        await wait_for_panel(pilot)
        snap = app.query_one(EnginePanel).snapshot
        name = "trained-draft · tree 8" if tree else "trained-draft"
        assert snap.draft_name == name and 0 < snap.draft_accepted < snap.draft_proposed
        assert snap.passes < snap.tokens == 40
        line = str(app.query_one("#panel-draft").render())
        assert name in line and "kept" in line and "tok/pass" in line
        assert ("nodes/pass" in line) == bool(tree)


async def test_a_draft_with_another_tokenizer_is_reported_and_the_model_runs_without_it(small_model) -> None:  # noqa: ANN001
    app = BloomApp(ModelSpec(str(small_model)), find_models=list, cursor_blink=False, draft="trained-draft")
    async with app.run_test(size=(140, 45)) as pilot:
        await _opened(pilot, app)
        notices = [notice.render().plain for notice in app.output.query("Notice")]  # type: ignore[union-attr]
        assert any("tokenizer differs" in n and "without a draft model" in n for n in notices), notices
        assert app.handle.info.draft == ""  # type: ignore[union-attr]
        app.settings = Settings(max_new_tokens=3)
        app.insert_prompt("Still works")
        await pilot.press("ctrl+j")
        await wait_until(pilot, lambda: app.output.exchanges and not app.running)
        assert app.output.exchanges[-1].outcome == "done"
        assert not app.query_one("#panel-draft").display


async def test_a_seeded_sampled_run_under_auto_trees_drafts_and_says_chains(isolated_dirs) -> None:  # noqa: ANN001
    """auto trees size by timings, which would change a seeded sample: such a run drafts chains, the panel names
    no tree, and the same seed gives the same text twice."""
    app = BloomApp(DEMO, find_models=list, cursor_blink=False, draft="trained-draft")
    async with app.run_test(size=(140, 45)) as pilot:
        await _opened(pilot, app)
        app.settings = Settings(max_new_tokens=16, sample=True, temperature=0.8, seed=7, draft_tree="auto")
        texts = []
        for _ in range(2):
            app.insert_prompt("A list comprehension is")
            await pilot.press("ctrl+j")
            await wait_until(pilot, lambda: not app.running and app.output.exchanges[-1].outcome, what="the run")
            texts.append(app.output.exchanges[-1].text)
        await wait_for_panel(pilot)
        snap = app.query_one(EnginePanel).snapshot
        assert snap.draft_name == "trained-draft" and snap.draft_nodes == 0
        assert texts[0] == texts[1] and texts[0]
