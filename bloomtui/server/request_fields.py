"""The fields of `/v1/completions` and `/v1/chat/completions` requests, checked into engine terms.

Every bad input is an ApiError (a 4xx with an OpenAI-style body naming the field), never an exception
that reaches the server's loop. Fields bloomtui does not implement are refused when set to anything but their
neutral value, so a client never silently gets something other than what it asked for.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from bloomtui.engine.sampling_params import SamplingParams
from bloomtui.engine.weights.generation_config import SAMPLES_NEED_TEMPERATURE, GenerationDefaults
from bloomtui.errors import UsageError

MAX_STOPS = 4
MIN_TEMPERATURE = 0.01
MAX_SEED = 2**62
MAX_TOP_LOGPROBS = {"completion": 5, "chat": 20}
DEFAULT_MAX_TOKENS = {"completion": 16, "chat": 256}
"""OpenAI's default for completions is 16; chat has none (the context's end), so a generous bound."""
API_FALLBACK = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0}
"""OpenAI's defaults (temperature 1: sampling) for a field neither the request nor the model sets; max_tokens
comes from DEFAULT_MAX_TOKENS."""
NO_DEFAULTS = GenerationDefaults()
"""No generation_config.json (or --generation-config none): the API's own defaults alone."""
PLAIN_CHAT_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
TYPE_NAMES = {int: "an integer", bool: "true or false", str: "a string"}
IGNORED_NEUTRAL = {"frequency_penalty": 0, "presence_penalty": 0, "best_of": 1, "suffix": None, "logit_bias": None}
"""Fields of the API bloomtui does not implement: accepted only at the value that means "off"."""


class ApiError(Exception):
    """A request the server refuses: HTTP status and the OpenAI error object."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Parsed:
    """A request in engine terms: sequence k continues prompts[k // n] with params[k]."""

    prompts: list[list[int]]
    params: list[SamplingParams]
    n: int
    stream: bool
    top_logprobs: int
    """How many alternatives each token lists (completions' `logprobs`, chat's `top_logprobs`)."""
    logprobs: bool
    """Whether the response carries logprobs at all."""
    include_usage: bool
    """A stream ends with a usage-only chunk (empty `choices`), as OpenAI's does when asked; its last choice
    chunk carries `usage` either way."""


def read_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON ({exc})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    return body


def _field(body: dict[str, Any], name: str, kinds: tuple[type, ...], default: Any) -> Any:  # noqa: ANN401
    value = body.get(name)
    if value is None:
        return default
    # JSON true/false are ints in Python: a bool is only a bool here.
    if isinstance(value, bool) != (bool in kinds) or not isinstance(value, kinds):
        wanted = "a number" if float in kinds else TYPE_NAMES[kinds[0]]
        raise ApiError(400, f"'{name}' must be {wanted}, got {json.dumps(value)[:60]}", param=name, code="invalid_type")
    if isinstance(value, float) and not math.isfinite(value):
        raise ApiError(400, f"'{name}' must be a finite number", param=name, code="invalid_value")
    return value


def _range(name: str, value: float, ok: bool, rule: str) -> None:
    if not ok:
        raise ApiError(400, f"'{name}' must be {rule}, got {value}", param=name, code="invalid_value")


def _stops(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, "'stop' must be a string or a list of strings", param="stop", code="invalid_type")
    if len(stops) > MAX_STOPS or any(s == "" for s in stops):
        raise ApiError(400, f"'stop' takes 1 to {MAX_STOPS} non-empty strings", param="stop", code="invalid_value")
    return tuple(stops)


def prompt_ids(body: dict[str, Any], encode, vocab: int) -> list[list[int]]:  # noqa: ANN001 - str -> ids
    """A completion's `prompt`: a string, a list of token ids, or a list of either (several prompts)."""
    prompt = body.get("prompt")
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt)):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt:
        prompts = prompt
    else:
        raise ApiError(
            400,
            "'prompt' must be a non-empty string, a list of token ids, or a list of those",
            param="prompt",
            code="invalid_type" if prompt not in ("", []) else "empty_prompt",
        )
    out = []
    for p in prompts:
        if isinstance(p, str):
            ids = encode(p)
        elif isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            if not all(0 <= t < vocab for t in p):
                raise ApiError(400, f"token ids must be in 0..{vocab - 1}", param="prompt", code="invalid_value")
            ids = list(p)
        else:
            raise ApiError(
                400, "each prompt must be a string or a list of token ids", param="prompt", code="invalid_type"
            )
        if not ids:
            raise ApiError(400, "the prompt is empty", param="prompt", code="empty_prompt")
        out.append(ids)
    return out


def chat_text(body: dict[str, Any], tokenizer) -> str:  # noqa: ANN001 - a transformers tokenizer
    """The prompt of a chat request: the tokenizer's chat template when it has one, else plain lines
    ("User: ...", "Assistant: ...", ending with "Assistant:"), which BLOOM and bloomz continue sensibly."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages", code="invalid_type")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in PLAIN_CHAT_ROLES:
            raise ApiError(
                400,
                f"messages[{i}] needs a role of {', '.join(PLAIN_CHAT_ROLES)}",
                param="messages",
                code="invalid_value",
            )
        if not isinstance(m.get("content"), str):
            raise ApiError(400, f"messages[{i}].content must be a string", param="messages", code="invalid_type")
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    lines = [f"{PLAIN_CHAT_ROLES[m['role']]}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"


def parse(
    body: dict[str, Any],
    kind: str,
    model,  # noqa: ANN001 - an Engine
    max_batch: int,
    max_context: int,
    defaults: GenerationDefaults = NO_DEFAULTS,
) -> Parsed:
    """Check a request's fields (kind "completion" or "chat") against the model and the server's limits;
    `defaults` (the model's generation_config.json) fill the sampling fields the request leaves out."""
    for name, neutral in IGNORED_NEUTRAL.items():
        if body.get(name) not in (None, neutral):
            raise ApiError(400, f"'{name}' is not supported by bloomtui serve", param=name, code="unsupported")
    if body.get("echo"):
        raise ApiError(400, "'echo' is not supported by bloomtui serve", param="echo", code="unsupported")
    if kind == "chat":
        prompts = [model.encode(chat_text(body, model.tokenizer.transformers))]
        logprobs = _field(body, "logprobs", (bool,), False)
        top = _field(body, "top_logprobs", (int,), 0) if logprobs else 0
        if body.get("top_logprobs") is not None and not logprobs:
            raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs", code="invalid_value")
    else:
        prompts = prompt_ids(body, model.encode, model.config.vocab_size)
        top = _field(body, "logprobs", (int,), None)
        logprobs = top is not None
        top = top or 0
    if logprobs:
        _range(
            "top_logprobs" if kind == "chat" else "logprobs",
            top,
            0 <= top <= MAX_TOP_LOGPROBS[kind],
            f"in 0..{MAX_TOP_LOGPROBS[kind]}",
        )
    n = _field(body, "n", (int,), 1)
    _range("n", n, n >= 1, ">= 1")
    if len(prompts) * n > max_batch:
        raise ApiError(
            400, f"{len(prompts)} prompts x n={n} is more than --max-batch {max_batch}", param="n", code="invalid_value"
        )
    longest = max(len(p) for p in prompts)
    if longest >= max_context:
        raise ApiError(
            400,
            f"the prompt has {longest} tokens; this server takes at most {max_context - 1} "
            f"(--max-context {max_context})",
            param="prompt" if kind == "completion" else "messages",
            code="context_length_exceeded",
        )
    base = _sampling(body, kind, defaults, n, longest, max_context)
    stream = _field(body, "stream", (bool,), False)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object", param="stream_options", code="invalid_type")
    include_usage = _field(options or {}, "include_usage", (bool,), False)
    from bloomtui.engine.sampling_params import sample_params

    per_prompt = sample_params(base, n)
    return Parsed(
        prompts=prompts,
        params=[p for _ in prompts for p in per_prompt],
        n=n,
        stream=stream,
        top_logprobs=top,
        logprobs=logprobs,
        include_usage=include_usage,
    )


def _optional(body: dict[str, Any], name: str, kinds: tuple[type, ...], ok: Callable[[Any], bool], rule: str) -> Any:  # noqa: ANN401
    """A field the request may leave out (None), checked against `rule` when given; numbers as floats."""
    value = _field(body, name, kinds, None)
    if value is None:
        return None
    _range(name, value, ok(value), rule)
    return float(value) if float in kinds else value


def _sampling(
    body: dict[str, Any], kind: str, defaults: GenerationDefaults, n: int, longest: int, max_context: int
) -> SamplingParams:
    """The request's sampling fields; those it omits come from `defaults`, then API_FALLBACK (as vLLM's
    --generation-config auto). Several choices (`n`) always sample: an omitted temperature is then the
    model's or the API's, never greedy."""
    tokens_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _field(body, tokens_name, (int,), None)
    if max_tokens is not None:
        _range("max_tokens", max_tokens, max_tokens >= 1, ">= 1")
        if longest + max_tokens > max_context:
            raise ApiError(
                400,
                f"prompt ({longest} tokens) + max_tokens ({max_tokens}) is more than the "
                f"context of {max_context} tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
    # Tiny temperatures overflow the scaled logits: 0 is greedy, and sampling starts at MIN_TEMPERATURE.
    temperature = _optional(
        body,
        "temperature",
        (int, float),
        lambda t: t == 0 or MIN_TEMPERATURE <= t <= 2,
        f"0 (greedy) or in {MIN_TEMPERATURE}..2",
    )
    # Choice i uses seed + i, and torch takes seeds below 2**63.
    seed = _optional(body, "seed", (int,), lambda s: 0 <= s < MAX_SEED, f"in 0..{MAX_SEED - 1}")
    chosen = {
        "max_new_tokens": max_tokens,
        # A temperature above 0 samples even where the model's default is greedy; 0 is greedy either way.
        "do_sample": True if temperature else None,
        "temperature": temperature,
        "top_k": _optional(body, "top_k", (int,), lambda k: k >= 0, ">= 0 (0 = off)"),
        "top_p": _optional(body, "top_p", (int, float), lambda p: 0 < p <= 1, "in (0, 1]"),
        "repetition_penalty": _optional(
            body, "repetition_penalty", (int, float), lambda r: 0.01 <= r <= 100, "in 0.01..100 (1 = off)"
        ),
    }
    fallback = {**API_FALLBACK, "max_new_tokens": DEFAULT_MAX_TOKENS[kind]}
    try:
        params = defaults.resolve(
            chosen,
            fallback,
            samples=n,
            seed=seed,
            stop=_stops(body),
            ignore_eos=_field(body, "ignore_eos", (bool,), False),
        )
    except UsageError as exc:  # a rule SamplingParams knows and this module does not, or n with temperature 0
        param = "n" if exc.message == SAMPLES_NEED_TEMPERATURE.format(n=n) else None
        raise ApiError(400, exc.message, param=param, code="invalid_value") from None
    if longest + params.max_new_tokens > max_context:  # a default: as much as the context leaves
        params = replace(params, max_new_tokens=max_context - longest)
    return params
