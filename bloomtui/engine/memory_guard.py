"""The memory the machine can give: budgets are checked against it, and loading watches it.

A budget above what the machine holds would have the loader read until the system swaps or the OOM killer
ends the process. So a budget is clamped to total memory less a reserve for the OS and the runtime (Python,
torch, the tokenizer, the UI), with a one-line warning; and loading the resident set stops with an error as
soon as what is left to load no longer fits in the memory available now. "Available" is the kernel's
MemAvailable: free memory plus the page cache it can reclaim without swapping.
"""

from __future__ import annotations

import psutil

from bloomtui.errors import BudgetError
from bloomtui.sizes import format_size


def total_memory() -> int:
    return psutil.virtual_memory().total


def available_memory() -> int:
    return psutil.virtual_memory().available


def reserve(total: int) -> int:
    """Memory a budget leaves to the OS and the runtime: 10% of RAM, at least 1.5 GB."""
    return max(1_500 * 1000**2, total // 10)


def headroom(total: int) -> int:
    """Memory loading leaves available, for the KV cache, compute scratch and everyone else: 3%, at least 500 MB."""
    return max(500 * 1000**2, total * 3 // 100)


def fit_budget(budget: int) -> tuple[int, str | None]:
    """The budget this machine can hold, and a warning when `budget` had to be lowered to it."""
    total = total_memory()
    limit = max(1, total - reserve(total))
    if budget <= limit:
        return budget, None
    return limit, (
        f"RAM budget {format_size(budget)} is more than this machine can hold ({format_size(total)} of RAM, "
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
