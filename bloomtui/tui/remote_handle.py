"""The app's handle on a served model: a `RemoteEngine` behind the same interface as a local engine.

`with_remote` wraps any opener so a server URL (typed on the command line or in the model picker) connects
to the server and anything else opens as before; the app never branches on where tokens come from.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import httpx

from bloomtui.engine import EngineOptions, events
from bloomtui.remote import is_remote_url
from bloomtui.remote.connection import RemoteOptions
from bloomtui.tui.engine_handle import ModelSpec, Opener, Release, StatusSink
from bloomtui.tui.handle import Batch, EngineHandle, Results
from bloomtui.tui.remote_state import RemoteInfo

if TYPE_CHECKING:
    from bloomtui.remote.engine import RemoteEngine  # imported on connect: it brings httpx


class RemoteHandle(EngineHandle):
    """A `RemoteEngine` as the app's handle: one sequence per request, drafting left to the server."""

    multi_sequence = False
    """A server streams one sequence per request: the app runs one sample (and says so)."""
    one_sequence_error = "a server runs one sequence at a time (samples work with local models only)"

    def __init__(self, engine: RemoteEngine) -> None:
        self.engine = engine
        host = httpx.URL(engine.url).host
        self.info = RemoteInfo(name=f"{engine.model} @ {host}", url=engine.url, model=engine.model)

    def _run(self, batch: Batch) -> Results:
        # A server decodes on its own: drafting is local only (the app says so when it connects).
        return [self.engine.generate(batch.prompts[0], batch.params[0], on_event=batch.on_event, cancel=batch.cancel)]

    def close(self) -> None:
        self.engine.close()


def with_remote(opener: Opener, options: RemoteOptions) -> Opener:
    """`opener`, except that a server URL connects with `options` (--remote-model, timeouts)."""

    def open_any(
        spec: ModelSpec,
        engine_options: EngineOptions,
        on_event: events.EventSink,
        on_status: StatusSink,
        cancel: threading.Event,
        release: Release,
    ) -> EngineHandle:
        if not is_remote_url(spec.source):
            return opener(spec, engine_options, on_event, on_status, cancel, release)
        from bloomtui.remote.engine import RemoteEngine

        on_status("connecting to the server")
        handle = RemoteHandle(RemoteEngine.open(spec.source or "", options))
        release()  # connected: a server costs this process no memory, so the model in use could stay till now
        return handle

    return open_any
