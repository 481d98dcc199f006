"""Sizing torch's thread team to the cores other programs leave."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bloomtui.engine.compute import cpu_share
from bloomtui.engine.compute.cpu_share import CpuShare, Sample, threads_for


def test_threads_for_the_cores_left() -> None:
    assert threads_for(2, 0.0, 2) == 2
    assert threads_for(2, 0.5, 2) == 2  # half a core taken: the team still gains from both
    assert threads_for(2, 0.7, 2) == 1
    assert threads_for(2, 2.0, 2) == 1  # never fewer than one
    assert threads_for(8, 3.0, 8) == 5
    assert threads_for(8, 0.0, 4) == 4  # never more than the quiet choice


class FakeClock:
    """Samples of a 2-core machine on which another program uses `others` cores."""

    def __init__(self) -> None:
        self.t, self.busy, self.own = 0.0, 0.0, 0.0
        self.others = 0.0

    def advance(self, seconds: float, own_cores: float = 1.0) -> None:
        self.t += seconds
        self.own += own_cores * seconds
        self.busy += (own_cores + self.others) * seconds

    def __call__(self) -> Sample:
        return Sample(self.t, self.busy, self.own)


def test_the_team_shrinks_when_two_looks_agree_and_grows_back() -> None:
    clock = FakeClock()
    share = CpuShare(2, cores=2, sample=clock)
    clock.advance(0.5)
    assert share.look() == 2
    clock.others = 1.0
    clock.advance(0.5)
    assert share.look() == 2  # one busy window is not enough
    clock.advance(0.1)
    assert share.look() == 2  # too short a window: no decision
    clock.advance(0.5)
    assert share.look() == 1 and share.others == pytest.approx(1.0)
    clock.others = 0.0
    clock.advance(0.5)
    clock.advance(0.5)
    assert share.look() == 1  # first quiet look
    clock.advance(0.5)
    assert share.look() == 2


def test_a_busy_process_is_seen_as_a_core_taken() -> None:
    if not cpu_share.supported():
        pytest.skip("no /proc/stat")
    share = CpuShare(2)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        share.look()
        time.sleep(1.0)
        share.look()
    finally:
        busy.kill()
        busy.wait()
    # The loop holds a core, less what the machine's other work takes from it.
    assert share.others > 0.6


def test_an_engine_follows_the_load_unless_threads_are_given(tiny_model) -> None:  # noqa: ANN001
    import torch

    from bloomtui.engine import Engine, EngineOptions, SamplingParams

    quiet = cpu_share.default_threads()
    fixed = Engine.open(tiny_model.path, EngineOptions(threads=1))
    try:
        assert torch.get_num_threads() == 1 and fixed.cpu_share is None
    finally:
        fixed.close()
    engine = Engine.open(tiny_model.path)  # an earlier model's count does not stick
    try:
        assert torch.get_num_threads() == quiet
        assert (engine.cpu_share is not None) == cpu_share.supported()
        engine.generate("Hello", SamplingParams(max_new_tokens=3))
    finally:
        engine.close()
