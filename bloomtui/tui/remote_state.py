"""What the remote panel shows: events of a served model's runs folded into immutable snapshots.

The counterpart of `run_state.RunTracker` (same methods and base, so the app drives either): a server reports no
blocks, reads or memory, so the snapshot holds only what the stream tells us: connection state, time to the
first token, the token rate and its recent history, tokens and an ETA; and from a `bloomtui serve`, its
figures (the latest pass's rows, time and reads, its running and queued requests).
"""

from __future__ import annotations

from dataclasses import dataclass

from bloomtui.engine import events
from bloomtui.remote import is_remote_url
from bloomtui.remote.events import RemoteDone, RemoteNotice, RemoteStatus, ServerFigures
from bloomtui.tui.run_state import RunTracker, done_message
from bloomtui.tui.snapshot_tracker import Live, Snapshot, SnapshotTracker

CONNECTION = {"connecting": "connecting", "waiting": "waiting for the first token", "streaming": "streaming"}


@dataclass(frozen=True)
class RemoteInfo:
    """The served model as the panel describes it."""

    name: str
    """"model @ host": what the output pane and transcripts call it."""
    url: str
    """The API root, without any user:password part."""
    model: str
    demo: bool = False


@dataclass(frozen=True)
class RemoteSnapshot(Snapshot):
    model: RemoteInfo | None = None
    connection: str = "not connected"
    first_token_seconds: float | None = None
    tokens: int = 0
    max_tokens: int = 0
    tokens_per_second: float | None = None
    rate_history: tuple[float, ...] = ()
    eta: float | None = None
    notice: str = ""
    """The server's latest one-time notice (e.g. it refused top_k), kept while the model stays open."""
    server: ServerFigures | None = None
    """What a `bloomtui serve` reports with its tokens (its passes, reads and load); None from other servers."""


class RemoteTracker(SnapshotTracker[RemoteSnapshot]):
    """A served model's events folded into `RemoteSnapshot`s."""

    def __init__(self) -> None:
        super().__init__(Live(RemoteSnapshot()))

    def loading(self, what: str, done: int = 0, total: int = 0) -> None:
        with self._lock:
            self._set(state="loading", message=what, connection="connecting")

    def opened(self, model: RemoteInfo, rss: int | None = None, baseline_rss: int = 0) -> None:
        with self._lock:
            self._reopen()
            self._set(state="idle", model=model, message="", connection="connected", first_token_seconds=None, tokens=0)

    def failed(self, message: str, *, keep_model: bool = True) -> None:
        with self._lock:
            model = self._live.snap.model if keep_model else None
            self._set(state="error", message=message, model=model, connection="failed", eta=None)

    def start(self, run: int, max_tokens: int, draft_name: str = "", sequences: int = 1) -> None:
        """A new run (a server decodes alone, one sequence at a time: `draft_name` and `sequences` are accepted for
        the tracker interface and unused)."""
        with self._lock:
            self._begin(run)
            self._set(
                state="running",
                message="sending the prompt",
                connection="connecting",
                first_token_seconds=None,
                tokens=0,
                max_tokens=max_tokens,
                tokens_per_second=None,
                eta=None,
            )

    def _fold(self, event: events.Event) -> None:
        if isinstance(event, RemoteStatus):
            self._set(connection=CONNECTION.get(event.state, event.state), message=CONNECTION[event.state])
        elif isinstance(event, events.TokenGenerated):
            self._token(event)
        elif isinstance(event, RemoteNotice):
            self._set(notice=event.message)
        elif isinstance(event, ServerFigures):
            self._set(server=event)
        elif isinstance(event, events.Done):
            rate = event.tokens_per_second or self._live.snap.tokens_per_second
            note = f" ({event.count_note})" if isinstance(event, RemoteDone) and event.count_note else ""
            self._set(
                state="done",
                message=done_message(event, note),
                tokens=event.new_tokens,
                tokens_per_second=rate,
                connection="closed",
                eta=None,
            )
        elif isinstance(event, events.Cancelled):
            message = f"after {event.new_tokens} tokens"  # shown after "cancelled"
            self._set(state="cancelled", message=message, connection="closed by us", eta=None)
        elif isinstance(event, events.Error):
            self._set(state="error", message=event.message, connection="failed", eta=None)

    def _token(self, event: events.TokenGenerated) -> None:
        live = self._live
        if event.index == 0:  # time from sending the prompt: the server's queue and prefill, not a token's cost
            self._set(tokens=1, first_token_seconds=event.seconds, message="streaming")
            return
        live.token_seconds.append(event.seconds)
        mean = sum(live.token_seconds) / len(live.token_seconds)
        rate = 1 / mean if mean > 0 else None
        if rate is not None:
            live.history.append(rate)
        remaining = max(0, live.snap.max_tokens - event.index - 1)
        self._set(
            tokens=event.index + 1,
            tokens_per_second=rate,
            rate_history=tuple(live.history),
            eta=remaining * mean,
        )


def tracker_for(source: str | None) -> RunTracker | RemoteTracker:
    """The tracker matching what is being opened: a server URL gets the remote one."""
    return RemoteTracker() if is_remote_url(source) else RunTracker()
