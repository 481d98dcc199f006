"""Errors a user can act on. Each carries a one-line message; the CLI prints it as `error: ...`."""

from __future__ import annotations


class BloomtuiError(Exception):
    """Base of every error bloomtui reports to a user (no traceback, exit status 2)."""

    title = "Error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(BloomtuiError):
    """A bad option value or argument."""

    title = "Bad option"


class ConfigError(BloomtuiError):
    """config.json is missing, unreadable or not a BLOOM config."""

    title = "Bad config"


class CheckpointError(BloomtuiError):
    """The weights are missing, truncated, or do not match the config."""

    title = "Bad checkpoint"


class BudgetError(BloomtuiError):
    """The RAM budget cannot hold what one streamed block needs."""

    title = "RAM budget too small"


class CancelRequested(Exception):  # noqa: N818 - control flow, not an error shown to users
    """Raised inside the engine when the cancel flag is set; caught by the generation loop."""
