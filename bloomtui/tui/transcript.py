"""The session as Markdown: each prompt, its continuation (or each of its samples), and how the run ended."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from bloomtui.tui.widgets.run_output import Exchange


def _fence(text: str) -> str:
    """A code fence longer than any backtick run inside `text`, so model output cannot break out of it."""
    longest, run = 0, 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    return "`" * max(3, longest + 1)


def to_markdown(exchanges: Iterable[Exchange], title: str = "bloomtui transcript") -> str:
    """A section per run: its prompt, then its continuation, or each of its samples under its label."""
    lines = [f"# {title}", ""]
    number = 0
    for exchange in exchanges:
        # Fenced text: model output is raw text, and Markdown would eat its `*`, `#` and indentation.
        if exchange.sample <= 1:  # a new run (the first of its samples)
            number += 1
            heading = f"## {number}. {exchange.model}"
            if exchange.sample:
                heading += f" · {exchange.samples} samples"
            fence = _fence(exchange.prompt + exchange.text)  # one fence for a prompt and its continuation
            lines += [heading, "", "**Prompt**", "", fence, exchange.prompt, fence, ""]
        label = "Continuation"
        if exchange.sample:
            label = exchange.label.capitalize() + (" (picked)" if exchange.picked else "")
        fence = _fence(exchange.prompt + exchange.text)
        lines += [f"**{label}**", "", fence, exchange.text, fence, "", f"_{exchange.status or exchange.outcome}_", ""]
    return "\n".join(lines)


def save_transcript(exchanges: list[Exchange], directory: Path) -> Path:
    """Write a new timestamped file in `directory` and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = directory / f"transcript-{stamp}.md"
    suffix = 1
    while path.exists():
        suffix += 1
        path = directory / f"transcript-{stamp}-{suffix}.md"
    path.write_text(to_markdown(exchanges), encoding="utf-8")
    return path
