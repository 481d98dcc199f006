"""The engine panel folded into one line, for terminals too narrow to keep the panel beside the output."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from bloomtui.sizes import format_size
from bloomtui.tui.run_state import PanelSnapshot
from bloomtui.tui.widgets.panel_parts import DrawnWhenShown, mark_state, seconds, state_text


def summary(snap: PanelSnapshot, toggle_key: str) -> Text:
    """State first (it matters most when the line is cut), then progress, speed and memory."""
    line = state_text(snap.state)
    n_blocks = snap.model.n_blocks if snap.model else 0
    parts: list[str] = ["run queued"] if snap.queued else []
    if snap.state == "loading":
        parts.append(snap.message)
        if snap.load_total:
            parts.append(f"{format_size(snap.load_done)} / {format_size(snap.load_total)}")
    elif snap.state == "running":
        if snap.prefill_tokens > 1 and snap.prefill_total:
            parts.append(f"prefill {snap.prefill_tokens} tok {100 * snap.prefill_done / snap.prefill_total:.0f}%")
        elif snap.block >= 0:
            parts.append(f"block {snap.block + 1}/{n_blocks} {snap.phase or 'computing'}")
        limit = f"/{snap.max_tokens}" if snap.max_tokens else ""
        if snap.sequences > 1:
            parts.append(f"{snap.tokens}{limit} tok × {snap.sequences} samples")
            if snap.aggregate_rate:
                parts.append(f"{snap.aggregate_rate:.0f} tok/s in all")
        else:
            parts.append(f"{snap.tokens}{limit} tok")
        if snap.seconds_per_token:
            parts.append(f"{seconds(snap.seconds_per_token)}/tok")
        if snap.draft_name and snap.acceptance is not None:
            parts.append(f"draft {snap.acceptance:.0%} kept")
    elif snap.message:
        parts.append(snap.message)
    elif snap.model is not None:
        parts.append(snap.model.name)
    if snap.rss:
        parts.append(f"RSS {format_size(snap.rss)}")
    for part in parts:
        line.append(f" · {part}")
    line.append(f"  {toggle_key} panel", style="dim")
    return line


class StatusLine(DrawnWhenShown, Static):
    """Drawn now if the line is displayed, else when it is shown (it is hidden beside a side panel)."""

    DEFAULT_CSS = """
    StatusLine { height: 1; text-wrap: nowrap; text-overflow: ellipsis; padding: 0 1; }
    """

    def __init__(self, toggle_key: str, **kwargs: object) -> None:
        super().__init__(markup=False, **kwargs)  # type: ignore[arg-type]
        self.toggle_key = toggle_key
        self.snapshot = PanelSnapshot()

    def _draw(self) -> None:
        snap = self.snapshot
        self.update(summary(snap, self.toggle_key), layout=False)  # always one line
        mark_state(self, snap.state, ("error", "running"))  # app.tcss colours no cancelled line
