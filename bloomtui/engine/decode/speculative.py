"""Verifying a draft: which drafted tokens the target keeps, and the token it adds after them.

The target has run one pass over [last token, *drafted tokens] and holds a row of logits per position:
row i scores the token after the i-th drafted one. Both rules below leave the output distributed exactly as
the target's own decoding, one token at a time:

- Greedy: a drafted token stays while it equals the target's argmax; the first that differs is replaced by
  the argmax. The ids are those of plain greedy decoding.
- Sampling: speculative sampling (Leviathan et al. 2023, arXiv 2211.17192; Chen et al. 2023, arXiv
  2302.01318). Drafted token x, drawn from the draft's q, stays with probability min(1, p(x)/q(x)) where p is
  the target's distribution after the same penalty, temperature, top-k and top-p; on rejection the token is
  drawn from max(0, p - q), renormalised. A deterministic draft (prompt lookup) is q = 1 at x.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from bloomtui.engine.decode.sampling import Sampler, logprob


@dataclass(frozen=True)
class Proposal:
    tokens: list[int] = field(default_factory=list)
    probs: list[Tensor] | None = None
    """The distribution (over the target's vocabulary) each token was drawn from; None when the draft
    chose deterministically (prompt lookup, or a greedy draft), i.e. with probability 1."""

    def __len__(self) -> int:
        return len(self.tokens)


def verify(sampler: Sampler, logits: Tensor, proposal: Proposal, seq: list[int]) -> list[tuple[int, float]]:
    """(token, logprob) for each token this pass yields: the drafted ones kept, then the target's own.

    `logits` has len(proposal) + 1 rows; `seq` is the text so far (for the repetition penalty)."""
    picked: list[tuple[int, float]] = []
    for i in range(len(proposal) + 1):
        seen = torch.tensor(seq + [t for t, _ in picked], dtype=torch.long)
        row = logits[i]
        drafted = proposal.tokens[i] if i < len(proposal) else None
        if sampler.params.greedy:
            token = sampler.pick(row, seen)
        elif drafted is None:
            token = sampler.draw(sampler.probs(row, seen))
        else:
            p = sampler.probs(row, seen)
            q = proposal.probs[i] if proposal.probs is not None else None
            q_x = 1.0 if q is None else float(q[drafted])
            # u < p/q, written without the division (q_x > 0: the draft drew x).
            token = drafted if sampler.uniform() * q_x < float(p[drafted]) else sampler.draw(residual(p, q, drafted))
        picked.append((token, logprob(row, token)))
        if token != drafted:
            break
    return picked


def residual(p: Tensor, q: Tensor | None, drafted: int) -> Tensor:
    """max(0, p - q): what is left of the target's distribution once the draft's share is accepted."""
    if q is None:
        rest = p.clone()
        rest[drafted] = 0.0
    else:
        rest = (p - q).clamp_(min=0.0)
    # Zero mass only when p == q up to rounding, where rejection itself has ~zero probability.
    return rest if float(rest.sum()) > 0 else p
