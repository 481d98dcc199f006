"""The scrolling output pane: notices and one `RunOutput` per prompt (a `SamplesView` for a run of several
samples), following the end while streaming.

Following is Textual's anchor: while anchored, every layout (new text, a re-wrap after f4 or a resize) puts
the end in view in that same frame; the user scrolling up releases it, scrolling back to the bottom takes it
again. A new run anchors afresh, so it always starts in view, wherever the user had scrolled.

An anchored pane scrolls its content's bottom to its own, which would pin a short output to the bottom of the
pane: `OutputEnd`, a spacer after the last item, fills what the items leave, so the content is never shorter
than the pane. Items are spaced by a margin above each (not padding below), so the spacer's one line is the
blank line below the last item once the content overflows.
"""

from __future__ import annotations

from collections.abc import Iterable

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.geometry import Size
from textual.widget import Widget
from textual.widgets import Static

from bloomtui.tui.pending_text import Piece
from bloomtui.tui.samples_state import SampleSet
from bloomtui.tui.widgets.run_output import Exchange, RunOutput
from bloomtui.tui.widgets.samples_view import SamplesView


class Notice(Static):
    """A line from the app itself (no model open, an error) rather than from the model."""

    DEFAULT_CSS = """
    Notice { padding: 0 1; margin-top: 1; color: $text-muted; }
    Notice:first-child { margin-top: 0; }
    Notice.-error { color: $text-error; }
    """


class OutputEnd(Widget):
    DEFAULT_CSS = """
    OutputEnd { height: 1fr; }
    """

    def render(self) -> str:
        return ""

    def _size_updated(self, size: Size, virtual_size: Size, container_size: Size, layout: bool = True) -> bool:
        return super()._size_updated(size, virtual_size, container_size, layout=False)  # as RunOutput's


class OutputView(VerticalScroll):
    DEFAULT_CSS = """
    OutputView { height: 1fr; }
    OutputView > RunOutput, OutputView > SamplesView { margin-top: 1; }
    OutputView > RunOutput:first-child, OutputView > SamplesView:first-child { margin-top: 0; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.runs: dict[int, RunOutput | SamplesView] = {}
        self._end = OutputEnd()

    def compose(self) -> ComposeResult:
        yield self._end

    def on_mount(self) -> None:
        self.anchor()

    def _size_updated(self, size: Size, virtual_size: Size, container_size: Size, layout: bool = True) -> bool:
        # Textual lays the whole screen out again whenever a container's virtual size changed in the layout just
        # done. Content that only grew taller under a scrollbar already shown (or still fitting) needs no new
        # arrangement, and a fast run grows it on every tick: one layout per tick instead of two.
        height = self._container_size.height
        same_bar = (self.virtual_size.height > height) == (virtual_size.height > container_size.height)
        grew_only = size == self._size and container_size == self._container_size
        grew_only = grew_only and virtual_size.width == self.virtual_size.width and same_bar
        return super()._size_updated(size, virtual_size, container_size, layout=layout and not grew_only)

    def on_resize(self) -> None:
        for view in self.runs.values():
            if isinstance(view, SamplesView) and view.running:
                view.fit(self.scrollable_content_region.height)  # the panes share the pane's new height

    @property
    def exchanges(self) -> list[Exchange]:
        """Every run's continuation, and each sample of a run of several, in order."""
        found: list[Exchange] = []
        for output in self.runs.values():
            found += output.exchanges if isinstance(output, SamplesView) else [output.exchange]
        return found

    @property
    def latest(self) -> Exchange | None:
        """The last run's text to copy or continue from: its continuation, or the sample picked of several."""
        if not self.runs:
            return None
        output = self.runs[max(self.runs)]
        return output.samples.chosen if isinstance(output, SamplesView) else output.exchange

    @property
    def latest_samples(self) -> SamplesView | None:
        """The last run, if it wrote several samples."""
        output = self.runs[max(self.runs)] if self.runs else None
        return output if isinstance(output, SamplesView) else None

    def notice(self, text: str, *, error: bool = False) -> Notice:
        notice = Notice(text, classes="-error" if error else "", markup=False)
        self.mount(notice, before=self._end)
        return notice

    def start_run(self, run: int, prompt: str, model: str) -> RunOutput:
        output = RunOutput(run, Exchange(prompt, model), id=f"run-{run}")
        self.runs[run] = output
        self.mount(output, before=self._end)
        self.anchor()  # the new run is what the user wants to see, wherever they had scrolled
        return output

    def start_samples(self, run: int, prompt: str, model: str, count: int) -> SamplesView:
        view = SamplesView(run, SampleSet.new(prompt, model, count), id=f"run-{run}")
        self.runs[run] = view
        self.mount(view, before=self._end)
        self.anchor()
        return view

    def show(self, run: int, pieces: Iterable[Piece]) -> None:
        """Pieces of `run` (verified text and draft guesses, in order) in one redraw."""
        output = self.runs.get(run)
        if output is not None:
            output.extend(pieces)

    def finish(self, run: int, outcome: str, status: str) -> None:
        output = self.runs.get(run)
        if output is not None:
            output.finish(outcome, status)

    def finish_sample(self, run: int, index: int, outcome: str, status: str) -> None:
        output = self.runs.get(run)
        if isinstance(output, SamplesView):
            output.finish_sample(index, outcome, status)

    def clear(self) -> None:
        self.runs.clear()
        self.remove_children([child for child in self.children if child is not self._end])
