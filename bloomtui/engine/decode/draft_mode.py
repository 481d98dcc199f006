"""Under `--draft-tree auto`: whether the next pass drafts a chain or a tree, from the tokens per second each
has made lately in this run.

The tree budget's model (tree_budget.py) treats acceptance as independent from node to node and pass to pass;
real drafts are right in runs (an easy stretch of text, a copied passage), which an adaptive chain follows by
growing K while every guess is kept. On the demo pair that made chains faster than the trees the model chose
(BENCHMARKS.md, "Token trees"). So `auto` measures both: each mode runs in stretches of passes, the faster
one lately keeps the run, and the other is tried again now and then, so a change in the text or the machine
is noticed.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

Mode = Literal["chain", "tree"]
MODES: tuple[Mode, Mode] = ("chain", "tree")
EXPLORE = 6
"""Passes each mode runs first, one stretch each (an adaptive chain needs a few passes to find its K)."""
WINDOW = 12
"""Recent passes of a mode its rate is taken over."""
REVISIT = 32
"""Passes in the faster mode before the other runs again, for PROBE passes."""
PROBE = 4


class ChainOrTree:
    def __init__(self) -> None:
        self.recent: dict[Mode, deque[tuple[int, float]]] = {mode: deque(maxlen=WINDOW) for mode in MODES}
        self.passes: dict[Mode, int] = dict.fromkeys(MODES, 0)
        self.mode: Mode = "chain"
        self._stretch = 0
        """Passes the current mode has run since it was chosen."""
        self._probing = False

    def rate(self, mode: Mode) -> float | None:
        """Tokens per second of the mode's recent passes (drafting included); None before any."""
        done = self.recent[mode]
        seconds = sum(s for _, s in done)
        return sum(t for t, _ in done) / seconds if done and seconds > 0 else None

    def choose(self) -> Mode:
        """The mode of the next pass."""
        if self.passes["chain"] < EXPLORE:
            self._run("chain")
        elif self.passes["tree"] < EXPLORE:
            self._run("tree")
        elif self._probing and self._stretch < PROBE:
            pass  # the slower mode's probe runs its passes
        elif not self._probing and self._stretch >= REVISIT and self._faster() == self.mode:
            self._run(self._other(), probe=True)
        else:
            self._run(self._faster())
        self._stretch += 1
        return self.mode

    def record(self, mode: Mode, tokens: int, seconds: float) -> None:
        """A pass drafted in `mode` gave `tokens` tokens in `seconds` (its drafting and its pass)."""
        self.recent[mode].append((tokens, seconds))
        self.passes[mode] += 1

    def share(self, mode: Mode) -> float:
        """The share of this run's passes drafted in `mode`."""
        total = sum(self.passes.values())
        return self.passes[mode] / total if total else 0.0

    def _other(self) -> Mode:
        return "tree" if self.mode == "chain" else "chain"

    def _faster(self) -> Mode:
        chain, tree = self.rate("chain"), self.rate("tree")
        if chain is None or tree is None:
            return self.mode
        return "tree" if tree > chain else "chain"

    def _run(self, mode: Mode, probe: bool = False) -> None:
        if mode != self.mode or probe != self._probing:
            self.mode, self._stretch, self._probing = mode, 0, probe
            if probe:
                self.recent[mode].clear()  # judged on the probe's own passes: the older ones are stale
