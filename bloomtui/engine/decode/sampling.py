"""Choosing the next token from logits, with transformers' semantics.

Order as in `generate()`: repetition penalty (a logits processor), then temperature, top-k and top-p
(warpers). Greedy is temperature 0. The reported logprob is always log-softmax of the raw logits.
"""

from __future__ import annotations

import torch

from bloomtui.engine.sampling_params import SamplingParams


class Sampler:
    """Stateful over one generation (it owns the random generator)."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.generator = torch.Generator()
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        else:
            self.generator.seed()

    def __call__(self, logits: torch.Tensor, seen_ids: torch.Tensor) -> tuple[int, float]:
        """Pick a token from fp32 logits of shape (vocab,); return (id, logprob under the raw logits)."""
        token = self.pick(logits, seen_ids)
        return token, logprob(logits, token)

    def pick(self, logits: torch.Tensor, seen_ids: torch.Tensor) -> int:
        if self.params.greedy:
            return int(torch.argmax(self.scores(logits, seen_ids)))
        return self.draw(self.probs(logits, seen_ids))

    def scores(self, logits: torch.Tensor, seen_ids: torch.Tensor) -> torch.Tensor:
        """Logits after the repetition penalty (what greedy takes the argmax of)."""
        p = self.params
        if p.repetition_penalty != 1.0 and seen_ids.numel():
            return apply_repetition_penalty(logits, seen_ids, p.repetition_penalty)
        return logits

    def probs(self, logits: torch.Tensor, seen_ids: torch.Tensor) -> torch.Tensor:
        """The distribution a sampled token is drawn from: penalty, temperature, top-k, top-p (sampling only)."""
        p = self.params
        scores = self.scores(logits, seen_ids) / p.temperature
        if p.top_k:
            scores = top_k_filter(scores, p.top_k)
        if p.top_p < 1.0:
            scores = top_p_filter(scores, p.top_p)
        return torch.softmax(scores, dim=-1)

    def draw(self, weights: torch.Tensor) -> int:
        """A token drawn with probability proportional to `weights` (need not sum to 1)."""
        return int(torch.multinomial(weights, 1, generator=self.generator))

    def uniform(self) -> float:
        """A draw from U[0, 1), from the same generator (speculative sampling's acceptance test)."""
        return float(torch.rand(1, generator=self.generator))


def logprob(logits: torch.Tensor, token: int) -> float:
    """Log-softmax of the raw logits at `token`: what TokenGenerated reports, whatever picked it."""
    return float(torch.log_softmax(logits, dim=-1)[token])


def apply_repetition_penalty(scores: torch.Tensor, seen_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty as in transformers: divide positive logits, multiply negative ones."""
    scores = scores.clone()
    picked = scores.gather(0, seen_ids)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    scores.scatter_(0, seen_ids, picked)
    return scores


def top_k_filter(scores: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, scores.numel())
    threshold = torch.topk(scores, k).values[-1]
    return scores.masked_fill(scores < threshold, -float("inf"))


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering as in transformers' TopPLogitsWarper (keeps at least one token)."""
    sorted_logits, sorted_indices = torch.sort(scores, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - top_p)
    remove_sorted[-1] = False
    remove = remove_sorted.scatter(0, sorted_indices, remove_sorted)
    return scores.masked_fill(remove, -float("inf"))
