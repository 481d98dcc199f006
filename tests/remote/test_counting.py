"""A remote run's token count, against servers that tell it differently: usage, logprobs, or neither.

The scripted server sends two tokens per chunk (as transformers serve 5 sends a chunk per word), so a count of
chunks is never the right answer; each test fails if its way of counting breaks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bloomtui.demo import save_tokenizer
from bloomtui.engine import SamplingParams, events
from bloomtui.remote.connection import RemoteError
from bloomtui.remote.counting import served_tokenizer
from bloomtui.remote.engine import RemoteEngine
from bloomtui.remote.events import RemoteDone, RemoteNotice
from bloomtui.tui.remote_state import RemoteTracker
from tests.remote.fault_server import PIECES, FaultServer, fault_server
from tests.remote.test_faults import bloomtui

TOKENS = len(PIECES)
CHUNKS = TOKENS // 2
EOS = 1
"""A run that ends with end of text made one more token than its text shows, as the local engine counts."""


@pytest.fixture
def server() -> Iterator[FaultServer]:
    """Ten tokens in five chunks, ending with end of text (so the token limit says nothing)."""
    with fault_server() as server:
        server.tokens_per_chunk = 2
        server.finish_reason = "stop"
        yield server


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("served-model")
    save_tokenizer(512, folder)
    return folder


def run(server: FaultServer, max_new_tokens: int = 50) -> RemoteDone:
    seen: list[events.Event] = []
    result = RemoteEngine.open(server.url).generate("Hi", SamplingParams(max_new_tokens), on_event=seen.append)
    assert isinstance(result, RemoteDone) and result.text == "".join(PIECES)
    assert len([e for e in seen if isinstance(e, events.TokenGenerated)]) == CHUNKS
    return result


@pytest.mark.parametrize("sends", [{"usage"}, {"usage", "logprobs"}])
def test_the_servers_usage_comes_first(server: FaultServer, sends: set[str]) -> None:
    server.sends = sends
    result = run(server)
    assert (result.new_tokens, result.token_count_source, result.prompt_tokens) == (TOKENS, "usage", 7)
    assert result.count_note == ""


def test_without_usage_the_logprobs_are_counted(server: FaultServer) -> None:
    server.sends = {"logprobs"}
    result = run(server)
    assert (result.new_tokens, result.token_count_source) == (TOKENS, "logprobs")
    assert result.prompt_tokens == 0  # unknown: no usage


def test_a_run_that_ends_by_length_made_what_was_asked(server: FaultServer) -> None:
    server.sends = set()
    server.finish_reason = "length"
    result = run(server, max_new_tokens=TOKENS)
    assert (result.new_tokens, result.token_count_source, result.stop_reason) == (TOKENS, "limit", "length")


def test_without_either_the_tokenizer_estimates(tokenizer_folder: Path) -> None:
    with fault_server(models=(str(tokenizer_folder),)) as server:
        server.tokens_per_chunk, server.finish_reason, server.sends = 2, "stop", set()
        result = run(server)
    tokenizer = served_tokenizer(str(tokenizer_folder))
    assert tokenizer is not None
    chunks = ["".join(PIECES[i : i + 2]) for i in range(0, TOKENS, 2)]
    expected = sum(len(tokenizer.encode(c, add_special_tokens=False).ids) for c in chunks) + EOS
    assert expected != CHUNKS + EOS  # the demo tokenizer splits these words: a chunk count would differ
    assert (result.new_tokens, result.token_count_source) == (expected, "tokenizer")


def test_with_nothing_else_the_chunks_are_counted(server: FaultServer) -> None:
    server.sends = set()
    result = run(server)
    assert (result.new_tokens, result.token_count_source) == (CHUNKS + EOS, "chunks")
    assert result.count_note == "counted from chunks, may be low"


def test_served_tokenizer_is_found_only_on_this_machine(tokenizer_folder: Path) -> None:
    assert served_tokenizer(str(tokenizer_folder)) is not None
    for name in ("bloom-test", "nobody-here/no-such-model", "a/b..c", ""):
        assert served_tokenizer(name) is None  # never fetched: nothing here names it


def test_refused_count_fields_are_left_out_without_a_notice(server: FaultServer) -> None:
    server.refuses = ("stream_options", "logprobs")
    seen: list[events.Event] = []
    engine = RemoteEngine.open(server.url)
    first = engine.generate("Hi", SamplingParams(max_new_tokens=50), on_event=seen.append)
    second = engine.generate("Hi", SamplingParams(max_new_tokens=50))
    assert isinstance(first, RemoteDone) and isinstance(second, RemoteDone)
    assert first.token_count_source == second.token_count_source == "chunks"
    assert ["logprobs" in r or "stream_options" in r for r in server.requests] == [True, False, False]
    assert not [e for e in seen if isinstance(e, RemoteNotice)]


def test_a_named_refusal_drops_only_what_it_names(server: FaultServer) -> None:
    server.refuses = ("top_k",)
    server.sends = {"usage"}
    seen: list[events.Event] = []
    params = SamplingParams(max_new_tokens=50, temperature=0.8, top_k=5, repetition_penalty=1.2)
    result = RemoteEngine.open(server.url).generate("Hi", params, on_event=seen.append)
    assert isinstance(result, RemoteDone) and result.token_count_source == "usage"
    last = server.requests[-1]
    assert "top_k" not in last and last["repetition_penalty"] == 1.2 and "stream_options" in last
    (notice,) = [e.message for e in seen if isinstance(e, RemoteNotice)]
    assert "refused top_k (422)" in notice


def test_an_error_unrelated_to_the_fields_keeps_them() -> None:
    with fault_server("400") as server:
        engine = RemoteEngine.open(server.url)
        with pytest.raises(RemoteError, match="max_tokens must be at least 1"):
            engine.generate("Hi", SamplingParams(max_new_tokens=5))
    assert engine.refused == set()  # the retry without them failed too: they were not the trouble
    assert "stream_options" in server.requests[0] and "stream_options" not in server.requests[-1]


def test_cli_names_the_source_unless_it_is_the_servers_usage() -> None:
    with fault_server() as server:
        server.tokens_per_chunk, server.sends = 2, {"logprobs"}
        text = bloomtui("generate", server.url, "Hi", "--max-new-tokens", "6")
        as_json = bloomtui("generate", server.url, "Hi", "--max-new-tokens", "6", "--json")
        server.sends = {"usage"}
        usage = bloomtui("generate", server.url, "Hi", "--max-new-tokens", "6")
    assert text.returncode == as_json.returncode == usage.returncode == 0, text.stderr
    assert "6 tokens (length; counted from logprobs), first token" in text.stderr
    done = json.loads(as_json.stdout.splitlines()[-1])
    assert (done["event"], done["new_tokens"], done["token_count_source"]) == ("done", 6, "logprobs")
    assert "6 tokens (length), first token" in usage.stderr


def test_app_panel_names_the_source() -> None:
    tracker = RemoteTracker()
    tracker.start(1, max_tokens=10)
    done = RemoteDone(1, (), "x", 0, 10, 0.1, 0.2, 5.0, 0, 0, "length", token_count_source="limit")
    tracker.feed(1, done)
    assert tracker.snapshot().message == "10 tokens (as many as asked for) · token limit"
    tracker.start(2, max_tokens=10)
    tracker.feed(2, RemoteDone(2, (), "x", 0, 10, 0.1, 0.2, 5.0, 0, 0, "length"))
    assert tracker.snapshot().message == "10 tokens · token limit"
