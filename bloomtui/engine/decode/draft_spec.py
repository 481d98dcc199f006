"""What a run drafts with (DraftSpec) and the draft settings as typed, importable without torch: the app's
settings and the CLI check them before the engine loads. drafting.py does the drafting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from bloomtui.engine.decode.tree_budget import MAX_NODES, TreeBudget
from bloomtui.errors import UsageError

if TYPE_CHECKING:
    from bloomtui.engine.sampling_params import SamplingParams
    from bloomtui.engine.stream.open_model import OpenModel

PROMPT_LOOKUP = "prompt-lookup"
MAX_DRAFT_TOKENS = 8
"""Upper end of the adaptive K; a fixed --draft-tokens may go up to MAX_FIXED_TOKENS."""
MAX_FIXED_TOKENS = 32
AUTO, OFF = "auto", "off"


def seeded_sampling(params: SamplingParams) -> bool:
    """Whether `--draft-tree auto` drafts chains for this run: a tree sized by timings draws other random
    numbers each run, so with a seed set a sampled run would not give the same text twice."""
    return not params.greedy and params.seed is not None


def tree_setting(value: str | None) -> int | str | None:
    """A tree setting as typed (--draft-tree, the app's Draft tree): "auto", "off", a node count as an int, or
    None when blank; DraftSpec checks it."""
    if value is None or not value.strip():
        return None
    value = value.strip().lower()
    return int(value) if value.isdigit() else value


@dataclass(frozen=True)
class DraftSpec:
    """What drafts for a run: `model` (an OpenModel held fully resident) or prompt lookup when None."""

    model: OpenModel | None = None
    tokens: int | None = None
    """Fixed K of a chain; None adapts K in 1..MAX_DRAFT_TOKENS."""
    tree: int | str | None = None
    """Token trees: AUTO (the node budget chosen from measured costs), a fixed node count, or OFF (chains).
    None: OFF. Chains are the default: on the demo pair at 1/4 budget, warm, trees kept more tokens per pass
    but ran slower than chains (BENCHMARKS.md, "Token trees")."""

    def __post_init__(self) -> None:
        if self.tokens is not None and not 1 <= self.tokens <= MAX_FIXED_TOKENS:
            raise UsageError(f"--draft-tokens must be in 1..{MAX_FIXED_TOKENS}, got {self.tokens}")
        tree = self.tree
        if isinstance(tree, str) and tree not in (AUTO, OFF):
            raise UsageError(f"--draft-tree must be auto, off or a node count, got {tree!r}")
        if isinstance(tree, int) and not 1 <= tree <= MAX_NODES:
            raise UsageError(f"--draft-tree must be auto, off or a node count in 1..{MAX_NODES}, got {tree}")
        if self.tokens is not None and tree not in (None, OFF):
            raise UsageError("--draft-tokens sets a chain's length: it goes with --draft-tree off only")

    @property
    def trees(self) -> bool:
        return self.tree not in (None, OFF)

    def budget(self) -> TreeBudget | None:
        """A sequence's own tree budget (None: chains)."""
        if not self.trees:
            return None
        return TreeBudget(self.tree if isinstance(self.tree, int) else None, draft_costs=self.model is not None)

    @property
    def name(self) -> str:
        return PROMPT_LOOKUP if self.model is None else self.model.model_plan.path.name
