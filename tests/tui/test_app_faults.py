"""Faults in the app: a model file truncated mid-run ends the run with a message naming it, the app stays
usable and the model can be reopened; a budget the machine cannot hold is lowered with a warning."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

from bloomtui.engine import EngineOptions
from bloomtui.settings import Settings
from bloomtui.tui.app import BloomApp
from bloomtui.tui.engine_handle import ModelSpec
from tests.tui.helpers import wait_until


async def test_model_file_truncated_mid_run(
    small_model: Path, streaming_options: EngineOptions, tmp_path: Path
) -> None:  # noqa: E501
    model = tmp_path / "model"
    shutil.copytree(small_model, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "eos_token_id": None}))  # the run cannot end early
    weights = model / "model.safetensors"
    original = weights.read_bytes()
    app = BloomApp(ModelSpec(str(model)), streaming_options, find_models=list, cursor_blink=False)
    async with app.run_test(size=(140, 45)) as pilot:
        await wait_until(pilot, lambda: app.handle is not None, what="the model to open")
        assert app.handle.engine.store.zero_copy  # type: ignore[union-attr]  # the mapped path, where SIGBUS lurks
        app.settings = Settings(max_new_tokens=5000)
        app.insert_prompt("Hello")
        await pilot.press("ctrl+j")
        await wait_until(pilot, lambda: app.tracker.snapshot().tokens >= 3, what="tokens")
        assert app.running
        # Blocks while the run holds its lease: returns once the run let go of the file.
        await asyncio.to_thread(os.truncate, weights, len(original) // 2)
        await wait_until(pilot, lambda: not app.running, what="the run to stop")
        exchange = app.output.exchanges[-1]
        assert exchange.outcome == "error" and str(weights) in exchange.status
        assert app.tracker.snapshot().state == "error"

        weights.write_bytes(original)  # the re-download finished
        app.open_model(ModelSpec(str(model)))
        await wait_until(pilot, lambda: app.handle is not None, what="the model to reopen")
        app.settings = Settings(max_new_tokens=3)
        app.insert_prompt("Again")
        await pilot.press("ctrl+j")
        await wait_until(pilot, lambda: len(app.output.exchanges) == 2 and not app.running)
        assert app.output.exchanges[-1].outcome == "done"


async def test_budget_above_machine_is_lowered_with_a_warning(small_model: Path) -> None:
    app = BloomApp(ModelSpec(str(small_model)), EngineOptions(ram_budget=10**15), find_models=list, cursor_blink=False)
    async with app.run_test(size=(140, 45)) as pilot:
        await wait_until(pilot, lambda: app.handle is not None, what="the model to open")
        info = app.handle.info  # type: ignore[union-attr]
        assert info.budget < 10**15 and info.budget_warning
        notices = [notice.render().plain for notice in app.output.query("Notice")]  # type: ignore[union-attr]
        assert any("more than this machine can hold" in text for text in notices)
