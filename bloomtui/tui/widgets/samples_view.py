"""A run that writes several samples of one prompt: the prompt once, then a pane per sample, all streaming.

Panes stand side by side in a grid (as many columns as keep MIN_PANE_WIDTH each) and stack in one column on
narrow terminals (the app's `-narrow` screen class, below 100 columns). While the run goes, the panes share
the output pane's height, each showing the end of its own text, so every sample is seen streaming at once;
when the run ends they open to their whole text. A sample's pane says how it ended as soon as it does (one
may reach its end of text while the others go on). A click on a pane, or its number key, picks it (runs.py).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Grid, Vertical
from textual.geometry import Size
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Static

from bloomtui.tui.pending_text import Piece
from bloomtui.tui.run_state import run_status
from bloomtui.tui.samples_state import SampleSet
from bloomtui.tui.widgets.run_output import Exchange, ExchangeView, printable

MIN_PANE_WIDTH = 24
"""Columns a side-by-side pane keeps at least (its text wraps at about 22)."""
COLUMN_GAP = 2
MIN_PANE_LINES = 1
"""Text lines a pane keeps while the samples share the output's height (80x24 holds four panes of one line;
two get three each); with more samples than fit, the view grows past the output's height and scrolls."""


def grid_shape(count: int, width: int, stacked: bool) -> tuple[int, int]:
    """(columns, rows) for `count` panes in `width` columns: balanced rows (4 samples in 3 possible columns:
    2 x 2, not 3 + 1); one column when stacked."""
    if stacked:
        return 1, count
    most = max(1, min(count, (width + COLUMN_GAP) // (MIN_PANE_WIDTH + COLUMN_GAP)))
    rows = math.ceil(count / most)
    return math.ceil(count / rows), rows


class SamplePane(ExchangeView):
    """One sample's continuation, under a title rule with its number."""

    DEFAULT_CSS = """
    SamplePane {
        height: auto;
        border-top: solid $primary 40%;
        border-title-color: $text-muted;
        border-title-align: left;
    }
    SamplePane:hover { border-top: solid $primary; }
    SamplePane.-picked { border-top: heavy $accent; border-title-color: $accent; border-title-style: bold; }
    """

    def __init__(self, exchange: Exchange, index: int, **kwargs: object) -> None:
        super().__init__(exchange, **kwargs)
        self.index = index
        self.tail = True
        """Show the end of the text in a fixed height (while the run goes), not all of it."""
        self._title()

    def _title(self) -> None:
        key = self.index + 1
        self.border_title = f"{key} · {self.exchange.label}" + (" · picked" if self.exchange.picked else "")
        self.set_class(self.exchange.picked, "-picked")

    def _text_changed(self) -> None:
        self.refresh(layout=not self.tail)  # a fixed height needs no new layout

    def finish(self, outcome: str, status: str) -> None:
        if self.exchange.outcome == "running":  # else already ended (its own end arrived before the run's)
            super().finish(outcome, status)

    def show_picked(self) -> None:
        self._title()
        self.refresh()

    def _size_updated(self, size: Size, virtual_size: Size, container_size: Size, layout: bool = True) -> bool:
        return super()._size_updated(size, virtual_size, container_size, layout=layout and not self.tail)

    def render(self) -> Text:
        text = self._continuation(Text())
        height, width = self.content_size.height, self.content_size.width
        if not self.tail or height <= 0 or width <= 0:
            return text
        lines = text.wrap(self.app.console, width)
        return Text("\n").join(lines[-height:]) if len(lines) > height else text

    class Clicked(Message):
        """The user clicked sample `index`'s pane."""

        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

    def on_click(self, event: events.Click) -> None:
        self.post_message(self.Clicked(self.index))


class SamplesHeader(Widget):
    """The run's number, model and sample count, then its prompt, as a single run's output starts."""

    COMPONENT_CLASSES = {"samples-header--title", "samples-header--prompt"}
    DEFAULT_CSS = """
    SamplesHeader { height: auto; }
    SamplesHeader > .samples-header--title { color: $text-muted; }
    SamplesHeader > .samples-header--prompt { color: $text-accent; text-style: bold; }
    """

    def __init__(self, title: str, prompt: str) -> None:
        super().__init__()
        self.title, self.prompt = title, prompt

    def retitle(self, title: str) -> None:
        self.title = title
        self.refresh()

    def render(self) -> Text:
        style = self.get_component_rich_style
        text = Text(f"{self.title}\n", style("samples-header--title"))
        text.append(printable(self.prompt), style("samples-header--prompt"))
        return text


class SamplesView(Vertical):
    """The run's header and prompt, the grid of panes, and a line saying how the run went and what keys do."""

    DEFAULT_CSS = """
    SamplesView { height: auto; padding: 0 1; }
    SamplesView > Grid { height: auto; grid-rows: auto; grid-gutter: 0 2; }
    SamplesView.-live SamplePane { height: 1fr; }
    SamplesView.-live > .samples-status { display: none; }
    SamplesView > .samples-status { color: $text-muted; margin-top: 1; }
    SamplesView.-done > .samples-status { color: $text-success; }
    SamplesView.-cancelled > .samples-status { color: $text-warning; }
    SamplesView.-error > .samples-status { color: $text-error; }
    """

    class Picked(Message):
        """A pane of `view` was clicked: pick sample `index` (0-based)."""

        def __init__(self, view: SamplesView, index: int) -> None:
            super().__init__()
            self.view, self.index = view, index

        @property
        def control(self) -> SamplesView:
            return self.view

    def __init__(self, run: int, samples: SampleSet, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.run = run
        self.samples = samples
        self.panes = [SamplePane(exchange, i) for i, exchange in enumerate(samples.exchanges)]
        self.outcome = "running"
        self.status = ""
        self._fitted: tuple[int, int, int, bool] | None = None
        self.add_class("-live")

    def compose(self) -> ComposeResult:
        yield SamplesHeader(f"{self._title()} · escape cancels all", self.samples.prompt)
        with Grid():
            yield from self.panes
        yield Static(self._status_line(), classes="samples-status", markup=False)

    def _title(self) -> str:
        return f"#{self.run} · {self.samples.model} · {self.samples.count} samples"

    def on_sample_pane_clicked(self, message: SamplePane.Clicked) -> None:
        message.stop()
        self.post_message(self.Picked(self, message.index))

    @property
    def exchanges(self) -> list[Exchange]:
        return self.samples.exchanges

    @property
    def running(self) -> bool:
        return self.outcome == "running"

    def extend(self, pieces: Iterable[Piece]) -> None:
        """Pieces of the run's samples in the order they came: one redraw per pane that changed."""
        by_sample: dict[int, list[Piece]] = defaultdict(list)
        for piece in pieces:
            if piece.ended is not None:
                self.panes[piece.sequence].extend(by_sample.pop(piece.sequence, []))
                self.panes[piece.sequence].finish(*run_status(piece.ended))
            elif 0 <= piece.sequence < len(self.panes):
                by_sample[piece.sequence].append(piece)
        for sequence, mine in by_sample.items():
            self.panes[sequence].extend(mine)

    def finish_sample(self, index: int, outcome: str, status: str) -> None:
        self.panes[index].finish(outcome, status)

    def finish(self, outcome: str, status: str) -> None:
        """The run ended: samples not ended yet end the same way (a failed run), and the panes open up."""
        for pane in self.panes:
            pane.finish(outcome, status)
        self.outcome, self.status = outcome, status
        for name in ("done", "cancelled", "error"):
            self.set_class(outcome == name, f"-{name}")
        self.remove_class("-live")
        self.query_one(SamplesHeader).retitle(self._title())
        for pane in self.panes:
            pane.tail = False
        grid = self.query_one(Grid)
        grid.styles.grid_rows, grid.styles.height = "auto", "auto"
        self._show_status()
        self.refresh(layout=True)

    def pick(self, index: int) -> Exchange:
        exchange = self.samples.pick(index)
        for pane in self.panes:
            pane.show_picked()
        self._show_status()
        return exchange

    def _status_line(self) -> str:
        n = self.samples.count
        picked = self.samples.picked
        if picked is not None:
            what = f"sample {picked + 1} picked: in the prompt editor with its prompt, ctrl+j continues"
        else:
            what = f"1-{n} pick a sample to continue from (prompt editor empty), or click one"
        return f"— {self.status}\n{what}"

    def _show_status(self) -> None:
        self.query_one(".samples-status", Static).update(self._status_line())

    # --- layout ---

    def on_resize(self) -> None:
        self.fit()

    def on_mount(self) -> None:
        self.call_after_refresh(self.fit)

    def fit(self, viewport: int | None = None) -> None:
        """Columns for the width; while the run goes, pane heights that share `viewport` (the output pane's
        height) between the rows."""
        if viewport is None:
            parent = self.parent
            viewport = parent.scrollable_content_region.height if isinstance(parent, Widget) else 0
        width = self.content_size.width
        if width <= 0:
            return
        stacked = self.screen.has_class("-narrow")
        columns, rows = grid_shape(self.samples.count, width, stacked)
        key = (columns, rows, viewport, self.running)
        if key == self._fitted:
            return
        self._fitted = key
        grid = self.query_one(Grid)
        grid.styles.grid_size_columns = columns
        if not self.running:
            return
        header = self.query_one(SamplesHeader).outer_size.height or 2
        # The view's margin above, and the output pane's blank line below its last item (the status line
        # below the grid shows once the run has ended).
        chrome = header + self.styles.margin.top + 1
        height = max(1 + MIN_PANE_LINES, (viewport - chrome) // rows)  # a pane's title rule and its text
        # Rows of "auto" would follow the panes' text, and a grid of "auto" height would not follow its rows.
        grid.styles.grid_rows = str(height)
        grid.styles.height = height * rows
