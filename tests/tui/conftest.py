"""TUI fixtures: every test gets its own config, data and cache dirs; models are written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from bloomtui.demo import write_demo_model
from bloomtui.engine import EngineOptions
from bloomtui.tui.app import BloomApp
from bloomtui.tui.engine_handle import ModelSpec, half_streaming_budget
from tests.tui.fakes import ScriptedEngine, ScriptedOpener


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("CONFIG", "DATA", "CACHE"):
        monkeypatch.setenv(f"BLOOMTUI_{name}_DIR", str(tmp_path / name.lower()))
    monkeypatch.delenv("BLOOMTUI_TRANSCRIPTS_DIR", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 blocks, untied head (varied greedy text), written once per session."""
    # float32 on disk: no conversion staging buffer, so a budget below the whole model exists and blocks stream.
    return write_demo_model(tmp_path_factory.mktemp("tui") / "small", preset="small", untied=True, dtype="float32")


@pytest.fixture(scope="session")
def streaming_options(small_model: Path) -> EngineOptions:
    """A budget that keeps half of small_model's blocks resident and streams the rest."""
    return EngineOptions(ram_budget=half_streaming_budget(small_model, EngineOptions()))


@pytest.fixture
def real_app(small_model: Path, streaming_options: EngineOptions) -> BloomApp:
    return BloomApp(ModelSpec(str(small_model)), streaming_options, find_models=list, cursor_blink=False)


@pytest.fixture
def scripted() -> ScriptedOpener:
    return ScriptedOpener(ScriptedEngine())


@pytest.fixture
def fake_app(scripted: ScriptedOpener) -> BloomApp:
    return BloomApp(ModelSpec("bigscience/bloom-560m"), opener=scripted, find_models=list, cursor_blink=False)
