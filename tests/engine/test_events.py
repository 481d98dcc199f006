"""The event base: a subclass is a frozen dataclass named in its class line, with no decorator of its own."""

from __future__ import annotations

import dataclasses

import pytest

from bloomtui.engine import events as ev
from bloomtui.remote.events import RemoteDone, ServerFigures


class Ping(ev.Event, event="ping"):
    target: str
    tries: int = 1


class Pong(Ping):
    """Names no kind: keeps its parent's."""

    late: bool = False


def test_subclass_is_a_frozen_dataclass_named_in_its_class_line() -> None:
    ping = Ping(3, "host")
    assert ping.to_json() == {"event": "ping", "generation": 3, "target": "host", "tries": 1}
    with pytest.raises(dataclasses.FrozenInstanceError):
        ping.tries = 2  # type: ignore[misc]
    assert Pong(1, "x", late=True).to_json()["event"] == "ping" and ev.Event.event == "event"
    assert ping == Ping(3, "host") and hash(ping) == hash(Ping(3, "host"))


def test_decorating_a_subclass_again_fails_at_once() -> None:
    with pytest.raises(TypeError, match="__setattr__"):

        @dataclasses.dataclass(frozen=True)
        class Twice(ev.Event, event="twice"):
            value: int


def test_remote_kinds_share_the_engine_vocabulary() -> None:
    done = RemoteDone(1, (), "x", 0, 2, 0.1, 0.2, 5.0, 0, 0, "length", token_count_source="limit")
    assert isinstance(done, ev.Done) and done.to_json()["event"] == "done" and done.count_note
    figures = ServerFigures.from_chunk(4, {"pass_rows": 2, "pass_seconds": 0.5, "pass_read_bytes": 10})
    assert figures is None  # a chunk without every figure is not read as one
    assert [f.name for f in dataclasses.fields(ServerFigures)][:2] == ["generation", "pass_rows"]
