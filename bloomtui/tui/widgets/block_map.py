"""One cell per transformer block: resident or streamed, with the running block highlighted.

Glyphs carry the meaning (full block, shaded block, arrow) and colours repeat it, so the map still reads under NO_COLOR.
"""

from __future__ import annotations

import math

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

RESIDENT, STREAMED, RUNNING = "█", "▒", "▶"


class BlockMap(Widget):
    COMPONENT_CLASSES = {
        "block-map--resident",
        "block-map--streamed",
        "block-map--running",
        "block-map--legend",
    }
    DEFAULT_CSS = """
    BlockMap { height: auto; }
    BlockMap > .block-map--resident { color: $success; }
    BlockMap > .block-map--streamed { color: $warning; }
    BlockMap > .block-map--running { color: $text; background: $accent; text-style: bold; }
    BlockMap > .block-map--legend { color: $text-muted; }
    """

    n_blocks: reactive[int] = reactive(0, layout=True)
    resident: reactive[frozenset[int]] = reactive(frozenset())
    running: reactive[int] = reactive(-1)

    def show(self, n_blocks: int, resident: frozenset[int], running: int) -> None:
        self.n_blocks, self.resident, self.running = n_blocks, resident, running

    def render(self) -> Text:
        if not self.n_blocks:
            return Text("no model", style=self.get_component_rich_style("block-map--legend"))
        styles = {
            name: self.get_component_rich_style(f"block-map--{name}") for name in ("resident", "streamed", "running")
        }
        width = max(2, self.content_size.width or 40)
        # A cell and a space each; a 70-block model wraps to a few rows, balanced so the last is not a stub.
        rows = math.ceil(self.n_blocks / ((width + 1) // 2))
        per_row = math.ceil(self.n_blocks / rows)
        text = Text()
        for i in range(self.n_blocks):
            if i == self.running:
                text.append(RUNNING, styles["running"])
            elif i in self.resident:
                text.append(RESIDENT, styles["resident"])
            else:
                text.append(STREAMED, styles["streamed"])
            if i + 1 < self.n_blocks:
                text.append("\n" if (i + 1) % per_row == 0 else " ")
        legend = self.get_component_rich_style("block-map--legend")
        text.append("\n")
        text.append(RESIDENT, styles["resident"])
        text.append(" resident   ", legend)
        text.append(STREAMED, styles["streamed"])
        text.append(" streamed   ", legend)
        text.append(RUNNING, styles["running"])
        text.append(" running", legend)
        return text
