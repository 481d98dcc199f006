"""Drafts for speculative decoding: a small resident BLOOM, or n-gram lookup in the text so far.

A draft proposes K tokens; the target verifies them in one pass over its weights (K+1 rows), so a streamed
block is read once for up to K+1 tokens. Verification (speculative.py) keeps the output distributed as the
target's own: greedy ids equal those without a draft; sampled ones follow the same distribution.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from bloomtui.engine.events import ignore
from bloomtui.engine.model import Alibi, KVCache
from bloomtui.engine.open_model import EngineOptions, ModelPlan, OpenModel
from bloomtui.engine.residency import budget_for
from bloomtui.engine.sampling import Sampler
from bloomtui.engine.speculative import Proposal
from bloomtui.errors import BudgetError, UsageError
from bloomtui.sizes import format_size

if TYPE_CHECKING:
    from bloomtui.engine.loader import Prefetcher
    from bloomtui.engine.passes import Passes

PROMPT_LOOKUP = "prompt-lookup"
MAX_DRAFT_TOKENS = 8
"""Upper end of the adaptive K; a fixed --draft-tokens may go up to MAX_FIXED_TOKENS."""
MAX_FIXED_TOKENS = 32
_START_TOKENS = 4
_NGRAM = 3
"""Longest suffix n-gram prompt lookup matches (then shorter ones)."""


@dataclass(frozen=True)
class DraftSpec:
    """What drafts for a run: `model` (an OpenModel held fully resident) or prompt lookup when None."""

    model: OpenModel | None = None
    tokens: int | None = None
    """Fixed K; None adapts K in 1..MAX_DRAFT_TOKENS."""

    def __post_init__(self) -> None:
        if self.tokens is not None and not 1 <= self.tokens <= MAX_FIXED_TOKENS:
            raise UsageError(f"--draft-tokens must be in 1..{MAX_FIXED_TOKENS}, got {self.tokens}")

    @property
    def name(self) -> str:
        return PROMPT_LOOKUP if self.model is None else self.model.model_plan.path.name


class Drafter(Protocol):
    def propose(self, seq: list[int], k: int, sampler: Sampler) -> Proposal:
        """Up to k tokens likely to follow `seq` (prompt and tokens so far), drawn with the run's sampler."""

    def rollback(self, valid: int) -> None:
        """Only the first `valid` tokens of the last proposal's sequence (plus accepted drafts) still hold."""


class AdaptiveK:
    """K grows on full acceptance and shrinks on a miss (fixed when asked)."""

    def __init__(self, fixed: int | None) -> None:
        self.fixed = fixed
        self.k = fixed or _START_TOKENS

    def update(self, proposed: int, accepted: int) -> None:
        if self.fixed is not None or proposed == 0:
            return
        # Grow fast when the draft is right: a pass carrying more rows costs little when streaming.
        self.k = min(MAX_DRAFT_TOKENS, self.k + 2) if accepted == proposed else max(1, self.k - 1)


class PromptLookup:
    """Continuations of the latest earlier occurrence of the text's last n-gram (n = 3, 2, 1)."""

    def propose(self, seq: list[int], k: int, sampler: Sampler | None = None) -> Proposal:
        n_seq = len(seq)
        for n in range(min(_NGRAM, n_seq - 1), 0, -1):
            suffix = seq[n_seq - n :]
            # Latest occurrence first: in a repeating passage it is the one that continues it.
            for i in range(n_seq - n - 1, -1, -1):
                if seq[i : i + n] == suffix:
                    return Proposal(seq[i + n : i + n + k])
        return Proposal()

    def rollback(self, valid: int) -> None:
        pass


class ModelDrafter:
    """Proposals from a small resident model, keeping its own KV cache across rounds. Greedy runs take its
    argmax; sampled ones draw from its distribution (processed like the target's) and keep it for verify()."""

    def __init__(
        self, engine: OpenModel, generation: int, cancel: threading.Event, max_len: int, target_vocab: int
    ) -> None:
        cfg = engine.config
        self.engine = engine
        self.target_vocab = target_vocab
        self.caches = [KVCache.empty(cfg, min(max_len, 512), engine.dtype) for _ in range(cfg.n_layer)]
        self.alibi = Alibi(cfg.n_head, engine.dtype)
        self.filled = 0
        """Positions of the draft's caches that match the sequence."""
        self.prefetch: Prefetcher = engine.store.prefetcher(0, cancel)  # nothing streams: see open_draft
        # Its events are not the target's: a UI counts the target's blocks. The cancel flag is shared.
        self.passes: Passes = engine.passes(generation, ignore, cancel, self.prefetch)

    def propose(self, seq: list[int], k: int, sampler: Sampler) -> Proposal:
        ids = seq[self.filled :]
        if any(t >= self.engine.config.vocab_size for t in ids):
            return Proposal()
        tokens: list[int] = []
        probs: list[torch.Tensor] = []
        for step in range(k):
            h = self.passes.hidden(ids, self.filled, self.caches, self.alibi, "decode", step)
            self.filled += len(ids)
            row = self._on_target_vocab(self.passes.logits(h[-1:])[0])
            seen = torch.tensor(seq + tokens, dtype=torch.long)
            if sampler.params.greedy:
                token = int(torch.argmax(sampler.scores(row, seen)))
            else:
                probs.append(sampler.probs(row, seen))
                token = sampler.draw(probs[-1])
            tokens.append(token)
            ids = [token]
        return Proposal(tokens, probs if not sampler.params.greedy else None)

    def _on_target_vocab(self, row: torch.Tensor) -> torch.Tensor:
        """Logits over the target's ids: ids only one model has can never be proposed."""
        n = row.shape[0]
        if n >= self.target_vocab:
            return row[: self.target_vocab]
        return torch.cat([row, row.new_full((self.target_vocab - n,), -float("inf"))])

    def rollback(self, valid: int) -> None:
        self.filled = min(self.filled, valid)

    def close(self) -> None:
        self.prefetch.close()


def check_same_tokenizer(target: OpenModel, draft: OpenModel) -> None:
    """A draft must split text into the target's ids, else its proposals mean other tokens."""
    tv, tm = target.tokenizer_identity()
    dv, dm = draft.tokenizer_identity()
    if tv != dv:
        sizes = f"{len(dv or ())} tokens vs the target's {len(tv or ())}"
        raise UsageError(f"the draft model's tokenizer differs from the target's (vocabulary: {sizes})")
    if tm != dm:
        raise UsageError("the draft model's tokenizer differs from the target's (merges)")


def draft_source(model: str | Path) -> str | Path:
    """A draft argument as a model argument: the shipped `trained-draft` by name, unless a folder is so named."""
    from bloomtui import demo_models

    if str(model) in demo_models.NAMES and not Path(model).exists():
        return demo_models.path(str(model))
    return model


def open_draft(model: str | Path, options: EngineOptions) -> OpenModel:
    """Open a draft model held fully resident (a draft runs K passes per target pass; it must not stream)."""
    model = draft_source(model)
    probe = ModelPlan.make(model, EngineOptions(dtype=options.dtype))
    ckpt = probe.checkpoint
    budget = budget_for(ckpt, probe.dtype.itemsize, ckpt.n_blocks)
    engine = OpenModel.open(model, EngineOptions(ram_budget=budget, dtype=options.dtype, threads=options.threads))
    if engine.model_plan.plan.streams:
        engine.close()
        raise UsageError(f"the draft model {probe.path.name} does not fit in this machine's RAM")
    return engine


def budget_after_draft(options: EngineOptions, draft: OpenModel) -> EngineOptions:
    """The draft's resident bytes come out of the RAM budget; without one, each model gets the default."""
    if options.ram_budget is None:
        return options
    used = draft.model_plan.plan.total_bytes
    if used >= options.ram_budget:
        raise BudgetError(
            f"the RAM budget {format_size(options.ram_budget)} does not cover the draft model "
            f"({format_size(used)} resident) and the model"
        )
    return replace(options, ram_budget=options.ram_budget - used)
