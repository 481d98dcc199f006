"""Against a real `transformers serve` on 127.0.0.1: the served BLOOM writes what our engine writes.

Nothing here leans on how one version of the server chunks its stream or which fields it sends: the text and the
token count must equal the local engine's, the count from whichever exact source the server offered.
"""

from __future__ import annotations

import json
import re
import threading
import time

from bloomtui.engine import Engine, SamplingParams, events
from bloomtui.remote.connection import RemoteOptions
from bloomtui.remote.engine import RemoteEngine
from bloomtui.remote.events import RemoteDone, RemoteNotice
from tests.remote.conftest import Served
from tests.remote.test_faults import bloomtui

PROMPT = "The SQL command to extract all the users whose name starts with A is: "
EXACT_SOURCES = ("usage", "logprobs", "limit")
"""Counts that are the server's own token count; the tokenizer and the chunks only estimate it."""
SUMMARY = re.compile(r"^(\d+) tokens \((\w+)", re.MULTILINE)


def local_result(served: Served, params: SamplingParams) -> events.Done:
    local = Engine.open(served.model)
    try:
        result = local.generate(PROMPT, params)
    finally:
        local.close()
    assert isinstance(result, events.Done)
    return result


def test_greedy_text_equals_the_local_engine(transformers_server: Served) -> None:
    params = SamplingParams(max_new_tokens=24)
    expected = local_result(transformers_server, params)
    assert len(set(expected.text)) >= 8  # varied text: a collapsed random model would prove little
    seen: list[events.Event] = []
    remote = RemoteEngine.open(transformers_server.url)
    assert remote.model == str(transformers_server.model)  # the only served model, picked by default
    result = remote.generate(PROMPT, params, on_event=seen.append)
    assert isinstance(result, RemoteDone)
    assert result.text == expected.text
    assert (result.new_tokens, result.stop_reason) == (expected.new_tokens, expected.stop_reason)
    assert result.token_count_source in EXACT_SOURCES
    # However the server groups tokens into chunks, the streamed pieces add up to the text.
    assert "".join(e.text for e in seen if isinstance(e, events.TokenGenerated)) == expected.text


def test_count_is_right_when_the_server_sends_no_usage(transformers_server: Served) -> None:
    params = SamplingParams(max_new_tokens=24)
    expected = local_result(transformers_server, params)
    remote = RemoteEngine.open(transformers_server.url)
    remote.refused.add("stream_options")  # as against a server that cannot send usage
    result = remote.generate(PROMPT, params)
    assert isinstance(result, RemoteDone) and result.text == expected.text
    assert (result.new_tokens, result.stop_reason) == (expected.new_tokens, expected.stop_reason)
    assert result.token_count_source in EXACT_SOURCES[1:]


def test_cli_text_equals_the_local_cli(transformers_server: Served) -> None:
    args = ("--max-new-tokens", "12")
    local = bloomtui("generate", str(transformers_server.model), "Hello there", *args)
    remote = bloomtui("generate", transformers_server.url, "Hello there", *args)
    assert local.returncode == remote.returncode == 0, remote.stderr
    assert remote.stdout == local.stdout and remote.stdout.strip()
    assert SUMMARY.findall(remote.stderr) == SUMMARY.findall(local.stderr) == [("12", "length")]


def test_cancel_mid_stream_stops_the_server(transformers_server: Served) -> None:
    remote = RemoteEngine.open(transformers_server.url, RemoteOptions(read_timeout=60))
    cancel = threading.Event()
    pieces: list[str] = []
    cancelled_at: list[float] = []

    def sink(event: events.Event) -> None:
        if isinstance(event, events.TokenGenerated):
            pieces.append(event.text)
            if len(pieces) == 5:
                cancel.set()
                cancelled_at.append(time.perf_counter())

    result = remote.generate(PROMPT, SamplingParams(max_new_tokens=100_000), on_event=sink, cancel=cancel)
    elapsed = time.perf_counter() - cancelled_at[0]
    assert isinstance(result, events.Cancelled) and elapsed < 0.5, elapsed
    assert result.text == "".join(pieces) and len(pieces) >= 5
    # The server runs one generation at a time: a short request is answered (within the 60 s read timeout)
    # only if the 100,000-token one was abandoned when the stream closed; finishing it would take many minutes.
    after = remote.generate(PROMPT, SamplingParams(max_new_tokens=3))
    assert isinstance(after, events.Done) and after.new_tokens == 3
    assert after.text == "".join(pieces)[: len(after.text)]  # greedy: the same start


def test_info_lists_the_served_model(transformers_server: Served) -> None:
    run = bloomtui("info", transformers_server.url + "/v1", "--json")
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    assert info["url"] == transformers_server.url + "/v1"
    assert [m["id"] for m in info["models"]] == [str(transformers_server.model)]
    human = bloomtui("info", transformers_server.url)
    assert "models      1 served" in human.stdout and str(transformers_server.model) in human.stdout


def test_top_k_refused_by_transformers_serve_gives_one_notice(transformers_server: Served) -> None:
    seen: list[events.Event] = []
    remote = RemoteEngine.open(transformers_server.url)
    params = SamplingParams(max_new_tokens=3, temperature=0.8, top_k=5, seed=1)
    for _ in range(2):
        assert isinstance(remote.generate(PROMPT, params, on_event=seen.append), events.Done)
    notices = [e.message for e in seen if isinstance(e, RemoteNotice)]
    assert len(notices) == 1 and "refused top_k (422)" in notices[0]
