"""Running the ASGI app under uvicorn, with the scheduler thread beside it and a clean stop on a signal."""

from __future__ import annotations

import signal
import socket
import sys

import uvicorn

from bloomtui.errors import UsageError
from bloomtui.server.scheduler import Scheduler

GRACE_SECONDS = 10
"""After a signal the running requests end within a block; connections still open after this are closed."""


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, scheduler: Scheduler, where: str) -> None:
        super().__init__(config)
        self.scheduler, self.where = scheduler, where

    def handle_exit(self, sig: int, frame) -> None:  # noqa: ANN001
        # Stop taking requests and end the running ones now: each stream gets its last chunk and [DONE].
        if not self.should_exit:
            busy = self.scheduler.busy
            print("stopping: ending the running requests" if busy else "stopping", file=sys.stderr, flush=True)
        self.scheduler.stop(halt=True)
        # As uvicorn's own handler, without keeping the signal to re-raise at the end: a shutdown asked for
        # is a clean exit (status 0), not a death by signal.
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True

    async def shutdown(self, sockets=None) -> None:  # noqa: ANN001
        if self.server_state.connections or self.server_state.tasks:
            await super().shutdown(sockets)
            return
        # Idle: no connection to give uvicorn's 0.1 s to close, no request to wait for.
        for server in self.servers:
            server.close()

    async def startup(self, sockets=None) -> None:  # noqa: ANN001
        await super().startup(sockets)
        if self.started:
            print(f"listening on {self.where} (OpenAI-compatible API at {self.where}/v1)", file=sys.stderr, flush=True)


def run_server(app, scheduler: Scheduler, host: str, port: int) -> bool:  # noqa: ANN001 - an ASGI app
    """Serve until a signal; True once the scheduler thread has stopped (the engine may then be closed)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:  # a clear error before uvicorn's log line
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=GRACE_SECONDS,
    )
    shown = f"[{host}]" if ":" in host else host
    server = _Server(config, scheduler, f"http://{shown}:{port}")
    scheduler.start()
    try:
        server.run()
    finally:
        scheduler.stop(halt=True)
        scheduler.join(GRACE_SECONDS)
    return not scheduler.alive
