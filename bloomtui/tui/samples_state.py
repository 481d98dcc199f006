"""Samples: one prompt, several continuations written side by side in shared passes over the weights.

`SampleSet` is what the app keeps of such a run: an `Exchange` per sample (so the transcript keeps each,
labelled "sample 2/4") and which one the user picked to continue from (sample_rates.py has their speeds).
"""

from __future__ import annotations

from dataclasses import dataclass

from bloomtui.tui.widgets.run_output import Exchange


@dataclass
class SampleSet:
    """The samples of one prompt, in sequence order."""

    prompt: str
    model: str
    exchanges: list[Exchange]
    picked: int | None = None
    """Index of the sample picked to continue from."""

    @classmethod
    def new(cls, prompt: str, model: str, count: int) -> SampleSet:
        exchanges = [Exchange(prompt, model, sample=i + 1, samples=count) for i in range(count)]
        return cls(prompt, model, exchanges)

    @property
    def count(self) -> int:
        return len(self.exchanges)

    @property
    def running(self) -> bool:
        return any(exchange.outcome == "running" for exchange in self.exchanges)

    def pick(self, index: int) -> Exchange:
        """Mark sample `index` (0-based) as the one to continue from; another picked before is unpicked."""
        for i, exchange in enumerate(self.exchanges):
            exchange.picked = i == index
        self.picked = index
        return self.exchanges[index]

    @property
    def chosen(self) -> Exchange | None:
        return None if self.picked is None else self.exchanges[self.picked]
