"""How many nodes a token tree gets: the size that maximises expected tokens per second (Sequoia's rule,
arXiv 2402.12374), from costs and acceptance measured as the run goes.

Acceptance is positional: p[k] is the chance that the target keeps a node's (k+1)-th most likely child once
the ones before it were rejected. A node reached with probability v then gives its k-th child the value
v * p[k] * prod(1 - p[j], j < k), and the best tree of n nodes is the n most valuable (a child is never worth
more than its parent, so they form a tree); its expected tokens per pass are 1 + their sum. The cost of a
pass of r rows is fitted as a + b * r over the run's recent passes (streamed, a pass costs nearly the same
for 1 row or 64; resident on a CPU, rows cost compute), plus the draft's time per round. A budget of 0 means
no draft: a plain pass. While drafting does not pay, a small tree is still tried now and then, so the
figures it rests on stay current.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

BUDGETS = (0, 2, 4, 8, 16, 32, 64)
"""The sizes `auto` chooses from."""
MAX_NODES = 64
MAX_DEPTH = 10
BRANCH = 8
"""Children a node may have (its draft's most likely tokens)."""
_EXPLORE = (8, 32)
"""Sizes of the first trees, before two row counts have been timed."""
_PROBE_EVERY = 12
_PROBE = 4
_WINDOW = 24
_DEPTHS = (1, 2, 3, 4, 6, MAX_DEPTH)
"""Depth limits `auto` weighs."""
_RESHAPE = 4
"""Times a computed list of candidate trees is reused (it serves 1 + _RESHAPE passes)."""
_PRIOR = ((0.5, 2.0),) + ((0.15, 2.0),) * (BRANCH - 1)
"""(p, weight in visits) before any is measured."""


@dataclass(frozen=True)
class Choice:
    nodes: int
    """0: no draft this pass."""
    levels: tuple[int, ...] = ()
    """Nodes per depth of the expected tree (the draft expands one level per round)."""
    expected_tokens: float = 1.0


class TreeBudget:
    """Per sequence: measured acceptance and costs, and the node budget of its next pass."""

    def __init__(self, fixed: int | None, draft_costs: bool) -> None:
        """`fixed`: always this many nodes (None: auto). `draft_costs`: the draft runs a model per round
        (prompt lookup costs nothing measurable)."""
        self.fixed, self.draft_costs = fixed, draft_costs
        self.tried = [w for _, w in _PRIOR]
        self.kept = [p * w for p, w in _PRIOR]
        self.passes: deque[tuple[int, float]] = deque(maxlen=_WINDOW)
        self.draft_rounds: deque[float] = deque(maxlen=_WINDOW)
        self.since_draft = 0
        self.explored = 0
        self.last = Choice(0)
        self._shapes: tuple[int, list[Choice]] | None = None
        self._shapes_age = 0
        self._fit: tuple[float, float] | None = None
        """pass_seconds' line, until the next pass is recorded."""

    # -- what the run measured ------------------------------------------------------------------------------

    def record_pass(self, rows: int, seconds: float) -> None:
        """A decode or verify pass carrying `rows` rows (all sequences') took `seconds`."""
        self.passes.append((rows, seconds))
        self._fit = None

    def record_draft(self, rounds: int, seconds: float) -> None:
        if rounds:
            self.draft_rounds.append(seconds / rounds)

    def record_visits(self, visits: list[tuple[int, int | None]]) -> None:
        """From verify_tree: at each node walked, how many children were tried and which was kept."""
        for tried, kept in visits:
            for k in range(min(tried, BRANCH)):
                self.tried[k] += 1
            if kept is not None and kept < BRANCH:
                self.kept[kept] += 1

    # -- the model ----------------------------------------------------------------------------------------

    def acceptance(self) -> list[float]:
        return [min(0.99, k / t) for k, t in zip(self.kept, self.tried, strict=True)]

    def best_tree(self, n: int, depth: int = MAX_DEPTH) -> Choice:
        """The n most valuable nodes at most `depth` deep under the positional model: their count per depth
        and expected tokens."""
        return next(iter(self._grow(depth, {n})), Choice(0)) if n > 0 else Choice(0)

    def _grow(self, depth: int, sizes: set[int]) -> Iterator[Choice]:
        """The best trees of each of `sizes` nodes at most `depth` deep, smallest first (a tree short of
        nodes, when the children run out, comes last). Each is the one before plus the most valuable node
        left: the greedy rule is optimal for this value, as a child is never worth more than its parent."""
        p = self.acceptance()
        child_values = []
        reach = 1.0
        for pk in p:
            child_values.append(reach * pk)
            reach *= 1 - pk
        # (−value, depth, rank): a node's k-th child is worth value * child_values[k].
        heap = [(-child_values[0], 1, 0, 1.0)]
        levels = [0] * depth
        total, count, deepest = 0.0, 0, 0
        for count in range(1, max(sizes, default=0) + 1):
            if not heap:
                break
            neg, d, rank, parent_value = heapq.heappop(heap)
            value = -neg
            total += value
            levels[d - 1] += 1
            deepest = max(deepest, d)
            if rank + 1 < BRANCH:
                heapq.heappush(heap, (-parent_value * child_values[rank + 1], d, rank + 1, parent_value))
            if d < depth:
                heapq.heappush(heap, (-value * child_values[0], d + 1, 0, value))
            if count in sizes:
                yield Choice(count, tuple(levels[:deepest]), 1.0 + total)
        else:
            return
        yield Choice(count - 1, tuple(levels[:deepest]), 1.0 + total)

    def shapes(self, room: int = MAX_NODES) -> list[Choice]:
        """The candidates `auto` weighs: for every budget, the best tree of that many nodes (at most `room`)
        at each depth limit. A deeper tree keeps more but costs the draft a round per level, so where
        draft rounds are dear a wide, shallow tree runs faster. Acceptance moves slowly: the list is reused
        for a few passes."""
        if self._shapes is not None and self._shapes[0] == room and self._shapes_age < _RESHAPE:
            self._shapes_age += 1
            return self._shapes[1]
        sizes = {min(n, room) for n in BUDGETS if n}
        out = [choice for depth in _DEPTHS for choice in self._grow(depth, sizes)]
        self._shapes, self._shapes_age = (room, out), 0
        return out

    def pass_seconds(self, rows: int) -> float | None:
        """Fitted a + b * rows over recent passes; None until two row counts have been timed."""
        if self._fit is None:
            self._fit = self._line()
        if self._fit is None:
            return None
        a, b = self._fit
        return a + b * rows

    def _line(self) -> tuple[float, float] | None:
        if len({r for r, _ in self.passes}) < 2:
            return None
        n = len(self.passes)
        mr = sum(r for r, _ in self.passes) / n
        ms = sum(s for _, s in self.passes) / n
        var = sum((r - mr) ** 2 for r, _ in self.passes)
        b = max(0.0, sum((r - mr) * (s - ms) for r, s in self.passes) / var)
        return max(1e-6, ms - b * mr), b

    def draft_seconds(self, choice: Choice) -> float:
        if not self.draft_costs or not choice.nodes:
            return 0.0
        per_round = sum(self.draft_rounds) / len(self.draft_rounds) if self.draft_rounds else 0.0
        return per_round * len(choice.levels)

    def choose(self, other_rows: int = 0, room: int = MAX_NODES) -> Choice:
        """The tree for the next pass (other sequences bring `other_rows` rows to it; at most `room` nodes)."""
        self.last = self._choose(other_rows, max(0, min(room, MAX_NODES)))
        self.since_draft = 0 if self.last.nodes else self.since_draft + 1
        return self.last

    def _choose(self, other_rows: int, room: int) -> Choice:
        if room == 0:
            return Choice(0)
        if self.fixed is not None:
            return self.best_tree(min(self.fixed, room))
        if self.pass_seconds(1) is None and self.explored < len(_EXPLORE):
            self.explored += 1
            return self.best_tree(min(_EXPLORE[self.explored - 1], room))
        plain = self.pass_seconds(other_rows + 1)
        if plain is None:
            return self.best_tree(min(_EXPLORE[-1], room))
        best, best_rate = Choice(0), 1.0 / plain
        for choice in self.shapes(room):
            seconds = self.pass_seconds(other_rows + 1 + choice.nodes) or plain
            rate = choice.expected_tokens / (seconds + self.draft_seconds(choice))
            if rate > best_rate * (1 + 1e-9):
                best, best_rate = choice, rate
        if not best.nodes and self.since_draft + 1 >= _PROBE_EVERY:
            return self.best_tree(min(_PROBE, room))  # keep the acceptance figures current
        return best

    def describe(self) -> str:
        return "auto" if self.fixed is None else str(self.fixed)
