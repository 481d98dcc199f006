"""How much CPU other programs take, and the compute threads that leaves this process.

torch's OpenMP threads meet at a barrier after every parallel region. When another program holds one of the
cores, a team as large as the machine waits at each barrier for the thread the scheduler parked, and decoding
slows several times (measured on a 2-core VM with one busy process: 3.6-5x); a team that fits in the cores
left runs at its fair share. So between passes the engine reads how much CPU the machine spent outside this
process since the last look (/proc/stat, steal time included, less this process's own CPU time) and sizes its
team to the cores left over, changing it only when two looks in a row agree.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_MIN_WINDOW_S = 0.25
"""Shorter windows are noise: a look that comes sooner keeps accumulating."""


@dataclass(frozen=True)
class Sample:
    wall: float
    busy: float
    """CPU seconds the whole machine spent not idle (user, system, interrupts, steal)."""
    own: float
    """CPU seconds of this process, all threads."""


def read_sample() -> Sample:
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(x) for x in fields]
    # user nice system idle iowait irq softirq steal (guest time is already inside user)
    busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + (ticks[7] if len(ticks) > 7 else 0)
    return Sample(time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), time.process_time())


@cache
def default_threads() -> int:
    """torch's own thread count (one per core, or OMP_NUM_THREADS), read before bloomtui first changes it."""
    import torch

    return torch.get_num_threads()


def others_over(window: float) -> float | None:
    """Cores other programs kept busy over the next `window` seconds (None where /proc/stat is missing)."""
    try:
        before = read_sample()
        time.sleep(window)
        after = read_sample()
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, (after.busy - before.busy - (after.own - before.own)) / (after.wall - before.wall))


def supported() -> bool:
    try:
        read_sample()
        return True
    except (OSError, ValueError, IndexError):
        return False


def threads_for(cores: int, others: float, most: int) -> int:
    """The team size for the cores other programs leave: a core counts as taken from 0.6 of one on."""
    taken = math.floor(others + 0.4)
    return max(1, min(most, cores - taken))


class CpuShare:
    """Decides, between passes, how many compute threads to run; `most` is the quiet choice."""

    def __init__(self, most: int, cores: int | None = None, sample: Callable[[], Sample] = read_sample) -> None:
        self.most = most
        self.cores = cores or os.cpu_count() or 1
        self._sample = sample
        self._last = sample()
        self._proposed: int | None = None
        self.current = most
        self.others = 0.0
        """Cores other programs used in the last window."""

    def look(self) -> int:
        """The thread count to run the next pass with."""
        now = self._sample()
        wall = now.wall - self._last.wall
        if wall < _MIN_WINDOW_S:
            return self.current
        self.others = max(0.0, (now.busy - self._last.busy - (now.own - self._last.own)) / wall)
        self._last = now
        wanted = threads_for(self.cores, self.others, self.most)
        if wanted != self.current and wanted == self._proposed:
            self.current = wanted
        self._proposed = wanted
        return self.current
