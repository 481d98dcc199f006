"""The footer, keeping its keys whole on narrow terminals: Textual's roomy style where every key fits, its compact
style (a space less around each key) where that makes them fit, and where even that does not, it gives up keys
in DROP_ORDER, least needed first, until the rest fit beside the palette's key (80 columns show them all,
compact). Each key is classed by its action, for the stylesheet and tests."""

from __future__ import annotations

from collections.abc import Iterable

from rich.cells import cell_len
from textual import events
from textual.app import ComposeResult
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

DROP_ORDER = ("save_transcript", "open_model", "settings", "toggle_panel", "cancel")
"""Actions whose keys go first where the footer is short of room; run and quit always stay, and the palette
(whose key stays too) offers every action."""


def action_of(key: FooterKey) -> str:
    return key.action.removeprefix("app.")


def key_width(key: FooterKey, compact: bool) -> int:
    """Cells `key` takes, as Textual's Footer styles it: the key and its description a space apart, then
    roomy, a space before the key and after the description; compact, a margin after. The palette's key is
    always compact inside, with a border before it and a space after."""
    text = cell_len(key.key_display) + 1 + cell_len(key.description)
    if key.has_class("-command-palette"):
        return text + 2
    return text + (1 if compact else 2)


def fit(keys: Iterable[FooterKey], width: int) -> tuple[bool, frozenset[str]]:
    """(compact, actions to hide) so that `keys` fit `width` cells: roomy if all fit so, else compact, giving up
    keys in DROP_ORDER until the rest fit (or none is left to give up)."""
    keys = list(keys)

    def needed(compact: bool, dropped: frozenset[str]) -> int:
        return sum(key_width(key, compact) for key in keys if action_of(key) not in dropped)

    if needed(False, frozenset()) <= width:
        return False, frozenset()
    dropped: frozenset[str] = frozenset()
    for action in DROP_ORDER:
        if needed(True, dropped) <= width:
            break
        dropped |= {action}
    return True, dropped


class AppFooter(Footer):
    def compose(self) -> ComposeResult:
        keys = []
        for widget in super().compose():
            if isinstance(widget, FooterKey):
                widget.add_class(f"-action-{action_of(widget)}")
                keys.append(widget)
            yield widget
        self._fit(keys)  # the bindings change (a run starts, a dialog opens): the keys are new

    def on_resize(self, event: events.Resize) -> None:
        self._fit(self.query(FooterKey))

    def _fit(self, keys: Iterable[FooterKey]) -> None:
        keys = list(keys)
        # Before its first layout the footer has no size: it spans the screen, so the terminal's width.
        compact, dropped = fit(keys, self.size.width or self.app.size.width)
        self.compact = compact
        for key in keys:
            key.display = action_of(key) not in dropped
