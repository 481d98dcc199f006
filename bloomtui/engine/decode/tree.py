"""Token trees: several drafted continuations verified in one pass (SpecInfer, arXiv 2305.09781; SpecExec,
arXiv 2406.02532).

A tree's root is the last token kept; every other node is a drafted token whose parent is the token before
it. The target runs one pass over [root, *nodes] with each row seeing the text before the root and its own
ancestors only (model.TreeRows), so the logits of row i score what follows node i's line. Verification walks
from the root: while the target's token is one of the current node's children it moves there; the first
token that is not ends the pass. The target's KV cache then keeps the slots of the kept line only
(compact()), which it would have had from a chain: nothing is run again.

Both rules keep the output the target's own. Greedy: the target's argmax picks the child, so the ids are
those of plain greedy decoding. Sampling: a node's children are the draft's most likely tokens, a
deterministic choice, so each is a draft with q = 1 at its token. Trying them in turn, child x is kept with
probability p(x) / (mass of p left), and on rejection x's share is removed from p (the residual of a
deterministic draft); when none is kept the token is drawn from what is left. This is sampling from p
without replacement, stopped at the first draw: every token comes out with probability p(token).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from bloomtui.engine.compute.model import KVCache, TreeRows
from bloomtui.engine.decode.sampling import Sampler, logprob

ROOT = -1
"""The parent of the root's children: the root is the last token kept, not a node."""


@dataclass
class DraftTree:
    """Drafted nodes in an order where each parent comes before its children (row i + 1 of the pass)."""

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    """Node index of each node's parent, or ROOT."""

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, token: int, parent: int) -> int:
        assert parent < len(self.tokens)
        self.tokens.append(token)
        self.parents.append(parent)
        return len(self.tokens) - 1

    def depth(self, node: int) -> int:
        """1 for the root's children."""
        d = 0
        while node != ROOT:
            node, d = self.parents[node], d + 1
        return d

    def line(self, node: int) -> list[int]:
        """The nodes from the root's child down to `node`."""
        out = []
        while node != ROOT:
            out.append(node)
            node = self.parents[node]
        return out[::-1]

    def children(self, node: int) -> list[int]:
        """In the order they were added: the draft's most likely first."""
        return [i for i, p in enumerate(self.parents) if p == node]

    def best_line(self) -> list[int]:
        """The tokens of the first child's first child...: the draft's own best guess (shown dimmed)."""
        out, node = [], ROOT
        while kids := self.children(node):
            node = kids[0]
            out.append(self.tokens[node])
        return out

    def rows(self, first: int) -> TreeRows:
        """The pass's layout of [root, *nodes] from cache slot `first` (the root's): positions by depth."""
        n = len(self.tokens) + 1
        visible = torch.zeros((n, n), dtype=torch.bool)
        depths = [0] * n
        visible[0, 0] = True
        for i, parent in enumerate(self.parents):
            row, up = i + 1, parent + 1
            visible[row] = visible[up]
            visible[row, row] = True
            depths[row] = depths[up] + 1
        return TreeRows(first, first + torch.tensor(depths, dtype=torch.long), visible)


@dataclass(frozen=True)
class Verdict:
    """What a verify pass yields: (token, logprob) pairs (kept nodes' tokens, then the target's own), the
    kept nodes, and for each node the walk stood on: (children tried, rank kept or None)."""

    picked: list[tuple[int, float]]
    kept: list[int]
    visits: list[tuple[int, int | None]]


def verify_tree(sampler: Sampler, logits: Tensor, tree: DraftTree, seq: list[int]) -> Verdict:
    """Walk the tree with the target's choices; `logits` has one row per [root, *nodes]."""
    picked: list[tuple[int, float]] = []
    kept: list[int] = []
    visits: list[tuple[int, int | None]] = []
    node = ROOT
    while True:
        row = logits[node + 1]
        seen = torch.tensor(seq + [t for t, _ in picked], dtype=torch.long)
        kids = tree.children(node)
        token, rank = _choose(sampler, row, seen, [tree.tokens[k] for k in kids])
        if kids:
            visits.append((len(kids) if rank is None else rank + 1, rank))
        picked.append((token, logprob(row, token)))
        if rank is None:
            return Verdict(picked, kept, visits)
        node = kids[rank]
        kept.append(node)


def _choose(sampler: Sampler, row: Tensor, seen: Tensor, candidates: list[int]) -> tuple[int, int | None]:
    """The target's token after this node, and which candidate it is (None: none of them)."""
    if sampler.params.greedy:
        token = sampler.pick(row, seen)
        return token, candidates.index(token) if token in candidates else None
    p = sampler.probs(row, seen)
    for rank, x in enumerate(candidates):
        mass = float(p.sum())
        # Keep x with probability p(x) / mass, written without the division.
        if sampler.uniform() * mass < float(p[x]):
            return x, rank
        p = residual(p, x)
    return sampler.draw(p), None


def residual(p: Tensor, rejected: int) -> Tensor:
    """p without a rejected deterministic candidate (unnormalised; Sampler.draw does not need it)."""
    rest = p.clone()
    rest[rejected] = 0.0
    # Zero mass only when p was all on rejected candidates, where rejection itself has ~zero probability.
    return rest if float(rest.sum()) > 0 else p


def compact(caches: list[KVCache], first: int, slots: list[int]) -> None:
    """Move the kept nodes' keys and values (cache slots `slots`, ascending) to first, first + 1, ...: the
    cache then holds the kept line as a chain would have written it."""
    if not slots or slots == list(range(first, first + len(slots))):
        return
    index = torch.tensor(slots, dtype=torch.long)
    for cache in caches:
        # Gather first: a destination may be another kept node's source.
        cache.k[:, first : first + len(slots)] = cache.k.index_select(1, index)
        cache.v[:, first : first + len(slots)] = cache.v.index_select(1, index)
