"""What planning asks of the machine it runs on, in one place: the memory it can give, how its disk reads, and
which files take O_DIRECT or can be leased. `plan_model` takes one; tests pass a subclass that answers otherwise
(a machine short of memory, a disk that reads faster through the page cache)."""

from __future__ import annotations

from pathlib import Path

from bloomtui.engine.io.direct import probe_direct
from bloomtui.engine.io.mapped import FileMaps
from bloomtui.engine.plan import memory_guard
from bloomtui.engine.plan.disk_profile import DiskProfile, disk_profile
from bloomtui.engine.plan.residency import default_budget


class Machine:
    def available_memory(self) -> int:
        """Memory available now (MemAvailable, or the memory cgroup's remainder where lower)."""
        return memory_guard.available_memory()

    def budget(self, asked: int | None) -> tuple[int, str | None]:
        """The RAM budget to plan for, and a warning when the asked one was more than the machine holds."""
        return memory_guard.fit_budget(asked) if asked is not None else (default_budget(), None)

    def disk_profile(self, path: Path, cached_reader: str) -> DiskProfile | None:
        """The readers of `path`'s disk measured beside compute (cached per filesystem); None: could not tell."""
        return disk_profile(path, cached_reader)

    def takes_direct(self, path: Path) -> bool:
        return probe_direct(path)

    def can_lease(self, files: set[Path]) -> bool:
        """Whether every file can be mapped under a lease that reports a change (mapped.py)."""
        maps = FileMaps(drop_cache=False)
        try:
            return maps.can_lease(files)
        finally:
            maps.close()
