"""The multi-line prompt editor, with shell-like history on up/down at its first and last line."""

from __future__ import annotations

from collections.abc import Callable

from textual import events
from textual.widgets import TextArea

PLACEHOLDER = "Type a prompt · ctrl+j runs it · ↑ recalls earlier prompts"


class PromptEditor(TextArea):
    def __init__(self, history: list[str] | None = None, **kwargs: object) -> None:
        super().__init__(
            soft_wrap=True, show_line_numbers=False, tab_behavior="focus", placeholder=PLACEHOLDER, **kwargs
        )  # type: ignore[arg-type]
        self.prompt_history: list[str] = history if history is not None else []
        """Oldest first; shared with the app, which persists it."""
        self._position: int | None = None
        """Index into history while recalling, None while editing a fresh prompt."""
        self._draft = ""
        self.lets_through: Callable[[str], bool] = lambda _character: False
        """Characters the editor leaves to the app's bindings just now (the digits that pick a sample while
        the editor is empty); Textual otherwise gives a focused editor every printable key."""

    def check_consume_key(self, key: str, character: str | None = None) -> bool:
        if character is not None and self.lets_through(character):
            return False
        return super().check_consume_key(key, character)

    def set_prompt(self, text: str) -> None:
        """Replace the text and put the cursor at its end, ready to type on."""
        self.load_text(text)
        self.move_cursor(self.document.end)
        self._position = None

    def recall(self, step: int) -> bool:
        """Move through history (-1 older, +1 newer); False when there is nothing further that way."""
        if not self.prompt_history:
            return False
        if self._position is None:
            if step > 0:
                return False
            self._draft = self.text
            position = len(self.prompt_history) - 1
        else:
            position = self._position + step
        if position < 0:
            return False
        if position >= len(self.prompt_history):
            self.load_text(self._draft)
            self._position = None
        else:
            self.load_text(self.prompt_history[position])
            self._position = position
        self.move_cursor(self.document.end)
        return True

    async def _on_key(self, event: events.Key) -> None:
        row = self.cursor_location[0]
        if event.key == "up" and row == 0 and self.recall(-1):
            event.prevent_default()
            event.stop()
            return
        if event.key == "down" and row == self.document.line_count - 1 and self.recall(+1):
            event.prevent_default()
            event.stop()
            return
        await super()._on_key(event)
