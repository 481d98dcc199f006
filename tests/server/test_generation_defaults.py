"""`bloomtui serve` fills the sampling fields a request omits from the model's generation_config.json (as
`bloomtui generate` and vLLM's --generation-config auto), `n` follows the shared samples rule, and the flags
and the stop that go with it."""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from bloomtui.commands.serve import defaults_line, serve
from bloomtui.engine.weights.generation_config import GenerationDefaults
from bloomtui.errors import UsageError
from bloomtui.server.request_fields import NO_DEFAULTS, ApiError, parse
from tests.checkpoints import Written
from tests.server.serving import Served, start_server, stop_server

GREEDY_PENALTY = GenerationDefaults(do_sample=False, repetition_penalty=1.2, max_new_tokens=128)
"""What the shipped demo model recommends."""
SAMPLING = GenerationDefaults(do_sample=True, temperature=0.6, top_k=40, top_p=0.9)
MODEL_FILE = {"do_sample": False, "repetition_penalty": 0.1, "max_new_tokens": 6}
"""The test checkpoint's generation_config.json. A penalty below 1 favours the prompt's tokens ten-fold: a
random model's greedy text changes with it for sure (one above 1 only changes a text that repeats)."""


def _model() -> SimpleNamespace:
    """What parse needs of an Engine: every prompt is three tokens."""
    return SimpleNamespace(
        encode=lambda _text: [5, 6, 7],
        config=SimpleNamespace(vocab_size=100),
        tokenizer=SimpleNamespace(transformers=None),
    )


def _params(body: dict[str, Any], defaults: GenerationDefaults, kind: str = "completion", max_context: int = 2048):
    """The SamplingParams of each choice of a request."""
    if kind == "chat":
        body = {"messages": [{"role": "user", "content": "hi"}], **body}
    else:
        body = {"prompt": "hi", **body}
    return parse(body, kind, _model(), 8, max_context, defaults).params


def test_omitted_fields_take_the_models_values_and_given_ones_win() -> None:
    (p,) = _params({}, GREEDY_PENALTY)
    assert (p.temperature, p.repetition_penalty, p.max_new_tokens) == (0, 1.2, 128)
    (p,) = _params({"repetition_penalty": 1.0, "max_tokens": 7, "temperature": 0}, GREEDY_PENALTY)
    assert (p.temperature, p.repetition_penalty, p.max_new_tokens) == (0, 1.0, 7)
    # A temperature asks for sampling, whatever the model's default; the model's penalty still applies.
    (p,) = _params({"temperature": 0.8}, GREEDY_PENALTY)
    assert (p.temperature, p.repetition_penalty) == (0.8, 1.2)
    (p,) = _params({}, SAMPLING)
    assert (p.temperature, p.top_k, p.top_p) == (0.6, 40, 0.9)
    (p,) = _params({"top_p": 1, "top_k": 0}, SAMPLING)
    assert (p.temperature, p.top_k, p.top_p) == (0.6, 0, 1.0)
    (p,) = _params({"temperature": 0}, SAMPLING)
    assert p.greedy


def test_without_model_values_the_apis_defaults_apply() -> None:
    (p,) = _params({}, NO_DEFAULTS)
    assert (p.temperature, p.top_p, p.top_k, p.repetition_penalty, p.max_new_tokens) == (1.0, 1.0, 0, 1.0, 16)
    assert _params({}, NO_DEFAULTS, kind="chat")[0].max_new_tokens == 256


def test_a_default_max_tokens_stops_at_the_context_and_a_given_one_past_it_is_refused() -> None:
    assert _params({}, GREEDY_PENALTY, max_context=64)[0].max_new_tokens == 61  # 64 less the 3-token prompt
    with pytest.raises(ApiError) as refused:
        _params({"max_tokens": 62}, GREEDY_PENALTY, max_context=64)
    assert refused.value.param == "max_tokens"


def test_several_choices_sample_even_where_the_model_is_greedy() -> None:
    params = _params({"n": 3}, GREEDY_PENALTY)
    assert len(params) == 3 and all(p.temperature == 1.0 and p.repetition_penalty == 1.2 for p in params)
    assert all(p.temperature == 0.6 for p in _params({"n": 2}, SAMPLING))
    for defaults in (GREEDY_PENALTY, SAMPLING, NO_DEFAULTS):
        with pytest.raises(ApiError) as refused:
            _params({"n": 2, "temperature": 0}, defaults)
        assert (refused.value.status, refused.value.param) == (400, "n")
        assert "temperature above 0" in refused.value.message


def test_the_start_up_line_names_what_the_model_fills_in() -> None:
    line = defaults_line(GREEDY_PENALTY)
    assert line is not None and "max_tokens 128, greedy, repetition_penalty 1.2" in line
    assert "--generation-config none" in line
    assert defaults_line(GenerationDefaults()) is None


def test_serve_needs_a_model() -> None:
    with pytest.raises(UsageError, match="give a MODEL or --demo"):
        serve(argparse.Namespace(model=None, demo=False))


# --- a real server ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tuned_model(tiny_model: Written, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint with a generation_config.json (a copy: other tests want the bare one)."""
    folder = shutil.copytree(tiny_model.path, tmp_path_factory.mktemp("tuned") / "tuned")
    (folder / "generation_config.json").write_text(json.dumps(MODEL_FILE))
    return folder


@pytest.fixture(scope="module")
def tuned_server(tuned_model: Path) -> Iterator[Served]:
    served = start_server(tuned_model)
    yield served
    assert stop_server(served) == 0


def _complete(served: Served, **fields: Any) -> dict[str, Any]:  # noqa: ANN401
    body = {"prompt": "Hello there", "ignore_eos": True, **fields}
    response = httpx.post(served.url + "/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def _texts(done: dict[str, Any]) -> list[str]:
    return [c["text"] for c in done["choices"]]


def test_a_server_fills_omitted_fields_from_the_models_file(tuned_server: Served) -> None:
    assert any("generation_config.json" in line and "repetition_penalty 0.1" in line for line in tuned_server.log)
    omitted = _complete(tuned_server)
    assert omitted["usage"]["completion_tokens"] == MODEL_FILE["max_new_tokens"]
    assert _texts(omitted) == _texts(_complete(tuned_server, temperature=0, repetition_penalty=0.1, max_tokens=6))
    # A field the request sets wins: no penalty is another greedy text.
    assert _texts(omitted) != _texts(_complete(tuned_server, repetition_penalty=1.0, max_tokens=6))


def test_several_choices_on_a_greedy_model_are_samples(tuned_server: Served) -> None:
    texts = _texts(_complete(tuned_server, n=3, seed=1, max_tokens=8))
    assert len(set(texts)) > 1, texts
    response = httpx.post(tuned_server.url + "/v1/completions", json={"prompt": "Hi", "n": 2, "temperature": 0})
    assert response.status_code == 400 and response.json()["error"]["param"] == "n"


def test_generation_config_none_ignores_the_file_and_an_idle_stop_says_so(tuned_model: Path) -> None:
    served = start_server(tuned_model, "--generation-config", "none")
    try:
        assert not any("generation_config.json" in line for line in served.log), served.log
        omitted = _complete(served, temperature=0)
        assert omitted["usage"]["completion_tokens"] == 16  # the API's default, not the file's 6
        assert _texts(omitted) == _texts(_complete(served, temperature=0, repetition_penalty=1.0))
    finally:
        assert stop_server(served) == 0
    # Nothing ran when the signal came: no "ending the running requests".
    assert served.log[-1] == "stopping\n", served.log
