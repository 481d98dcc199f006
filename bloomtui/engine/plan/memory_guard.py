"""The memory the machine can give: budgets are checked against it, and loading watches it.

A budget above what the machine holds would have the loader read until the system swaps or the OOM killer
ends the process. So a budget is clamped to total memory less a reserve for the OS and the runtime (Python,
torch, the tokenizer, the UI), with a one-line warning; and loading the resident set stops with an error as
soon as what is left to load no longer fits in the memory available now. "Available" is the kernel's
MemAvailable: free memory plus the page cache it can reclaim without swapping.

Inside a container (or any memory cgroup with a limit) the machine's RAM is not what the process may use:
a budget planned from the host's memory would end in the OOM killer. So both figures are also capped by
the tightest memory limit on the way from this process's cgroup to the root (v1 or v2), "available" there
being the limit less what the cgroup uses beyond its reclaimable (inactive) file cache.
"""

from __future__ import annotations

from pathlib import Path

import psutil

from bloomtui.errors import BudgetError
from bloomtui.sizes import format_size

_UNLIMITED = 1 << 60
"""cgroup v1 writes "no limit" as a page-rounded 2**63 - 1."""
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
_V1_FILES = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
_V2_FILES = ("memory.max", "memory.current", "inactive_file")


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value < _UNLIMITED else None


def _inactive_file(stat: Path, key: str) -> int:
    try:
        for line in stat.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_dirs() -> list[tuple[Path, str, str, str]]:
    """(directory, limit file, usage file, inactive-cache key) of this process's memory cgroup and each of its
    ancestors, leaf first; [] where there is none."""
    try:
        lines = PROC_CGROUP.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if "memory" in controllers.split(","):
            mount, files = CGROUP_ROOT / "memory", _V1_FILES
            break
    else:
        v2 = [line for line in lines if line.startswith("0::")]
        if not v2:
            return []
        path = v2[0][3:]
        mount, files = CGROUP_ROOT, _V2_FILES
    leaf = mount / path.strip("/")
    if not leaf.is_dir():
        leaf = mount  # a cgroup namespace shows the process's own cgroup as the mount's root
    dirs = [leaf, *[d for d in leaf.parents if d.is_relative_to(mount)]]
    return [(d, *files) for d in dirs]


def cgroup_memory() -> tuple[int, int] | None:
    """(limit, available under it) of the tightest memory cgroup limit over this process, or None if unlimited."""
    best: tuple[int, int] | None = None
    for directory, limit_file, usage_file, cache_key in _cgroup_dirs():
        limit = _read_int(directory / limit_file)
        if limit is None:
            continue
        usage = _read_int(directory / usage_file) or 0
        used = max(0, usage - _inactive_file(directory / "memory.stat", cache_key))
        available = max(0, limit - used)
        if best is None or available < best[1]:
            best = (limit, available)
    return best


def total_memory() -> int:
    """RAM, or the memory cgroup's limit where that is lower."""
    total = psutil.virtual_memory().total
    limited = cgroup_memory()
    return min(total, limited[0]) if limited else total


def available_memory() -> int:
    """MemAvailable, or what the memory cgroup's limit leaves where that is lower."""
    available = psutil.virtual_memory().available
    limited = cgroup_memory()
    return min(available, limited[1]) if limited else available


def limit_binds() -> bool:
    """Whether a memory cgroup's limit, not the machine's RAM, bounds this process (a container): then only this
    process lives inside the limit, and the reserves for the OS and other programs shrink to its own needs."""
    limited = cgroup_memory()
    return limited is not None and limited[0] < psutil.virtual_memory().total


def reserve(total: int) -> int:
    """Memory a budget leaves to the OS and the runtime: 10% of RAM, at least 1.5 GB; under a memory limit, the
    runtime's own (Python, torch, the tokenizer: ~350 MB) or 10%, at most half the limit."""
    if limit_binds():
        return min(total // 2, max(350 * 1000**2, total // 10))
    return max(1_500 * 1000**2, total // 10)


def headroom(total: int) -> int:
    """Memory loading leaves available, for the KV cache, compute scratch and everyone else: 3%, at least 500 MB
    (under a memory limit, where there is no one else: 5%, at least 100 MB)."""
    if limit_binds():
        return max(100 * 1000**2, total * 5 // 100)
    return max(500 * 1000**2, total * 3 // 100)


def fit_budget(budget: int) -> tuple[int, str | None]:
    """The budget this machine can hold, and a warning when `budget` had to be lowered to it."""
    total = total_memory()
    limit = max(1, total - reserve(total))
    if budget <= limit:
        return budget, None
    return limit, (
        f"RAM budget {format_size(budget)} is more than this machine can hold ({format_size(total)} of RAM "
        "or of its memory limit, "
        f"{format_size(total - limit)} kept for the system and the runtime); using {format_size(limit)}"
    )


class MemoryGuard:
    """Watches available memory while the resident set loads."""

    def __init__(self) -> None:
        self._headroom = headroom(total_memory())

    def check(self, remaining: int, what: str) -> None:
        """Raise BudgetError if `remaining` more bytes would eat into the headroom of available memory."""
        available = available_memory()
        if remaining + self._headroom > available:
            raise BudgetError(
                f"stopped loading at {what}: {format_size(remaining)} still to load but only "
                f"{format_size(available)} of memory is available (keeping {format_size(self._headroom)} free "
                "so the system does not swap); lower the RAM budget or close other programs"
            )
