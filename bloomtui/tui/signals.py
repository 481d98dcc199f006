"""Termination signals while the app runs: leave through Textual, which restores the terminal.

By default SIGTERM and SIGHUP end the process on the spot, leaving the terminal in raw mode, and SIGINT
(sent with kill: in raw mode ctrl+c is a key, not a signal) raises KeyboardInterrupt wherever the main
thread happens to be. Handled on the event loop instead, each one cancels the run, saves history and exits
the app with the shell's status for that signal (128 + its number).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

EXIT_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def exit_status(signum: int) -> int:
    return 128 + signum


def install(on_signal: Callable[[int], None]) -> Callable[[], None]:
    """Route EXIT_SIGNALS to `on_signal(signum)` on the running loop (main thread only); returns an undo."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in EXIT_SIGNALS:
        try:
            loop.add_signal_handler(sig, on_signal, int(sig))
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no such signal here
            continue
        installed.append(sig)

    def undo() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)  # restores the default (KeyboardInterrupt for SIGINT)

    return undo
