"""The headless CLI's progress on stderr: one line redrawn in place on a terminal; elsewhere, plain lines for
long work only (a prefill or a perplexity run that lasts more than a couple of seconds)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from bloomtui.engine import events
from bloomtui.sizes import format_size

PLAIN_AFTER_SECONDS = 2.0
PLAIN_EVERY_SECONDS = 5.0


def prefill_text(event: events.PrefillProgress) -> str:
    pct = 100 * event.done / max(1, event.total)
    return (
        f"prefill {event.tokens} tokens {pct:3.0f}%  block {event.block + 1}/{event.blocks}  "
        f"{event.seconds:.0f} s, ETA {event.eta_seconds:.0f} s"
    )


def finish_generation(
    result: events.Done | events.Cancelled, as_json: bool, summary: Callable[[events.Done], str]
) -> int:
    """End a headless `generate` (local or remote): close the streamed text's line, say how it ended on
    stderr (summary(done) for a finished run), and return the exit status: 130 when cancelled."""
    cancelled = isinstance(result, events.Cancelled)
    if as_json:
        return 130 if cancelled else 0
    if result.text and not result.text.endswith("\n"):
        sys.stdout.write("\n")
    if cancelled:
        print(f"cancelled after {result.new_tokens} tokens", file=sys.stderr)
        return 130
    print(summary(result), file=sys.stderr)
    return 0


class PlainLines:
    """Progress as whole lines for a stream that is not a terminal: nothing for short work, then a line
    every few seconds (no carriage-return spam in logs)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._last = 0.0

    def __call__(self, elapsed: float, text: str, final: bool = False) -> None:
        now = time.monotonic()
        if elapsed < PLAIN_AFTER_SECONDS or (now - self._last < PLAIN_EVERY_SECONDS and not final):
            return
        self._last = now
        self.stream.write(text + "\n")
        self.stream.flush()


def same_terminal(a: TextIO, b: TextIO) -> bool:
    """Whether two streams write to one terminal (stdout and stderr both on the user's screen)."""
    try:
        return a.isatty() and b.isatty() and os.fstat(a.fileno()).st_rdev == os.fstat(b.fileno()).st_rdev
    except (OSError, ValueError):  # closed, or a stream without a file descriptor
        return False


class StatusLine:
    """Renders engine events as a single status line, at most ~10 redraws a second.

    The line is redrawn in place with carriage returns, so it must never share a screen line with the text
    a command streams: once text follows on the same terminal (`text_follows`), the line is no longer drawn
    and the streamed text is the progress. Loading and a long prompt's prefill come before any text and still
    show; with stdout redirected or on another terminal the line shows throughout."""

    def __init__(self, stream: TextIO = sys.stderr, text_stream: TextIO | None = None) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self._shares_screen = text_stream is not None and same_terminal(stream, text_stream)
        self._quiet = False
        self._plain = PlainLines(stream)
        self._last_draw = 0.0
        self._width = 0
        self._read_bytes = 0
        self._read_seconds = 0.0
        self._tokens = 0

    def __call__(self, event: events.Event) -> None:
        if isinstance(event, events.LongPrompt):  # a warning, shown whether or not progress is
            self.clear()
            self.stream.write(f"warning: {event.message}\n")
            self.stream.flush()
            return
        if self._quiet:
            return
        if isinstance(event, events.PrefillProgress) and event.tokens > 1:
            if self.enabled:
                self._draw(prefill_text(event), force=event.done == event.total)
            else:
                self._plain(event.seconds, prefill_text(event), final=event.done == event.total)
            return
        if not self.enabled:
            return
        if isinstance(event, events.LoadProgress):
            pct = 100 * event.done_bytes / max(1, event.total_bytes)
            self._draw(f"loading {pct:3.0f}%  {format_size(event.done_bytes)} / {format_size(event.total_bytes)}")
        elif isinstance(event, events.BlockDone):
            self._read_bytes += event.bytes
            self._read_seconds += event.read_seconds
            speed = self._read_bytes / self._read_seconds / 1e6 if self._read_seconds else 0.0
            self._draw(
                f"{event.kind} block {event.index + 1}/{event.total}  token {self._tokens + 1}  "
                f"read {speed:.0f} MB/s  RSS {format_size(event.rss)}"
            )
        elif isinstance(event, events.TokenGenerated):
            self._tokens += 1

    def text_follows(self) -> None:
        """Text is about to be written to the text stream: clear the line, and stop drawing it if that text
        lands on the same screen."""
        self.clear()
        if self._shares_screen:
            self._quiet = True

    def _draw(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        self.stream.write("\r" + text.ljust(self._width) + "\r")
        self._width = len(text)
        self.stream.flush()

    def clear(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


class ScoreProgress:
    """A perplexity run's progress: a rich bar on a terminal (windows, tokens/s, ETA), plain lines elsewhere."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self._plain = PlainLines(stream)
        self._bar = None
        self._task = None
        self._started = time.monotonic()
        self._windows_done = 0

    def __enter__(self) -> ScoreProgress:
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("scoring"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=True,
            )
            self._bar.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __call__(self, event: events.Event) -> None:
        from bloomtui.engine.decode.scoring import WindowScored

        if isinstance(event, WindowScored):
            self._windows_done = event.index + 1
            detail = f"window {event.index + 1}/{event.total}, NLL {event.nll:.3f}"
            self._update(event.index + 1, event.total, detail)
        elif isinstance(event, events.PrefillProgress) and self._bar is not None and self._task is not None:
            total = self._bar.tasks[0].total or 1
            self._bar.update(self._task, completed=self._windows_done + event.done / event.total, total=total)

    def _update(self, done: int, total: int, detail: str) -> None:
        if self._bar is not None:
            if self._task is None:
                self._task = self._bar.add_task("score", total=total, detail=detail)
            self._bar.update(self._task, completed=done, total=total, detail=detail)
        else:
            self._plain(time.monotonic() - self._started, f"scored {detail}", final=done == total)


@contextmanager
def prepare_progress(stream: TextIO = sys.stderr) -> Iterator[Callable]:
    """`bloomtui prepare`'s progress: a rich bar (files, MB/s, ETA) on a terminal, plain lines elsewhere."""
    plain = PlainLines(stream)
    bar = None
    if stream.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(
            TextColumn("preparing"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[speed]}"),
            TimeRemainingColumn(),
            console=Console(file=stream),
            transient=True,
        )
        task = bar.add_task("prepare", total=None, speed="")
        bar.start()

    def on_progress(p) -> None:  # noqa: ANN001 - a PrepareProgress
        speed = f"{p.bytes_written / max(p.seconds, 1e-9) / 1e6:.0f} MB/s written"
        if bar is not None:
            bar.update(task, completed=p.done, total=p.total, speed=speed)
        else:
            plain(p.seconds, f"prepared {p.done}/{p.total} files, {speed}", final=p.done == p.total)

    try:
        yield on_progress
    finally:
        if bar is not None:
            bar.stop()


def hub_text(p) -> str:  # noqa: ANN001 - a from_hub.HubProgress
    """One line of a hub prepare's progress: the shard, the fetch's speed, the files prepared, the ETA."""
    eta = p.eta_seconds
    return (
        f"{_item(p)} {p.shard}/{p.shards}  fetched {format_size(p.fetched)} of {format_size(p.to_fetch)} "
        f"at {format_size(p.fetch_rate)}/s  {p.action} {p.units_done}/{p.units} files"
        + (f"  ETA {_duration(eta)}" if eta is not None else "")
    )


def _item(p) -> str:  # noqa: ANN001 - a HubProgress
    return "file" if p.action == "fetched" else "shard"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@contextmanager
def hub_progress(stream: TextIO = sys.stderr, as_json: bool = False) -> Iterator[tuple[Callable, Callable]]:
    """A hub prepare's plan and progress: (on_plan, on_progress). JSON lines on stdout with `as_json`; else the
    plan as a line on stderr, then a rich bar over the shards on a terminal, or plain lines every few seconds."""
    import json

    if as_json:

        def plan_json(text: str) -> None:
            print(json.dumps({"event": "plan", "text": text}), flush=True)

        def progress_json(p) -> None:  # noqa: ANN001 - a HubProgress
            fields = {k: getattr(p, k) for k in ("shard", "shards", "fetched", "to_fetch", "units_done", "units")}
            fields |= {"seconds": round(p.seconds, 2), "fetch_rate": round(p.fetch_rate), "eta_seconds": p.eta_seconds}
            print(json.dumps({"event": "progress", **fields}), flush=True)

        yield plan_json, progress_json
        return
    plain = PlainLines(stream)
    bar = None
    task = None

    def on_plan(text: str) -> None:
        stream.write(text + "\n")
        stream.flush()

    def start_bar() -> None:  # on the first progress, so the plan's line comes before it
        nonlocal bar, task
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        bar = Progress(TextColumn("{task.fields[left]}"), BarColumn(), TextColumn("{task.fields[right]}"),
                       console=Console(file=stream), transient=True)  # fmt: skip
        task = bar.add_task("hub", total=None, left="", right="")
        bar.start()

    def on_progress(p) -> None:  # noqa: ANN001 - a HubProgress
        if bar is None and stream.isatty():
            start_bar()
        if bar is not None:
            eta = p.eta_seconds
            bar.update(
                task, completed=p.fetched, total=max(1, p.to_fetch), left=f"{_item(p)} {p.shard}/{p.shards}",
                right=f"{format_size(p.fetch_rate)}/s  {p.action} {p.units_done}/{p.units}"
                + (f"  ETA {_duration(eta)}" if eta is not None else ""),
            )  # fmt: skip
        else:
            plain(p.seconds, hub_text(p), final=p.units_done == p.units)

    try:
        yield on_plan, on_progress
    finally:
        if bar is not None:
            bar.stop()
