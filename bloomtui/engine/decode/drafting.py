"""Drafts for speculative decoding: a small resident BLOOM, or n-gram lookup in the text so far.

A draft proposes K tokens; the target verifies them in one pass over its weights (K+1 rows), so a streamed
block is read once for up to K+1 tokens. Verification (speculative.py) keeps the output distributed as the
target's own: greedy ids equal those without a draft; sampled ones follow the same distribution.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from bloomtui.engine.compute.model import Alibi, KVCache, TreeRows
from bloomtui.engine.decode.draft_spec import MAX_DRAFT_TOKENS
from bloomtui.engine.decode.sampling import Sampler
from bloomtui.engine.decode.speculative import Proposal
from bloomtui.engine.decode.tree import ROOT, DraftTree, compact
from bloomtui.engine.decode.tree_budget import BRANCH, Choice
from bloomtui.engine.engine_options import EngineOptions
from bloomtui.engine.events import ignore
from bloomtui.engine.plan.model_plan import ModelPlan, plan_model
from bloomtui.engine.plan.residency import budget_for
from bloomtui.engine.stream.open_model import OpenModel
from bloomtui.errors import BudgetError, UsageError
from bloomtui.sizes import format_size

if TYPE_CHECKING:
    from bloomtui.engine.stream.loader import Prefetcher
    from bloomtui.engine.stream.passes import Passes

_START_TOKENS = 4
_NGRAM = 3
"""Longest suffix n-gram prompt lookup matches (then shorter ones)."""
_LOOKUP_MATCHES = 16
"""Earlier occurrences prompt lookup's tree takes its branches from."""
_MIN_CHILD = 0.005
"""A draft's second or later choice less likely than this after its parent is not worth a row."""


class Drafter(Protocol):
    def propose(self, seq: list[int], k: int, sampler: Sampler) -> Proposal:
        """Up to k tokens likely to follow `seq` (prompt and tokens so far), drawn with the run's sampler."""

    def rollback(self, valid: int) -> None:
        """Only the first `valid` tokens of the last proposal's sequence (plus accepted drafts) still hold."""

    def propose_tree(self, seq: list[int], choice: Choice, depth: int, sampler: Sampler) -> DraftTree:
        """About choice.nodes likely continuations of `seq` as a tree at most `depth` deep."""

    def keep(self, tree: DraftTree, kept: list[int]) -> None:
        """The target kept these nodes of the last tree (a line from the root): the rest no longer hold."""


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

    def propose_tree(self, seq: list[int], choice: Choice, depth: int, sampler: Sampler | None = None) -> DraftTree:
        """The continuations of several earlier occurrences (longest n-gram first, latest first) as one trie:
        where they agree it is one line, where they differ it branches."""
        tree = DraftTree()
        n_seq, matches = len(seq), 0
        for n in range(min(_NGRAM, n_seq - 1), 0, -1):
            suffix = seq[n_seq - n :]
            for i in range(n_seq - n - 1, -1, -1):
                if seq[i : i + n] != suffix:
                    continue
                node = ROOT
                for token in seq[i + n : i + n + depth]:
                    kids = [k for k in tree.children(node) if tree.tokens[k] == token]
                    if kids:
                        node = kids[0]
                    elif len(tree) < choice.nodes:
                        node = tree.add(token, node)
                    else:
                        break
                matches += 1
                if matches >= _LOOKUP_MATCHES or len(tree) >= choice.nodes:
                    return tree
        return tree

    def keep(self, tree: DraftTree, kept: list[int]) -> None:
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
        self._fed: list[int] = []
        """Tree nodes the draft ran this round, in cache slot order from `_base`."""
        self._base = 0
        self._order = itertools.count()  # ties in the candidate heap go to the earlier candidate
        self.rounds, self.seconds = 0, 0.0
        """Draft passes and seconds of the last tree."""
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

    def propose_tree(self, seq: list[int], choice: Choice, depth: int, sampler: Sampler) -> DraftTree:
        """Best-first (SpecExec): each round takes the most likely candidates so far (by the draft's
        probability of the whole line), as many as the expected tree has at that depth, and runs them through
        the draft in one pass to get their own children; the last round's nodes are leaves."""
        tree = DraftTree()
        self._fed, self._base = [], len(seq)
        levels = choice.levels[:depth]
        ids = seq[self.filled :]
        if not levels or any(t >= self.engine.config.vocab_size for t in ids):
            return tree
        t0 = time.perf_counter()
        h = self.passes.hidden(ids, self.filled, self.caches, self.alibi, "decode", 0)
        self.filled = len(seq)
        line_logq = [0.0]  # per node + 1 (index 0: the root)
        heap: list[tuple[float, int, int, int]] = []  # (-line log q, order, parent, token)
        self._push_children(heap, self.passes.logits(h[-1:])[0], ROOT, 0.0, seq, sampler)
        self.rounds = 1
        for r, quota in enumerate(levels):
            popped = []
            while heap and len(popped) < quota:
                neg, _, parent, token = heapq.heappop(heap)
                popped.append(tree.add(token, parent))
                line_logq.append(-neg)
            if not popped or r == len(levels) - 1:
                break
            logits = self.passes.logits(self._feed(tree, popped, len(seq) - 1, r + 1))  # one head pass per round
            self.rounds += 1
            for row, node in enumerate(popped):
                line = [tree.tokens[k] for k in tree.line(node)]
                self._push_children(heap, logits[row], node, line_logq[node + 1], seq + line, sampler)
        self.seconds = time.perf_counter() - t0
        return tree

    def _push_children(
        self, heap: list, logits: torch.Tensor, node: int, logq: float, seen: list[int], sampler: Sampler
    ) -> None:
        row = self._on_target_vocab(logits)
        seen_ids = torch.tensor(seen, dtype=torch.long)
        # Ranked by what the run samples from (greedy: the penalised scores at temperature 1).
        greedy = sampler.params.greedy
        probs = torch.softmax(sampler.scores(row, seen_ids), -1) if greedy else sampler.probs(row, seen_ids)
        values, ids = probs.topk(BRANCH)
        for rank, (q, token) in enumerate(zip(values.tolist(), ids.tolist(), strict=True)):
            if rank and q < _MIN_CHILD:
                break  # the first child stays: at worst the tree is the chain a chain draft would propose
            heapq.heappush(heap, (-(logq + math.log(q)), next(self._order), node, token))

    def _feed(self, tree: DraftTree, nodes: list[int], root_position: int, step: int) -> torch.Tensor:
        """Run `nodes` through the draft after the ones already fed; each sees the text and its ancestors."""
        fed = self._fed + nodes
        slot = {node: j for j, node in enumerate(fed)}
        positions = torch.tensor([root_position + tree.depth(k) for k in fed], dtype=torch.long)
        visible = torch.zeros((len(nodes), len(fed)), dtype=torch.bool)
        for row, node in enumerate(nodes):
            for k in tree.line(node):
                visible[row, slot[k]] = True
        first = self._base
        rows = TreeRows(first, positions, visible)
        start = first + len(self._fed)
        h = self.passes.hidden([tree.tokens[k] for k in nodes], start, self.caches, self.alibi, "decode", step, rows)
        self._fed = fed
        return h

    def keep(self, tree: DraftTree, kept: list[int]) -> None:
        """The kept line's nodes that went through the draft move up to follow the text (as a chain would
        have left them); the draft picks up the rest of the kept tokens on its next proposal."""
        slots = []
        for node in kept:
            if node not in self._fed:
                break
            slots.append(self._base + self._fed.index(node))
        compact(self.caches, self._base, slots)
        self.filled = min(self.filled, self._base) + len(slots)
        self._fed = []

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


def _draft_options(model: str | Path, options: EngineOptions) -> tuple[str | Path, EngineOptions, str]:
    """(source, options that hold it fully resident, its name) for a draft argument."""
    probe = plan_model(model, EngineOptions(dtype=options.dtype))
    ckpt = probe.checkpoint
    budget = budget_for(ckpt, probe.dtype.itemsize, ckpt.n_blocks)
    return model, EngineOptions(ram_budget=budget, dtype=options.dtype, threads=options.threads), probe.path.name


def _refuse_streaming(plan: ModelPlan, name: str) -> None:
    if plan.plan.streams:
        raise UsageError(f"the draft model {name} does not fit in this machine's RAM")


def draft_plan(model: str | Path, options: EngineOptions) -> ModelPlan:
    """What open_draft would hold, planned without loading a weight (for `info --draft`)."""
    source, draft_options, name = _draft_options(model, options)
    plan = plan_model(source, draft_options)
    _refuse_streaming(plan, name)
    return plan


def open_draft(model: str | Path, options: EngineOptions) -> OpenModel:
    """Open a draft model held fully resident (a draft runs K passes per target pass; it must not stream)."""
    source, draft_options, name = _draft_options(model, options)
    engine = OpenModel.open(source, draft_options)
    if engine.model_plan.plan.streams:
        engine.close()
    _refuse_streaming(engine.model_plan, name)
    return engine


def budget_after_draft(options: EngineOptions, draft: ModelPlan) -> EngineOptions:
    """The draft's resident bytes come out of the RAM budget; without one, each model gets the default."""
    if options.ram_budget is None:
        return options
    used = draft.plan.total_bytes
    if used >= options.ram_budget:
        raise BudgetError(
            f"the RAM budget {format_size(options.ram_budget)} does not cover the draft model "
            f"({format_size(used)} resident) and the model"
        )
    return replace(options, ram_budget=options.ram_budget - used)
