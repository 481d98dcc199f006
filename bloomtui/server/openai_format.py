"""Engine events of one request as OpenAI response objects: whole responses, or stream chunks.

A `Reply` gathers what the scheduler sends for each choice (sequence) of a request and renders it either way:
`chunk(...)` for each token as it comes, `finals()` and `usage_chunk()` at the end of a stream, `whole()` for
a response that is not streamed. finish_reason: "stop" for EOS or a stop string, "length" for max_tokens,
"abort" when the server stopped it (shutdown).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from bloomtui.engine.events import Done, TokenGenerated

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


@dataclass
class Choice:
    text: list[str] = field(default_factory=list)
    tokens: list[TokenGenerated] = field(default_factory=list)
    finish: str | None = None
    ended: bool = False
    new_tokens: int = 0


class Reply:
    """One request's response, built from its events; `kind` is "completion" or "chat"."""

    def __init__(self, kind: str, model: str, choices: int, prompt_tokens: int, logprobs: bool, engine) -> None:  # noqa: ANN001
        self.kind, self.model, self.logprobs = kind, model, logprobs
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.choices = [Choice() for _ in range(choices)]
        self.prompt_tokens = prompt_tokens
        self._decode, self._raw = engine.decode, engine.token_name
        self._started = [False] * choices

    @property
    def object(self) -> str:
        return "chat.completion" if self.kind == "chat" else "text_completion"

    @property
    def completion_tokens(self) -> int:
        return sum(c.new_tokens for c in self.choices)

    def usage(self) -> dict[str, int]:
        out = self.completion_tokens
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": out, "total_tokens": self.prompt_tokens + out}

    def token(self, k: int, event: TokenGenerated) -> None:
        c = self.choices[k]
        c.text.append(event.text)
        c.tokens.append(event)
        c.new_tokens += 1

    def end(self, k: int, event: Done | None, aborted: bool = False) -> None:
        """Choice k ended: done (its finish_reason from `event`), or stopped by the server (`aborted`)."""
        c = self.choices[k]
        c.ended = True
        c.finish = FINISH.get(event.stop_reason, "stop") if event is not None else "abort" if aborted else None

    @property
    def finished(self) -> bool:
        return all(c.ended for c in self.choices)

    # --- logprobs -------------------------------------------------------------------------------------------

    def _piece(self, token: int) -> str:
        """A token's text; one that is part of a character shows as its raw token, so no two ids share a key."""
        piece = self._decode([token])
        return self._raw(token) if "\ufffd" in piece else piece

    def _completion_logprobs(self, tokens: list[TokenGenerated], offset: int) -> dict[str, Any]:
        out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for t in tokens:
            piece = self._piece(t.id)
            out["tokens"].append(piece)
            out["token_logprobs"].append(t.logprob)
            out["top_logprobs"].append({self._piece(i): lp for i, lp in t.top_logprobs} if t.top_logprobs else None)
            out["text_offset"].append(offset)
            offset += len(piece)
        return out

    def _chat_logprobs(self, tokens: list[TokenGenerated]) -> dict[str, Any]:
        def entry(token: int, logprob: float | None) -> dict[str, Any]:
            piece = self._piece(token)
            return {"token": piece, "logprob": logprob, "bytes": list(piece.encode("utf-8"))}

        return {
            "content": [
                {**entry(t.id, t.logprob), "top_logprobs": [entry(i, lp) for i, lp in t.top_logprobs]} for t in tokens
            ]
        }

    def _logprobs(self, tokens: list[TokenGenerated], offset: int) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        return self._chat_logprobs(tokens) if self.kind == "chat" else self._completion_logprobs(tokens, offset)

    # --- rendering ------------------------------------------------------------------------------------------

    def _envelope(self, choices: list[dict[str, Any]], chunk: bool) -> dict[str, Any]:
        obj = self.object + (".chunk" if chunk and self.kind == "chat" else "")
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}

    def chunk(self, k: int, event: TokenGenerated) -> dict[str, Any] | None:
        """A stream chunk for one token of choice k (None when it adds nothing: no text, no logprobs)."""
        c = self.choices[k]
        if not event.text and not self.logprobs and self._started[k]:
            return None
        offset = sum(len(t) for t in c.text[:-1])
        choice: dict[str, Any] = {"index": k, "logprobs": self._logprobs([event], offset), "finish_reason": None}
        if self.kind == "chat":
            choice["delta"] = (
                {"content": event.text} if self._started[k] else {"role": "assistant", "content": event.text}
            )
        else:
            choice["text"] = event.text
        self._started[k] = True
        return self._envelope([choice], chunk=True)

    def final(self, k: int) -> dict[str, Any]:
        """The chunk that ends choice k's stream, with its finish_reason; the last of them carries `usage`."""
        c = self.choices[k]
        choice: dict[str, Any] = {"index": k, "logprobs": None, "finish_reason": c.finish}
        if self.kind == "chat":
            choice["delta"] = {} if self._started[k] else {"role": "assistant", "content": ""}
        else:
            choice["text"] = ""
        self._started[k] = True
        out = self._envelope([choice], chunk=True)
        if self.finished:
            out["usage"] = self.usage()
        return out

    def usage_chunk(self) -> dict[str, Any]:
        return {**self._envelope([], chunk=True), "usage": self.usage()}

    def whole(self) -> dict[str, Any]:
        choices = []
        for k, c in enumerate(self.choices):
            text = "".join(c.text)
            choice: dict[str, Any] = {"index": k, "logprobs": self._logprobs(c.tokens, 0), "finish_reason": c.finish}
            if self.kind == "chat":
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            choices.append(choice)
        return {**self._envelope(choices, chunk=False), "usage": self.usage()}
