"""`bloomtui serve` started for real on 127.0.0.1, driven by the `openai` client and raw HTTP."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.checkpoints import Written
from tests.server.serving import Served, start_server, stop_server

KEY = "sk-test-7c1e9b"
PROMPT = "The SQL command to extract all the users whose name starts with A is: "


@pytest.fixture(scope="module")
def server(tiny_model: Written) -> Iterator[Served]:
    served = start_server(tiny_model.path, "--max-batch", "8")
    yield served
    assert stop_server(served) == 0


def _generate_ids(model: Path, prompt: str, n: int, *extra: str) -> list[int]:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bloomtui",
            "generate",
            str(model),
            prompt,
            "--max-new-tokens",
            str(n),
            "--json",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return json.loads(run.stdout.splitlines()[-1])["token_ids"]


def test_completions_equal_bloomtui_generate(server: Served, tiny_model: Written) -> None:
    client = server.client()
    done = client.completions.create(
        model=server.name, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=2, extra_body={"ignore_eos": True}
    )
    want = _generate_ids(tiny_model.path, PROMPT, 8, "--ignore-eos")
    choice = done.choices[0]
    assert choice.finish_reason == "length" and done.usage.completion_tokens == 8
    lp = choice.logprobs
    assert len(lp.tokens) == 8 and all(len(top) == 2 for top in lp.top_logprobs)
    assert all(t <= 0 for t in lp.token_logprobs)
    # The same tokens as `bloomtui generate`, and token ids in, the same continuation out.
    assert (
        choice.text
        == client.completions.create(
            model=server.name,
            prompt=_ids_of(tiny_model, PROMPT),
            max_tokens=8,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        .choices[0]
        .text
    )
    assert choice.text == _decode(tiny_model, want)


def test_a_drafting_server_gives_what_generate_gives_without_a_draft(tiny_model: Written) -> None:
    """Token trees of 8 nodes per request: greedy text unchanged, several requests at once each with its own
    tree (the model drafts for itself, so every node on its line is kept)."""
    served = start_server(tiny_model.path, "--draft", str(tiny_model.path), "--draft-tree", "8")
    try:
        assert any("draft" in line and "(tree 8)" in line for line in served.log), served.log
        client = served.client()
        prompts = [PROMPT, "Once upon a time", "def fibonacci(n):"]

        def complete(prompt: str) -> str:
            body = {"ignore_eos": True}
            return (
                client.completions.create(
                    model=served.name, prompt=prompt, max_tokens=12, temperature=0, extra_body=body
                )
                .choices[0]
                .text
            )

        with ThreadPoolExecutor(3) as pool:
            texts = list(pool.map(complete, prompts))
        for prompt, text in zip(prompts, texts, strict=True):
            assert text == _decode(tiny_model, _generate_ids(tiny_model.path, prompt, 12, "--ignore-eos"))
    finally:
        assert stop_server(served) == 0


def test_serve_refuses_a_bad_draft_tree_before_loading(tiny_model: Written) -> None:
    for extra, needle in (
        (["--draft-tree", "8"], "--draft-tree needs --draft"),
        (["--draft", "prompt-lookup", "--draft-tree", "wide"], "--draft-tree must be auto, off or a node count"),
    ):
        run = subprocess.run(
            [sys.executable, "-m", "bloomtui", "serve", str(tiny_model.path), *extra],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 2 and needle in run.stderr, run.stderr


def _ids_of(model: Written, text: str) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model.path))(text)["input_ids"]


def _decode(model: Written, ids: list[int]) -> str:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model.path)).decode(ids)


def test_streamed_completions_with_n_and_usage(server: Served) -> None:
    client = server.client()
    chunks = list(
        client.completions.create(
            model=server.name,
            prompt="Hello there",
            max_tokens=6,
            temperature=1.2,
            seed=3,
            n=3,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    texts = {0: "", 1: "", 2: ""}
    finish = {}
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] += ch.text
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
    assert finish == {0: "length", 1: "length", 2: "length"}
    assert chunks[-1].usage.completion_tokens == 18 and chunks[-1].choices == []
    # Without include_usage no usage-only chunk (code reading chunk.choices[0] keeps working); the last
    # choice chunk carries the usage anyway.
    plain = list(client.completions.create(model=server.name, prompt="Hi", max_tokens=3, stream=True))
    assert all(c.choices for c in plain) and plain[-1].usage.completion_tokens == 3
    whole = client.completions.create(
        model=server.name,
        prompt="Hello there",
        max_tokens=6,
        temperature=1.2,
        seed=3,
        n=3,
        extra_body={"ignore_eos": True},
    )
    assert [c.text for c in whole.choices] == [texts[i] for i in range(3)]
    # Choice i is the sample with seed 3+i.
    single = client.completions.create(
        model=server.name, prompt="Hello there", max_tokens=6, temperature=1.2, seed=4, extra_body={"ignore_eos": True}
    )
    assert single.choices[0].text == texts[1]


def test_chat_streamed_and_not(server: Served) -> None:
    client = server.client()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    whole = client.chat.completions.create(
        model=server.name, messages=messages, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    msg = whole.choices[0].message
    assert msg.role == "assistant" and whole.usage.completion_tokens == len(whole.choices[0].logprobs.content)
    assert all(len(t.top_logprobs) == 3 for t in whole.choices[0].logprobs.content)
    stream = client.chat.completions.create(
        model=server.name, messages=messages, max_tokens=5, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == msg.content


def test_concurrent_clients_get_what_they_get_alone(server: Served) -> None:
    prompts = [PROMPT, "Hi", "Once upon a time in a land far away there lived", "ab ab ab ab"]
    client = server.client()

    def one(prompt: str) -> str:
        return (
            client.completions.create(
                model=server.name, prompt=prompt, max_tokens=12, temperature=0, extra_body={"ignore_eos": True}
            )
            .choices[0]
            .text
        )

    alone = [one(p) for p in prompts]
    before = server.metrics()
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(one, prompts * 2))
    after = server.metrics()
    assert together == alone * 2
    # They shared passes: fewer passes than one request after another would take.
    assert after["bloomtui_passes_total"] - before["bloomtui_passes_total"] < 8 * 12
    assert after["bloomtui_requests_total"] - before["bloomtui_requests_total"] == 8


def test_a_client_that_disconnects_frees_its_slot(server: Served) -> None:
    with httpx.stream(
        "POST",
        server.url + "/v1/completions",
        json={"prompt": "Hi", "max_tokens": 2000, "temperature": 1, "n": 3, "stream": True, "ignore_eos": True},
        timeout=30,
    ) as response:
        lines = response.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: {") for line in got)
    deadline = time.time() + 10
    while server.metrics()["bloomtui_running_sequences"] > 0 and time.time() < deadline:
        time.sleep(0.05)
    assert server.metrics()["bloomtui_running_sequences"] == 0
    assert server.metrics()["bloomtui_requests_cancelled_total"] >= 1
    assert server.client().completions.create(model=server.name, prompt="Hi", max_tokens=2).usage.completion_tokens


@pytest.mark.parametrize(
    ("body", "status", "param", "needle"),
    [
        (b"{not json", 400, None, "not valid JSON"),
        (b"[1, 2]", 400, None, "JSON object"),
        (b'{"prompt": "x", "max_tokens": "5"}', 400, "max_tokens", "an integer"),
        (b'{"prompt": "x", "temperature": 3}', 400, "temperature", "0.01..2"),
        (b'{"prompt": "x", "top_p": 0}', 400, "top_p", "(0, 1]"),
        (b'{"prompt": "x", "n": 0}', 400, "n", ">= 1"),
        (b'{"prompt": "x", "n": 9}', 400, "n", "--max-batch 8"),
        (b'{"prompt": "x", "stop": ["a", ""]}', 400, "stop", "non-empty"),
        (b'{"prompt": "x", "logprobs": 9}', 400, "logprobs", "in 0..5"),
        (b'{"prompt": "x", "echo": true}', 400, "echo", "not supported"),
        (b'{"prompt": "x", "presence_penalty": 0.5}', 400, "presence_penalty", "not supported"),
        (b'{"prompt": ""}', 400, "prompt", "empty"),
        (b'{"prompt": [99999999]}', 400, "prompt", "token ids must be in"),
        (b'{"prompt": "x", "model": "gpt-4"}', 404, "model", "does not exist"),
        (b'{"prompt": "' + b"word " * 3000 + b'"}', 400, "prompt", "at most 2047"),
        (b'{"prompt": "x", "max_tokens": 5000}', 400, "max_tokens", "context of 2048"),
        (b'{"prompt": "x", "seed": 18446744073709551616}', 400, "seed", "in 0.."),
        (b'{"prompt": "x", "temperature": 1e-300}', 400, "temperature", "0 (greedy)"),
        (b'{"prompt": "x", "repetition_penalty": 1e-300}', 400, "repetition_penalty", "0.01..100"),
        (b'{"prompt": "x", "stream_options": {"include_usage": 1}}', 400, "include_usage", "true or false"),
    ],
)
def test_bad_input_is_a_4xx_with_an_openai_error(server: Served, body: bytes, status: int, param, needle: str) -> None:  # noqa: ANN001
    response = httpx.post(server.url + "/v1/completions", content=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    assert needle in error["message"]
    assert server.proc.poll() is None


def test_bad_chat_messages(server: Served) -> None:
    for messages in ([], [{"role": "wizard", "content": "x"}], [{"role": "user", "content": 5}], "hi"):
        response = httpx.post(server.url + "/v1/chat/completions", json={"messages": messages}, timeout=30)
        assert response.status_code == 400 and response.json()["error"]["param"] == "messages"
    assert httpx.get(server.url + "/v1/nothing").status_code == 404


def test_api_key_required_and_never_logged(tiny_model: Written) -> None:
    served = start_server(tiny_model.path, env={"BLOOMTUI_API_KEY": KEY})
    try:
        assert httpx.get(served.url + "/health").status_code == 200  # a health check needs no key
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = httpx.get(served.url + "/v1/models", headers=headers)
            assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
        with pytest.raises(openai.AuthenticationError):
            served.client("wrong").completions.create(model=served.name, prompt="x", max_tokens=1)
        done = served.client(KEY).completions.create(model=served.name, prompt="Hi", max_tokens=2)
        assert done.usage.completion_tokens >= 1
    finally:
        assert stop_server(served) == 0
    assert "API key required" in "".join(served.log) and KEY not in "".join(served.log)


def test_full_queue_is_503_with_retry_after(tiny_model: Written) -> None:
    served = start_server(tiny_model.path, "--max-batch", "1", "--max-queue", "1")
    body = {"prompt": "Hi", "max_tokens": 2000, "temperature": 0, "ignore_eos": True, "stream": True}
    try:
        with httpx.stream("POST", served.url + "/v1/completions", json=body, timeout=30) as running:
            lines = running.iter_lines()  # kept: a dropped iterator closes the stream
            next(lines)  # it runs: the one slot is taken
            waiting = threading.Thread(
                target=lambda: httpx.post(served.url + "/v1/completions", json={**body, "stream": False}, timeout=30),
                daemon=True,
            )
            waiting.start()
            deadline = time.time() + 10
            while served.metrics()["bloomtui_queued_requests"] < 1 and time.time() < deadline:
                time.sleep(0.05)
            refused = httpx.post(served.url + "/v1/completions", json=body, timeout=30)
            assert refused.status_code == 503 and refused.headers["retry-after"]
            assert refused.json()["error"]["code"] == "queue_full"
    finally:
        assert stop_server(served) == 0


def test_sigterm_ends_running_streams_cleanly(tiny_model: Written) -> None:
    served = start_server(tiny_model.path)
    body = {"prompt": "Hi", "max_tokens": 2000, "temperature": 0, "ignore_eos": True, "stream": True}
    results: list[list[str]] = [[], []]

    def read(i: int) -> None:
        with httpx.stream("POST", served.url + "/v1/completions", json=body, timeout=30) as response:
            results[i].extend(response.iter_lines())

    readers = [threading.Thread(target=read, args=(i,)) for i in range(2)]
    for t in readers:
        t.start()
    time.sleep(1.5)
    served.proc.send_signal(signal.SIGTERM)
    for t in readers:
        t.join(30)
    assert served.proc.wait(30) == 0
    assert served.reader is not None
    served.reader.join(10)
    assert "stopping: ending the running requests\n" in served.log, served.log
    for lines in results:
        data = [line[6:] for line in lines if line.startswith("data: ")]
        last = json.loads(data[-2])
        assert data[-1] == "[DONE]" and last["usage"]["completion_tokens"] > 0
        assert last["choices"][0]["finish_reason"] == "abort"


def test_bloomtui_generate_against_its_own_server(server: Served, tiny_model: Written) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bloomtui",
            "generate",
            server.url,
            PROMPT,
            "--max-new-tokens",
            "8",
            "--ignore-eos",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    done = events[-1]
    assert done["text"] == _decode(tiny_model, _generate_ids(tiny_model.path, PROMPT, 8, "--ignore-eos"))
    # The server's own figures come with its tokens: the prefill pass carried the prompt's rows.
    figures = [e for e in events if e["event"] == "server"]
    assert 1 <= len(figures) <= 8 and figures[0]["pass_rows"] == len(
        _ids_of(tiny_model, PROMPT)
    )  # a chunk per piece of text
    assert [f["passes"] for f in figures] == sorted(f["passes"] for f in figures) and figures[-1]["pass_rows"] >= 1


def test_requests_that_fit_the_batch_never_count_as_queued(tiny_model: Written) -> None:
    served = start_server(tiny_model.path, "--max-batch", "4", "--max-queue", "0")
    try:
        client = served.client()
        with ThreadPoolExecutor(4) as pool:
            done = list(
                pool.map(
                    lambda p: client.completions.create(model=served.name, prompt=p, max_tokens=4),
                    ["Hi", "Hello", "Hola", "Hey"],
                )
            )
        assert all(d.usage.completion_tokens >= 1 for d in done)
        with pytest.raises(openai.BadRequestError):
            client.completions.create(model=served.name, prompt="Hi", max_tokens=4, n=5)
    finally:
        assert stop_server(served) == 0
