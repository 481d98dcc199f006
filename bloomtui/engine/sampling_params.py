"""How to pick tokens and when to stop: plain values, importable without torch (the CLI and the app check
them before the engine loads; sampling.py does the picking)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from bloomtui.errors import UsageError


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    """0 means greedy (argmax)."""
    top_k: int = 0
    """0 turns top-k off."""
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    """Generation stops before the first occurrence of any of these strings."""
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise UsageError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise UsageError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise UsageError(f"--top-k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"--top-p must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise UsageError(f"--repetition-penalty must be > 0, got {self.repetition_penalty}")
        if any(s == "" for s in self.stop):
            raise UsageError("--stop must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def sample_params(params: SamplingParams, n: int) -> list[SamplingParams]:
    """N samples of one prompt: sample i uses seed S+i, so it equals a single run with seed S+i."""
    if n < 1:
        raise UsageError(f"--samples must be at least 1, got {n}")
    if params.seed is None:
        return [params] * n
    return [replace(params, seed=params.seed + i) for i in range(n)]
