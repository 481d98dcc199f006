"""The app on a served model (the scripted fault server): remote panel, streaming, cancel, errors, picker."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Input, Static

from bloomtui import locations
from bloomtui.settings import Settings
from bloomtui.tui.app import BloomApp
from bloomtui.tui.engine_handle import ModelSpec
from bloomtui.tui.remote_handle import RemoteHandle
from bloomtui.tui.screens.model_picker import ModelPickerScreen
from bloomtui.tui.widgets.engine_panel import EnginePanel
from bloomtui.tui.widgets.remote_panel import RemotePanel
from tests.remote.conftest import free_port
from tests.remote.fault_server import PIECES, fault_server
from tests.tui.fakes import ScriptedOpener
from tests.tui.helpers import wait_until

SECRET = "sk-test-SECRET-4242"


def remote_app(url: str, scripted: ScriptedOpener | None = None, max_new_tokens: int = 6) -> BloomApp:
    app = BloomApp(ModelSpec(url), opener=scripted or ScriptedOpener(), find_models=list, cursor_blink=False)
    app.settings = Settings(max_new_tokens=max_new_tokens)
    return app


def panel_text(app: BloomApp) -> str:
    return "\n".join(str(w.render()) for w in app.query_one(RemotePanel).query(Static))


async def run_prompt(pilot, app: BloomApp, prompt: str = "SQL please: ") -> None:  # noqa: ANN001
    app.insert_prompt(prompt)
    await pilot.press("ctrl+j")
    await wait_until(pilot, lambda: app.running or app.output.exchanges, what="the run to start")


async def wait_for_remote_panel(pilot, app: BloomApp) -> None:  # noqa: ANN001
    await wait_until(
        pilot,
        lambda: app.query_one(RemotePanel).snapshot.version == app.tracker.snapshot().version,
        what="the remote panel to catch up",
    )


async def test_remote_view_streams_and_shows_only_true_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLOOMTUI_API_KEY", SECRET)
    with fault_server() as server:
        app = remote_app(server.url)
        async with app.run_test(size=(120, 36)) as pilot:
            await wait_until(pilot, lambda: isinstance(app.handle, RemoteHandle), what="the connection")
            await wait_for_remote_panel(pilot, app)
            assert app.query_one(RemotePanel).display and not app.query_one(EnginePanel).display
            assert "bloom-test" in panel_text(app) and f"{server.url}/v1" in panel_text(app)
            await run_prompt(pilot, app)
            await wait_until(pilot, lambda: not app.running, what="the run to end")
            exchange = app.output.exchanges[-1]
            assert (exchange.outcome, exchange.text) == ("done", "".join(PIECES[:6]))
            assert exchange.model == "bloom-test @ 127.0.0.1"
            await wait_for_remote_panel(pilot, app)
            snap = app.query_one(RemotePanel).snapshot
            assert (snap.state, snap.tokens, snap.connection) == ("done", 6, "closed")
            assert snap.first_token_seconds is not None and snap.tokens_per_second
            text = panel_text(app)
            assert "first token" in text and "tok/s" in text and "tokens 6/6" in text
            assert "RSS" not in text and "block" not in text  # nothing invented for a server
            assert "server pass" not in text  # only a bloomtui server reports its passes
            await pilot.press("ctrl+s")
            await wait_until(pilot, lambda: list(locations.transcripts_dir().glob("*.md")), what="the transcript")
        assert server.headers[-1]["Authorization"] == f"Bearer {SECRET}"
    saved = [p for p in Path(locations.transcripts_dir()).parent.parent.rglob("*") if p.is_file()]
    assert saved and all(SECRET not in p.read_text(errors="replace") for p in saved)


async def test_escape_closes_the_stream_and_keeps_the_partial_text() -> None:
    with fault_server("slow") as server:
        app = remote_app(server.url, max_new_tokens=5000)
        async with app.run_test(size=(120, 36)) as pilot:
            await wait_until(pilot, lambda: app.handle is not None, what="the connection")
            await run_prompt(pilot, app)
            await wait_until(pilot, lambda: len(app.output.exchanges[-1].text.split()) >= 3, what="3 pieces")
            await pilot.press("escape")
            await wait_until(pilot, lambda: not app.running, what="the cancel to land")
            assert server.disconnected.wait(10), "the stream stayed open"
            exchange = app.output.exchanges[-1]
            assert exchange.outcome == "cancelled" and exchange.text.startswith(" w0 w1 w2")
            await wait_for_remote_panel(pilot, app)
            assert app.query_one(RemotePanel).snapshot.state == "cancelled"
            server.mode = "ok"
            app.settings = Settings(max_new_tokens=2)
            await run_prompt(pilot, app, "again")
            await wait_until(pilot, lambda: not app.running and len(app.output.exchanges) == 2)
            assert app.output.exchanges[-1].text == "".join(PIECES[:2])


async def test_server_error_mid_run_is_shown_and_the_app_stays_usable() -> None:
    with fault_server("503") as server:
        app = remote_app(server.url)
        async with app.run_test(size=(120, 36)) as pilot:
            await wait_until(pilot, lambda: app.handle is not None, what="the connection")
            await run_prompt(pilot, app)
            await wait_until(pilot, lambda: not app.running, what="the error")
            assert app.output.exchanges[-1].outcome == "error"
            assert any("server error 503: Model is overloaded" in str(n.message) for n in app._notifications)
            await wait_for_remote_panel(pilot, app)
            assert app.query_one(RemotePanel).snapshot.state == "error"
            server.mode = "ok"
            await run_prompt(pilot, app, "again")
            await wait_until(pilot, lambda: not app.running and len(app.output.exchanges) == 2)
            assert app.output.exchanges[-1].outcome == "done"


async def test_unreachable_server_then_a_local_model_brings_the_engine_panel_back() -> None:
    scripted = ScriptedOpener()
    app = remote_app(f"http://127.0.0.1:{free_port()}", scripted)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_until(pilot, lambda: app.tracker.snapshot().state == "error", what="the connection error")
        notice = app.output.query("Notice").last().render().plain  # type: ignore[union-attr]
        assert "connection refused" in notice
        app.open_model(ModelSpec("bigscience/bloom-560m"))
        await wait_until(pilot, lambda: app.handle is scripted.engine, what="the local model")
        await wait_until(pilot, lambda: app.query_one(EnginePanel).display, what="the engine panel")
        assert not app.query_one(RemotePanel).display


async def test_picker_connects_to_a_server(scripted: ScriptedOpener) -> None:
    with fault_server() as server:
        app = BloomApp(None, opener=scripted, find_models=list, cursor_blink=False)
        async with app.run_test(size=(120, 36)) as pilot:
            await wait_until(pilot, lambda: isinstance(app.screen, ModelPickerScreen))
            await pilot.press("down", "enter")  # the demo, then "Connect to a server"
            field = app.screen.query_one("#picker-path", Input)
            await wait_until(pilot, lambda: field.has_focus and field.value == "http://", what="the URL field")
            await pilot.press(*server.url.removeprefix("http://"), "enter")
            await wait_until(pilot, lambda: isinstance(app.handle, RemoteHandle), what="the connection")
        assert scripted.calls == []  # the local opener was never asked


async def test_refused_sampling_fields_show_a_notice_once() -> None:
    with fault_server("reject-extras") as server:
        app = remote_app(server.url)
        app.settings = Settings(max_new_tokens=3, sample=True, top_k=40)
        async with app.run_test(size=(120, 36)) as pilot:
            await wait_until(pilot, lambda: app.handle is not None, what="the connection")
            for n in (1, 2):
                await run_prompt(pilot, app, f"run {n}")
                await wait_until(pilot, lambda n=n: not app.running and len(app.output.exchanges) == n)
                assert app.output.exchanges[-1].outcome == "done"
            await wait_for_remote_panel(pilot, app)
            assert "note: the server refused top_k (400)" in panel_text(app)
        assert ["top_k" in r for r in server.requests] == [True, False, False]


async def test_on_a_bloomtui_server_the_panel_shows_its_passes(tiny_model) -> None:  # noqa: ANN001
    from tests.server.test_serve import start_server, stop_server

    served = start_server(tiny_model.path)
    try:
        app = remote_app(served.url, max_new_tokens=5)
        async with app.run_test(size=(120, 36)) as pilot:
            await wait_until(pilot, lambda: isinstance(app.handle, RemoteHandle), what="the connection")
            await run_prompt(pilot, app, "Hello there")
            await wait_until(pilot, lambda: not app.running, what="the run to end")
            await wait_for_remote_panel(pilot, app)
            figures = app.query_one(RemotePanel).snapshot.server
            assert figures is not None and figures.passes >= 2 and figures.pass_rows == 1
            text = panel_text(app)
            assert "server pass" in text and "1 row in" in text and "sequences running" in text
    finally:
        assert stop_server(served) == 0
