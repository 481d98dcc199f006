"""RemoteEngine against the scripted server: request mapping, events, stop strings, notices and cancel."""

from __future__ import annotations

import json
import threading
import time

import pytest

from bloomtui.engine import SamplingParams, events
from bloomtui.remote.connection import RemoteOptions, Server
from bloomtui.remote.engine import RemoteEngine
from bloomtui.remote.events import RemoteNotice, RemoteStatus
from tests.remote.fault_server import PIECES, fault_server
from tests.remote.test_faults import bloomtui


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_url_forms_name_the_same_api_root(suffix: str) -> None:
    assert Server(f"http://user:pw@gpu-box:8000{suffix}").url == "http://gpu-box:8000/v1"


def test_sampling_options_map_to_the_api() -> None:
    with fault_server() as server:
        engine = RemoteEngine.open(server.url)
        engine.generate("Hi", SamplingParams(max_new_tokens=5))
        sampled = SamplingParams(
            max_new_tokens=4, temperature=0.7, top_p=0.9, top_k=40, repetition_penalty=1.1, seed=3, stop=("zz",)
        )
        engine.generate("Hi", sampled)
    greedy, sample = server.requests
    counting = {"stream_options": {"include_usage": True}, "logprobs": 0}  # every request asks for its count
    assert greedy == {
        "model": "bloom-test",
        "prompt": "Hi",
        "max_tokens": 5,
        "stream": True,
        "temperature": 0.0,
        **counting,
    }
    assert sample == {
        "model": "bloom-test",
        "prompt": "Hi",
        "max_tokens": 4,
        "stream": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 3,
        "stop": ["zz"],
        "top_k": 40,
        "repetition_penalty": 1.1,
        **counting,
    }


def test_tokens_become_the_engines_events() -> None:
    seen: list[events.Event] = []
    with fault_server() as server:
        result = RemoteEngine.open(server.url).generate("Hi", SamplingParams(max_new_tokens=6), on_event=seen.append)
    tokens = [e for e in seen if isinstance(e, events.TokenGenerated)]
    assert [t.text for t in tokens] == list(PIECES[:6])
    assert [t.index for t in tokens] == list(range(6))
    assert isinstance(result, events.Done) and seen[-1] is result
    assert (result.text, result.new_tokens, result.prompt_tokens, result.stop_reason) == (
        "".join(PIECES[:6]),
        6,
        7,
        "length",
    )
    states = [e.state for e in seen if isinstance(e, RemoteStatus)]
    assert states == ["connecting", "waiting", "streaming"]


def test_finish_reason_stop_is_end_of_text() -> None:
    with fault_server() as server:
        server.finish_reason = "stop"
        result = RemoteEngine.open(server.url).generate("Hi", SamplingParams(max_new_tokens=3))
    assert isinstance(result, events.Done) and result.stop_reason == "eos"


def test_stop_string_is_cut_and_closes_the_stream() -> None:
    with fault_server() as server:
        result = RemoteEngine.open(server.url).generate("Hi", SamplingParams(stop=(" FRO",)))
    assert isinstance(result, events.Done)
    assert (result.text, result.stop_reason) == ("The SQL command is: SELECT *", "stop")


def test_refused_extras_give_one_notice_then_are_left_out() -> None:
    seen: list[events.Event] = []
    params = SamplingParams(max_new_tokens=3, temperature=0.8, top_k=20, repetition_penalty=1.2)
    with fault_server("reject-extras") as server:
        engine = RemoteEngine.open(server.url)
        first = engine.generate("Hi", params, on_event=seen.append)
        second = engine.generate("Hi", params, on_event=seen.append)
    assert isinstance(first, events.Done) and isinstance(second, events.Done)
    assert first.text == second.text == "".join(PIECES[:3])
    notices = [e.message for e in seen if isinstance(e, RemoteNotice)]
    assert len(notices) == 1 and "top_k, repetition_penalty (400)" in notices[0]
    assert ["top_k" in r for r in server.requests] == [True, False, False]


def test_cancel_closes_the_stream_within_half_a_second() -> None:
    cancel = threading.Event()
    results: list[events.Done | events.Cancelled] = []
    with fault_server("slow") as server:
        engine = RemoteEngine.open(server.url, RemoteOptions(read_timeout=30))
        worker = threading.Thread(
            target=lambda: results.append(engine.generate("Hi", SamplingParams(max_new_tokens=5000), cancel=cancel))
        )
        worker.start()
        assert server.streaming.wait(30)
        cancelled_at = time.perf_counter()
        cancel.set()
        worker.join(10)
        elapsed = time.perf_counter() - cancelled_at
        assert server.disconnected.wait(10), "the server never saw the client go"
    assert not worker.is_alive() and elapsed < 0.5, elapsed
    (result,) = results
    assert isinstance(result, events.Cancelled) and result.text.startswith(" w0 w1 w2")
    assert result.new_tokens == len(result.text.split())


def test_cli_json_events_and_summary() -> None:
    with fault_server() as server:
        as_json = bloomtui("generate", server.url, "Hi", "--max-new-tokens", "4", "--json")
        text = bloomtui("generate", server.url, "Hi", "--max-new-tokens", "4")
    assert as_json.returncode == 0, as_json.stderr
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [e["text"] for e in lines if e["event"] == "token"] == list(PIECES[:4])
    assert lines[-1]["event"] == "done" and lines[-1]["text"] == "".join(PIECES[:4])
    assert text.stdout == "".join(PIECES[:4]) + "\n"
    assert "4 tokens (length), first token" in text.stderr and "bloom-test at http://127.0.0.1:" in text.stderr
    assert "RSS" not in text.stderr  # a server's memory is not ours to report
