"""What the engine panel, the server panel and the folded status line share: how a state and a time read, the
state's classes for the CSS, and drawing a snapshot only while the widget is displayed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.widget import Widget

from bloomtui.tui.run_state import PanelSnapshot

STATE_ICONS = {
    "empty": "○ no model",
    "loading": "◌ loading",
    "idle": "● ready",
    "running": "▶ running",
    "done": "✔ done",
    "cancelled": "■ cancelled",
    "error": "✖ error",
}
PANEL_STATE_CLASSES = ("error", "cancelled", "running")
"""States a panel marks with a class (`-error`, ...) for app.tcss and its own CSS to colour."""


def seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.0f} min"


def state_text(state: str, message: str = "") -> Text:
    """The state's icon and name in bold, then its message."""
    text = Text(STATE_ICONS.get(state, state), style="bold")
    if message:
        text.append(f" · {message}")
    return text


def mark_state(widget: Widget, state: str, names: tuple[str, ...] = PANEL_STATE_CLASSES) -> None:
    """`-<state>` on `widget` for the one of `names` it is in, off for the others."""
    for name in names:
        widget.set_class(state == name, f"-{name}")


# A mixin placed before a Widget base: typed as one so `display` resolves, a plain class at run time.
if TYPE_CHECKING:
    _WidgetMixin = Widget
else:
    _WidgetMixin = object


class DrawnWhenShown(_WidgetMixin):
    """Keeps the latest snapshot and draws it now if the widget is displayed, else when it is next shown: the UI
    sends snapshots a few times a second while a run goes, and a hidden widget (the panel folded away on a small
    terminal, the status line beside the panel) should cost nothing for them."""

    snapshot: PanelSnapshot
    _drawn = False
    """Whether `snapshot` is on screen (False while the widget is hidden)."""

    def show(self, snap: PanelSnapshot) -> None:
        self.snapshot = snap
        self._drawn = False
        if self.display:
            self._draw_now()

    def on_show(self) -> None:
        if not self._drawn:
            self._draw_now()

    def _draw_now(self) -> None:
        self._drawn = True
        self._draw()

    def _draw(self) -> None:
        """Draw `snapshot`."""
        raise NotImplementedError
