"""Termination signals while the app runs: leave through Textual, which restores the terminal, and leave
for certain, even when Textual cannot.

By default SIGTERM and SIGHUP end the process on the spot, leaving the terminal in raw mode, and SIGINT
(sent with kill: in raw mode ctrl+c is a key, not a signal) raises KeyboardInterrupt wherever the main
thread happens to be. Handled here, each one cancels the run, saves history and exits the app with the
shell's status for that signal (128 + its number).

No Python code of ours runs in a signal handler, and nothing waits on the UI thread to notice a signal: a
thread reads signal numbers from the interpreter's wakeup fd, hands the graceful exit to the event loop
(`call_soon_threadsafe`) and gives it `deadline` seconds before it ends the process itself, putting the
terminal's modes back first where they were captured (`terminal_modes`). The case it exists for: the terminal
went away (a closed window, tmux kill-session), every write to it fails, Textual's writer thread stops taking
output and the UI thread blocks for good on its full queue; the app was left running on a deleted pty.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import termios
import threading
from collections.abc import Callable
from typing import Any

EXIT_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
EXIT_DEADLINE = 1.5
"""Seconds from a termination signal to the watchdog's exit: a graceful one takes well under a second."""

TerminalModes = list[Any]
"""What termios.tcgetattr returns."""


def exit_status(signum: int) -> int:
    return 128 + signum


def terminal_modes() -> TerminalModes | None:
    """The terminal's modes now (before the app switches it to raw mode), or None without a terminal."""
    try:
        return termios.tcgetattr(sys.__stdin__.fileno()) if sys.__stdin__ and sys.__stdin__.isatty() else None
    except (termios.error, OSError, ValueError):
        return None


def _ignore(_signum: int, _frame: object) -> None:
    """The Python-level handler: the wakeup fd carries the signal to the watchdog."""


class _Watchdog(threading.Thread):
    def __init__(
        self, read_fd: int, on_signal: Callable[[int], None], loop: asyncio.AbstractEventLoop, deadline: float
    ) -> None:
        super().__init__(daemon=True, name="bloomtui-signals")
        self.read_fd = read_fd
        self.on_signal = on_signal
        self.loop = loop
        self.deadline = deadline
        self.modes: TerminalModes | None = None
        self.signalled = threading.Event()
        self.stopped = threading.Event()

    def run(self) -> None:
        while True:
            try:
                data = os.read(self.read_fd, 64)
            except OSError:
                return
            if self.stopped.is_set() or not data:
                return
            # Every signal with a Python handler is written here (SIGWINCH, SIGCONT too): only ours count.
            signums = [n for n in data if n in EXIT_SIGNALS]
            if signums:
                break
        signum = signums[0]
        self.signalled.set()
        try:
            self.loop.call_soon_threadsafe(self.on_signal, signum)
        except RuntimeError:  # the loop has closed: the app is on its way out already
            pass
        if self.stopped.wait(self.deadline):
            return
        if self.modes is not None:
            try:
                termios.tcsetattr(sys.__stdin__.fileno(), termios.TCSANOW, self.modes)
            except (termios.error, OSError, ValueError):
                pass  # the terminal is gone: nothing to restore
        os._exit(exit_status(signum))


def install(
    on_signal: Callable[[int], None], modes: TerminalModes | None = None, deadline: float = EXIT_DEADLINE
) -> Callable[[], None]:
    """Route EXIT_SIGNALS to `on_signal(signum)` on the running loop, with the watchdog behind it (main thread
    only). Returns an undo that puts the previous handlers back and, unless a signal came (the exit it started
    may still hang after the app unmounts), stands the watchdog down."""
    loop = asyncio.get_running_loop()
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except ValueError:  # not the main thread
        os.close(read_fd)
        os.close(write_fd)
        return lambda: None
    watchdog = _Watchdog(read_fd, on_signal, loop, deadline)
    watchdog.modes = modes
    previous = {}
    for sig in EXIT_SIGNALS:
        try:
            previous[sig] = signal.signal(sig, _ignore)
        except (OSError, RuntimeError, ValueError):  # no such signal here
            continue
    watchdog.start()

    def undo() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)  # the default again (KeyboardInterrupt for SIGINT)
        signal.set_wakeup_fd(previous_fd)
        if not watchdog.signalled.is_set():
            watchdog.stopped.set()
            os.write(write_fd, b"\0")  # wakes the watchdog's read, and it ends

    return undo
