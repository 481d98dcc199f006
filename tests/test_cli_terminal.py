"""`bloomtui generate` in a real terminal (a pty shared by stdout and stderr), as a user sees it."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

from bloomtui import demo_models

DEMO = str(demo_models.path("trained"))
ARGS = ("The most important thing to remember about lists is that", "--max-new-tokens", "60", "--ignore-eos")
ARGS += ("--dtype", "float32", "--ram-budget", "14MB")  # streamed: block events keep coming during decode


def run_in_pty(*args: str, timeout: float = 120) -> bytes:
    """Everything the command wrote to its terminal, raw."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bloomtui", *args], stdin=subprocess.DEVNULL, stdout=follower, stderr=follower
    )
    os.close(follower)
    out = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the command closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=10)
    os.close(leader)
    assert proc.returncode == 0, out.decode(errors="replace")
    return bytes(out)


def screen_lines(raw: bytes) -> list[str]:
    """The lines a terminal shows for this output: a carriage return goes back to column 0 and later
    characters overwrite earlier ones (all the progress line uses)."""
    lines = []
    for line in raw.decode().replace("\r\n", "\n").split("\n"):
        cells: list[str] = []
        col = 0
        for ch in line:
            if ch == "\r":
                col = 0
                continue
            if col < len(cells):
                cells[col] = ch
            else:
                cells.append(ch)
            col += 1
        lines.append("".join(cells).rstrip())
    return lines


def test_progress_never_overwrites_the_streamed_text() -> None:
    expected = subprocess.run(
        [sys.executable, "-m", "bloomtui", "generate", DEMO, *ARGS], capture_output=True, text=True, timeout=120
    )
    assert expected.returncode == 0, expected.stderr
    text = expected.stdout.rstrip("\n")
    assert len(text) > 100
    shown = screen_lines(run_in_pty("generate", DEMO, *ARGS))
    # The continuation's lines appear on screen whole, and the summary follows on a line of its own.
    for line in text.split("\n"):
        assert line.rstrip() in shown, (line, shown)
    assert any("tokens (length)" in line and "tokens/s" in line for line in shown), shown
