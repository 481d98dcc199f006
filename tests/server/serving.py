"""Starting `bloomtui serve` for real, as a subprocess on a free port of 127.0.0.1, and stopping it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai


@dataclass
class Served:
    proc: subprocess.Popen
    url: str
    name: str
    log: list[str] = field(default_factory=list)
    """Its stderr, line by line; whole once stop_server has returned."""
    reader: threading.Thread | None = None

    def client(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or "unused", max_retries=0, timeout=60)

    def metrics(self, headers: dict[str, str] | None = None) -> dict[str, float]:
        text = httpx.get(self.url + "/metrics", headers=headers).text
        return {k: float(v) for k, v in (line.split() for line in text.splitlines() if not line.startswith("#"))}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, *extra: str, env: dict[str, str] | None = None) -> Served:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bloomtui", "serve", str(model), "--port", str(port), *extra],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
    )
    served = Served(proc, f"http://127.0.0.1:{port}", model.name)
    ready = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            served.log.append(line)
            if line.startswith("listening on"):
                ready.set()

    served.reader = threading.Thread(target=read, daemon=True)
    served.reader.start()
    if not ready.wait(120):
        proc.kill()
        raise AssertionError("the server did not start:\n" + "".join(served.log))
    return served


def stop_server(served: Served) -> int:
    served.proc.send_signal(signal.SIGTERM)
    status = served.proc.wait(30)
    if served.reader is not None:
        served.reader.join(10)  # the last lines of the log
    return status
