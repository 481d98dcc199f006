"""RAM budgets: bad strings get the budget's own error, budgets the machine cannot hold are lowered with a
warning, and loading stops with an error before available memory runs out."""

from __future__ import annotations

import json
import subprocess
import sys

import psutil
import pytest

from bloomtui.engine import Engine, EngineOptions
from bloomtui.engine.plan import memory_guard
from bloomtui.errors import BudgetError
from tests.checkpoints import Written


def bloomtui(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bloomtui", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--ram-budget", "-5GB"], "--ram-budget: size must be positive, got '-5GB'"),
        (["--ram-budget=-5GB"], "--ram-budget: size must be positive, got '-5GB'"),
        (["--ram-budget", "-.5G"], "--ram-budget: size must be positive"),
        (["--ram-budget", "0"], "--ram-budget: size must be positive"),
        (["--ram-budget", "lots"], "--ram-budget: cannot read 'lots' as a size"),
        (["--ram-budget", "5 parsecs"], "--ram-budget: cannot read '5 parsecs' as a size"),
    ],
)
@pytest.mark.parametrize("command", ["info", "generate"])
def test_bad_budget_strings(tiny_model: Written, command: str, args: list[str], needle: str) -> None:
    extra = ["x"] if command == "generate" else []
    run = bloomtui(command, str(tiny_model.path), *extra, *args)
    assert run.returncode == 2 and run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {needle}"), run.stderr


def test_budget_above_machine_is_lowered_with_a_warning(tiny_model: Written) -> None:
    total = psutil.virtual_memory().total
    run = bloomtui("info", str(tiny_model.path), "--ram-budget", "100TB", "--json")
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    assert 0 < info["ram_budget"] < total  # never more than the machine has
    warning = run.stderr.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning: RAM budget 100 TB is more than this machine")
    assert info["budget_warning"] == warning[0].removeprefix("warning: ")
    human = bloomtui("info", str(tiny_model.path), "--ram-budget", "100TB")
    assert "lowered to what this machine can hold" in human.stdout and human.stderr == run.stderr
    fine = bloomtui("info", str(tiny_model.path), "--ram-budget", "100MB", "--json")
    assert json.loads(fine.stdout)["budget_warning"] is None and fine.stderr == ""


def test_generate_warns_about_a_lowered_budget(tiny_model: Written) -> None:
    run = bloomtui("generate", str(tiny_model.path), "Hi", "--max-new-tokens", "2", "--ram-budget", "100TB")
    assert run.returncode == 0, run.stderr
    assert run.stderr.startswith("warning: RAM budget 100 TB is more than this machine can hold")


def test_fit_budget_keeps_a_reserve(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory_guard, "total_memory", lambda: 24 * 1000**3)
    assert memory_guard.fit_budget(10 * 1000**3) == (10 * 1000**3, None)
    budget, warning = memory_guard.fit_budget(24 * 1000**3)
    assert budget == 24 * 1000**3 - memory_guard.reserve(24 * 1000**3) < 22 * 1000**3
    assert warning and "24 GB of RAM" in warning


def test_loading_stops_before_available_memory_runs_out(tiny_model: Written, monkeypatch: pytest.MonkeyPatch) -> None:
    """Available memory shrinks as the resident set loads (another program grabbing RAM): the loader must
    stop with an error while there is still headroom, not read on into swap."""
    headroom = memory_guard.headroom(memory_guard.total_memory())
    readings: list[int] = []

    def shrinking() -> int:
        readings.append(headroom + 3_000_000 - 1_000_000 * len(readings))
        return readings[-1]

    monkeypatch.setattr(memory_guard, "available_memory", shrinking)
    with pytest.raises(BudgetError, match=r"stopped loading at block \d+: .* of memory is available"):
        Engine.open(tiny_model.path, EngineOptions(ram_budget=100 * 1000**2))
    assert min(readings) >= headroom  # stopped while the headroom was still there


def test_loading_with_enough_memory_is_untouched(tiny_model: Written, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(memory_guard, "available_memory", lambda: calls.append(1) or 64 * 1000**3)
    Engine.open(tiny_model.path, EngineOptions(ram_budget=100 * 1000**2)).close()
    assert len(calls) >= 5  # watched before every block, not once at the start
