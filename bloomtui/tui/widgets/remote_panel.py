"""The panel for a served model: server, model, connection, time to first token, tokens/s and ETA.

Only what the stream tells us: a server reports no blocks, disk reads or memory, so none are shown; a
`bloomtui serve` adds its latest pass (rows, time, reads) and its load.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import ProgressBar, Sparkline, Static

from bloomtui.remote.events import ServerFigures
from bloomtui.sizes import format_size
from bloomtui.tui.remote_state import RemoteSnapshot
from bloomtui.tui.widgets.panel_parts import mark_state, seconds, state_text


class RemotePanel(VerticalScroll):
    DEFAULT_CSS = """
    RemotePanel {
        display: none;  /* the app shows it in place of the engine panel while a server is open */
        height: 1fr;
        width: 46;
        border: round $primary 40%;
        border-title-color: $text-muted;
        padding: 0 1;
        scrollbar-size-vertical: 1;
    }
    RemotePanel.-running { border: round $accent; border-title-color: $accent; }
    RemotePanel.-error #remote-state { color: $text-error; }
    RemotePanel.-cancelled #remote-state { color: $text-warning; }
    RemotePanel #remote-server { color: $text-muted; margin-bottom: 1; }
    RemotePanel #remote-state { margin-bottom: 1; }
    RemotePanel #remote-rate, RemotePanel #remote-tokens { margin-top: 1; }
    RemotePanel ProgressBar { width: 100%; }
    RemotePanel ProgressBar Bar { width: 1fr; }
    RemotePanel #remote-spark { width: 100%; margin-right: 1; }
    RemotePanel #remote-notice { color: $text-warning; margin-top: 1; }
    RemotePanel #remote-figures { margin-top: 1; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.snapshot = RemoteSnapshot()

    def compose(self) -> ComposeResult:
        yield Static(id="remote-server", markup=False)
        yield Static(id="remote-state", markup=False)
        yield Static(id="remote-connection", markup=False)
        yield Static(id="remote-first", markup=False)
        yield Static(id="remote-rate", markup=False)
        yield Sparkline([], id="remote-spark")
        yield Static(id="remote-tokens", markup=False)
        yield ProgressBar(total=1, show_eta=False, id="remote-progress")
        yield Static(id="remote-eta", markup=False)
        yield Static(id="remote-figures", markup=False)
        yield Static(id="remote-notice", markup=False)

    def on_mount(self) -> None:
        self.border_title = "Server"
        self.show(self.snapshot)

    def _update(self, selector: str, text: str | Text) -> None:
        self.query_one(selector, Static).update(text)

    def show(self, snap: RemoteSnapshot) -> None:
        self.snapshot = snap
        model = snap.model
        self._update("#remote-server", f"{model.model}\n{model.url}" if model else "No server connected")
        self._update("#remote-state", state_text(snap.state, snap.message))
        mark_state(self, snap.state)
        self._update("#remote-connection", f"link   {snap.connection}")
        self._update("#remote-first", f"first token {seconds(snap.first_token_seconds)}")
        rate = f"{snap.tokens_per_second:.1f} tok/s" if snap.tokens_per_second else "—"
        self._update("#remote-rate", f"rate   {rate}")
        self.query_one("#remote-spark", Sparkline).data = list(snap.rate_history)
        limit = f"/{snap.max_tokens}" if snap.max_tokens else ""
        self._update("#remote-tokens", f"tokens {snap.tokens}{limit}")
        bar = self.query_one("#remote-progress", ProgressBar)
        bar.update(total=max(1, snap.max_tokens), progress=min(snap.tokens, max(1, snap.max_tokens)))
        self._update("#remote-eta", f"ETA    {seconds(snap.eta)}")
        self._update("#remote-figures", server_lines(snap.server))
        self._update("#remote-notice", f"note: {snap.notice}" if snap.notice else "")


def server_lines(figures: ServerFigures | None) -> str:
    """A bloomtui server's own figures: its latest pass and its load (other servers send none)."""
    if figures is None:
        return ""
    read = (
        f" · read {format_size(figures.pass_read_bytes)} at {figures.read_mb_per_s:.0f} MB/s"
        if figures.pass_read_bytes
        else ""
    )
    return (
        f"server pass {figures.passes}: {figures.pass_rows} row{'s' if figures.pass_rows != 1 else ''} in "
        f"{figures.pass_seconds * 1000:.0f} ms{read}\n"
        f"       {figures.running} sequences running · {figures.queued} waiting"
    )
