"""Unhandled exceptions in the app: the traceback goes to a log file the user can attach to a bug report.

Textual restores the terminal before it prints its own traceback, which scrolls away or is lost when the
app ran from a launcher; the log file under the XDG state dir keeps it, and its path is printed last.
"""

from __future__ import annotations

import platform
import sys
import time
import traceback
from pathlib import Path

from bloomtui import __version__, locations


def write_crash_log(error: BaseException) -> Path | None:
    """Write `error`'s traceback to a new file under the state dir; its path, or None if it cannot be written."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    header = (
        f"bloomtui {__version__} crashed at {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        f"python {platform.python_version()} on {platform.platform()}\n"
        f"argv {sys.argv}\n\n"
    )
    try:
        folder = locations.state_dir()
        path = folder / f"crash-{stamp}.log"
        n = 1
        while path.exists():  # two crashes in one second keep both logs
            n += 1
            path = folder / f"crash-{stamp}-{n}.log"
        path.write_text(header + text, encoding="utf-8")
    except OSError:
        return None
    return path


def crash_message(error: BaseException, log: Path | None) -> str:
    where = f"the traceback is in {log}" if log else "the traceback could not be written to a log file"
    return f"bloomtui crashed ({type(error).__name__}: {error}); {where}"
