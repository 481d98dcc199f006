"""Driving a BLOOM served by an OpenAI-compatible server (vLLM, TGI, `transformers serve`).

`engine.RemoteEngine` speaks the same typed events as the local engine, so every consumer of
`engine/events.py` (the app, the CLI, `--json`) works unchanged; nothing here knows of any UI. This package
file imports nothing, so the CLI can ask `is_remote_url` before torch or httpx load.
"""

from __future__ import annotations


def is_remote_url(model: str | None) -> bool:
    """True for an http(s) URL: MODEL names a server rather than a folder or a cached repo id."""
    return model is not None and model.strip().lower().startswith(("http://", "https://"))
