"""The scrolling output pane: notices and one `RunOutput` per prompt, following the end while streaming."""

from __future__ import annotations

from textual.containers import VerticalScroll
from textual.widgets import Static

from bloomtui.tui.widgets.run_output import Exchange, RunOutput


class Notice(Static):
    """A line from the app itself (no model open, an error) rather than from the model."""

    DEFAULT_CSS = """
    Notice { padding: 0 1 1 1; color: $text-muted; }
    Notice.-error { color: $text-error; }
    """


class OutputView(VerticalScroll):
    DEFAULT_CSS = """
    OutputView { height: 1fr; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.runs: dict[int, RunOutput] = {}

    @property
    def exchanges(self) -> list[Exchange]:
        return [output.exchange for output in self.runs.values()]

    def _follow(self) -> bool:
        """Whether to keep the newest text in view: only if the user has not scrolled up to read."""
        return self.max_scroll_y == 0 or self.scroll_y >= self.max_scroll_y - 1

    def _mount_and_follow(self, widget: Static | RunOutput) -> None:
        follow = self._follow()
        self.mount(widget)
        if follow:
            self.call_after_refresh(self.scroll_end, animate=False)

    def notice(self, text: str, *, error: bool = False) -> Notice:
        notice = Notice(text, classes="-error" if error else "", markup=False)
        self._mount_and_follow(notice)
        return notice

    def start_run(self, run: int, prompt: str, model: str) -> RunOutput:
        output = RunOutput(run, Exchange(prompt, model), id=f"run-{run}")
        self.runs[run] = output
        self._mount_and_follow(output)
        return output

    def append(self, run: int, piece: str) -> None:
        output = self.runs.get(run)
        if output is None or not piece:
            return
        follow = self._follow()
        output.append(piece)
        if follow:
            self.call_after_refresh(self.scroll_end, animate=False)

    def show_guess(self, run: int, text: str) -> None:
        """A draft's unverified tokens, dimmed after the run's text until the model checks them."""
        output = self.runs.get(run)
        if output is not None:
            follow = self._follow()
            output.show_guess(text)
            if follow:
                self.call_after_refresh(self.scroll_end, animate=False)

    def finish(self, run: int, outcome: str, status: str) -> None:
        output = self.runs.get(run)
        if output is not None:
            follow = self._follow()
            output.finish(outcome, status)
            if follow:
                self.call_after_refresh(self.scroll_end, animate=False)

    def clear(self) -> None:
        self.runs.clear()
        self.remove_children()
