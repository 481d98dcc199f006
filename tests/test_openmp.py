"""The OpenMP wait policy: measured per machine by `bloomtui measure-openmp`, kept, applied before torch loads."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bloomtui import openmp
from bloomtui.commands import measure_openmp
from bloomtui.errors import UsageError


def test_the_pick_weighs_quiet_and_busy_alike() -> None:
    quiet = {"short spin": 26.5, "default spin": 25.4, "passive": 38.5}
    busy = {"short spin": 52.8, "default spin": 68.3, "passive": 50.1}
    assert measure_openmp.pick(quiet, busy).policy == "short spin"
    assert measure_openmp.pick(quiet, {**busy, "default spin": 50.0}).policy == "default spin"
    assert measure_openmp.pick({**quiet, "passive": 25.0}, busy).policy == "passive"


def test_a_kept_policy_applies_unless_the_user_set_their_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(openmp, "_applied", None)
    env: dict[str, str] = {}
    openmp.apply_defaults(env)
    assert env == {"GOMP_SPINCOUNT": "10000"} and "not measured" in openmp.describe_in_effect(env)
    openmp.save(openmp.Choice("passive", True, "passive won"))
    env = {}
    openmp.apply_defaults(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"} and "measured here: passive won" in openmp.describe_in_effect(env)
    monkeypatch.setattr(openmp, "_applied", None)
    own = {"GOMP_SPINCOUNT": "7"}
    openmp.apply_defaults(own)
    assert own == {"GOMP_SPINCOUNT": "7"} and openmp.describe_in_effect(own) == "as set here: GOMP_SPINCOUNT=7"
    # Another machine's measurement (another CPU, core count or torch) is not this one's.
    assert list(json.loads(next(tmp_path.rglob(openmp.PROFILE_FILE)).read_text())) == [openmp.machine_key()]
    monkeypatch.setattr(openmp, "machine_key", lambda: "another CPU | 64 cores | torch 9")
    assert not openmp.chosen().measured


def test_measuring_refuses_a_busy_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bloomtui.engine.compute.cpu_share.others_over", lambda window: 1.0)
    with pytest.raises(UsageError, match="other programs hold 1.0 cores"):
        measure_openmp.measure_openmp(argparse.Namespace(seconds=1.0, even_if_busy=False))


def test_measure_openmp_times_each_policy_in_its_own_process_and_info_says_what_it_kept(
    tmp_path: Path, tiny_model
) -> None:  # noqa: ANN001
    env = {k: v for k, v in os.environ.items() if k not in openmp.OWN} | {"XDG_CACHE_HOME": str(tmp_path)}

    def bloomtui(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "bloomtui", *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)

    run = bloomtui("measure-openmp", "--seconds", "0.05", "--even-if-busy")
    assert run.returncode == 0, run.stderr
    for name in openmp.POLICIES:
        assert f"{name}: quiet ..." in run.stdout
    kept = run.stdout.strip().splitlines()[-1]
    assert kept.startswith("kept: ") and "measured here" in kept
    info = bloomtui("info", str(tiny_model.path))
    line = next(ln for ln in info.stdout.splitlines() if ln.startswith("openmp"))
    assert kept.removeprefix("kept: ") in line
