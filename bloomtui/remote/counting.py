"""How many tokens a server generated, from the best evidence its stream gave.

Servers differ, and change between versions: vLLM and `bloomtui serve` report `usage` (vLLM only when the request
asks with `stream_options`), transformers serve 5.x sends usage only when asked and streams a chunk per word
rather than per token, TGI sends no usage. So a request asks for both usage and per-token logprobs, and the
count falls back, in order, to what the stream actually carried (see `CountSource`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bloomtui.remote.events import CountSource

if TYPE_CHECKING:
    from tokenizers import Tokenizer

COUNT_FIELDS: dict[str, Any] = {"stream_options": {"include_usage": True}, "logprobs": 0}
"""Request fields that make a server say how many tokens it made: OpenAI's way to ask for a last chunk with
`usage`, and logprobs of the chosen tokens only (0 alternatives), one entry per token whatever the chunking."""


@dataclass
class TokenTally:
    """What one run's stream said about its tokens, chunk by chunk."""

    completion_tokens: int | None = None
    prompt_tokens: int = 0
    logprob_tokens: int | None = None
    """Tokens listed in the chunks' `logprobs`; None while no chunk carried any."""
    texts: list[str] = field(default_factory=list)
    """Each chunk's text, as the server cut it."""

    def feed(self, chunk: dict[str, Any], choice: dict[str, Any]) -> None:
        usage = chunk.get("usage")
        if isinstance(usage, dict):  # the last one wins: some servers send a running total with every chunk
            if isinstance(usage.get("completion_tokens"), int):
                self.completion_tokens = usage["completion_tokens"]
            if isinstance(usage.get("prompt_tokens"), int):
                self.prompt_tokens = usage["prompt_tokens"]
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict) and isinstance(logprobs.get("tokens"), list):
            self.logprob_tokens = (self.logprob_tokens or 0) + len(logprobs["tokens"])
        if choice.get("text"):
            self.texts.append(choice["text"])

    def count(
        self, stop_reason: str | None, max_tokens: int, tokenizer: Callable[[], Tokenizer | None] | None = None
    ) -> tuple[int, CountSource]:
        """The token count and its source; `stop_reason` None for a run cut short (it reached no limit).
        `tokenizer` is called only when no better evidence exists (reading one takes a moment)."""
        if self.completion_tokens is not None:
            return self.completion_tokens, "usage"
        if self.logprob_tokens is not None:
            return self.logprob_tokens, "logprobs"
        if stop_reason == "length":  # the server says it stopped at max_tokens: it made exactly that many
            return max_tokens, "limit"
        eos = int(stop_reason == "eos")  # the end-of-text token has no text, yet counts (as in the local engine)
        if (found := tokenizer() if tokenizer else None) is not None:
            # Chunk by chunk: a server's chunk ends on a token boundary, which re-encoding the whole text may not keep.
            encoded = found.encode_batch(self.texts, add_special_tokens=False)
            return sum(len(e.ids) for e in encoded) + eos, "tokenizer"
        return len(self.texts) + eos, "chunks"


def served_tokenizer(model: str) -> Tokenizer | None:
    """The served model's tokenizer when this machine has it, else None; never downloads. A server names a model
    by its repo id (found in the local Hugging Face cache) or, transformers serve, by its folder's path."""
    from huggingface_hub import try_to_load_from_cache
    from tokenizers import Tokenizer

    from bloomtui.engine.weights.hub import looks_like_repo_id

    try:
        path = Path(model).expanduser() / "tokenizer.json"
        if not path.is_file() and looks_like_repo_id(model):
            cached = try_to_load_from_cache(model, "tokenizer.json")
            path = Path(cached) if isinstance(cached, str) else path
        if not path.is_file():
            return None
        found = Tokenizer.from_file(str(path))
        found.no_truncation()  # a file saved with truncation on would cut the count
        found.no_padding()
        return found
    except Exception:  # a name the hub rejects, an unreadable file: count another way
        return None
