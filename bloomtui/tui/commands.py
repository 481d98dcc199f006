"""Command palette entries for the rarer actions: example prompts, history, transcript, clipboard.

The example prompts fit the model that is open: the seed article's for a real BLOOM, doc-like openings for the
demo model, which was trained on the Python documentation and knows little else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Protocol

from textual.app import SystemCommand

Examples = tuple[tuple[str, str], ...]
BLOOM_PROMPTS: Examples = (
    # The three prompts of the seed article, verbatim (trailing spaces included: BLOOM continues after them).
    ("SQL", "The SQL command to extract all the users whose name starts with A is: "),
    ("Spanish", "The Spanish translation of thank you for your help is: "),
    (
        "step by step",
        "John is 4 times as old as Bob. Bob is 3 years younger than Mike. Mike is 10 years old. "
        "What is John's age? Let's think step by step. ",
    ),
)
DEMO_PROMPTS: Examples = (
    # Openings whose continuation, at the demo's own settings (greedy, penalty 1.2), reads like its docs.
    ("open()", "The open() function returns"),
    ("missing file", "If the file does not exist, the function"),
    ("pathlib", "The pathlib module offers"),
    ("argparse", "The argparse module makes it easy to"),
    ("lists", "The most important thing to remember about lists is that"),  # README's example
)
HISTORY_IN_PALETTE = 20


def example_prompts(demo: bool) -> Examples:
    return DEMO_PROMPTS if demo else BLOOM_PROMPTS


class PaletteHost(Protocol):
    history: list[str]

    @property
    def demo_open(self) -> bool:
        """Whether the model open (or opening) is the demo model."""

    def insert_prompt(self, text: str) -> None: ...

    def action_save_transcript(self) -> None: ...

    def action_copy_output(self) -> None: ...

    def action_settings(self) -> None: ...

    def action_open_model(self) -> None: ...

    def action_open_demo(self) -> None: ...

    def action_clear(self) -> None: ...


def _one_line(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def palette_commands(host: PaletteHost) -> Iterable[SystemCommand]:
    for label, prompt in example_prompts(host.demo_open):
        insert: Callable[[], None] = partial(host.insert_prompt, prompt)
        yield SystemCommand(f"Example prompt: {label}", _one_line(prompt), insert)
    yield SystemCommand("Save transcript", "Write this session as Markdown and show where", host.action_save_transcript)
    yield SystemCommand("Copy output", "Copy the last prompt and its continuation", host.action_copy_output)
    yield SystemCommand("Settings", "Tokens, sampling, seed, RAM budget", host.action_settings)
    yield SystemCommand("Open model", "A cached BLOOM, a folder, or the demo", host.action_open_model)
    yield SystemCommand("Open demo model", "Built-in small model trained on the Python docs", host.action_open_demo)
    yield SystemCommand("Clear output", "Remove all runs from the output pane", host.action_clear)
    for prompt in reversed(host.history[-HISTORY_IN_PALETTE:]):
        yield SystemCommand(f"History: {_one_line(prompt, 40)}", _one_line(prompt), partial(host.insert_prompt, prompt))
