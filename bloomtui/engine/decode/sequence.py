"""One sequence of a run: its prompt, KV caches, sampler, draft, stop rules and the text so far.

A run carries one sequence or several (N samples of a prompt, a batch of prompts, a server's requests); each
pass asks every running sequence for its new rows (its prompt, then its last token and any drafted tokens),
and hands each its rows of logits back (batch.py). Nothing here depends on the others: a sequence gets the
tokens it would get alone (to rounding: see batch.py).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import torch

from bloomtui.engine.compute.model import KVCache
from bloomtui.engine.decode.draft_mode import ChainOrTree, Mode
from bloomtui.engine.decode.draft_spec import seeded_sampling
from bloomtui.engine.decode.drafting import AdaptiveK, Drafter, ModelDrafter
from bloomtui.engine.decode.sampling import Sampler, SamplingParams
from bloomtui.engine.decode.speculative import Proposal, verify
from bloomtui.engine.decode.textstream import IncrementalDecoder, StopFilter
from bloomtui.engine.decode.tree import DraftTree, compact, verify_tree
from bloomtui.engine.decode.tree_budget import MAX_DEPTH
from bloomtui.engine.events import Cancelled, Done, Drafted, EventSink, PassKind, TokenGenerated
from bloomtui.errors import UsageError

if TYPE_CHECKING:
    from torch import Tensor

    from bloomtui.engine.compute.model import TreeRows
    from bloomtui.engine.decode.tree_budget import TreeBudget
    from bloomtui.engine.stream.open_model import OpenModel

_FIRST_CAPACITY = 256
"""New positions a sequence's caches hold before they first grow (they double as needed)."""


class SequenceRun:
    """State of one sequence across the passes it takes part in."""

    def __init__(
        self,
        model: OpenModel,
        index: int,
        prompt_ids: list[int],
        params: SamplingParams,
        generation: int,
        emit: EventSink,
        drafter: Drafter | None = None,
        draft_tokens: int | None = None,
        cancel: threading.Event | None = None,
        top_logprobs: int = 0,
        tree: TreeBudget | None = None,
    ) -> None:
        if not prompt_ids:
            raise UsageError("the prompt is empty")
        self.model, self.index, self.params = model, index, params
        self.generation, self.emit = generation, emit
        self.prompt_ids = list(prompt_ids)
        self.seq = list(prompt_ids)
        """The prompt and every token kept so far."""
        self.sampler = Sampler(params)
        self.drafter, self.k = drafter, AdaptiveK(draft_tokens)
        self.cancel = cancel or threading.Event()
        """Set to end this sequence alone; its rows leave the pass after the current block."""
        self.caches: list[KVCache] | None = None
        self.token_ids: list[int] = []
        self.text: list[str] = []
        self.decoder = IncrementalDecoder(model.decode)
        self.stops = StopFilter(params.stop)
        self.eos = None if params.ignore_eos else model.config.eos_token_id
        self.reason = "length"
        self.finished = False
        self.proposal = Proposal()
        self.proposed = self.accepted = 0
        self.pass_seconds: list[float] = []
        self.top_logprobs = top_logprobs
        """How many of the most likely ids each TokenGenerated lists (0: none)."""
        timed = tree is not None and tree.fixed is None and seeded_sampling(params)
        self.budget = tree if drafter is not None and not timed else None
        """Token trees' budget; None: the draft proposes chains (or there is no draft)."""
        self.modes = ChainOrTree() if self.budget is not None and self.budget.fixed is None else None
        """auto: chains and trees by turns, the faster lately keeping the run."""
        self.mode: Mode = "tree" if self.budget is not None else "chain"
        """How this sequence's rows in the next pass were drafted."""
        self.tree = DraftTree()
        self.tree_rows: TreeRows | None = None
        """The layout of this sequence's rows in the next pass when they are a tree."""
        self.tree_nodes = self.tree_passes = 0
        self.other_rows = 0
        """Rows the other sequences brought to the last pass (a tree's cost depends on the whole pass)."""

    @property
    def prefilled(self) -> bool:
        return self.caches is not None

    def allocate(self) -> list[KVCache]:
        cfg = self.model.config
        capacity = len(self.prompt_ids) + min(self.params.max_new_tokens, _FIRST_CAPACITY)
        self.caches = [KVCache.empty(cfg, capacity, self.model.dtype) for _ in range(cfg.n_layer)]
        return self.caches

    def adopt(self, leader: SequenceRun) -> None:
        """Start from a copy of the caches of a sequence that just prefilled the same prompt."""
        assert leader.caches is not None
        self.caches = [KVCache(c.k.clone(), c.v.clone()) for c in leader.caches]

    def next_rows(self) -> tuple[list[int], int, PassKind]:
        """(ids, first position, kind) this sequence feeds the next pass: its prompt, or its last token and
        whatever its draft proposes. The caches hold every position before the first."""
        if not self.prefilled:
            self.allocate()
            return self.prompt_ids, 0, "prefill"
        step = len(self.token_ids)
        room = self.params.max_new_tokens - step - 1  # a pass never yields more than is left
        self.proposal = Proposal()
        if self.modes is not None:
            self.mode = self.modes.choose()
        if self.mode == "tree":
            return self._tree_rows(step, room)
        if self.drafter is not None and room > 0:
            self.proposal = self.drafter.propose(self.seq, min(self.k.k, room), self.sampler)
        if self.proposal:
            self._emit_draft(step, self.proposal.tokens)
        return [self.seq[-1], *self.proposal.tokens], len(self.seq) - 1, "verify" if self.proposal else "decode"

    def _tree_rows(self, step: int, room: int) -> tuple[list[int], int, PassKind]:
        """The last token and a drafted tree of the size the budget chooses (maybe none)."""
        assert self.budget is not None and self.drafter is not None
        choice = self.budget.choose(self.other_rows, room)
        self.tree = DraftTree()
        if choice.nodes:
            self.tree = self.drafter.propose_tree(self.seq, choice, min(room, MAX_DEPTH), self.sampler)
            if isinstance(self.drafter, ModelDrafter):
                self.budget.record_draft(self.drafter.rounds, self.drafter.seconds)
        first = len(self.seq) - 1
        self.tree_rows = self.tree.rows(first) if self.tree else None
        if self.tree:
            self._emit_draft(step, self.tree.best_line(), len(self.tree))
        return [self.seq[-1], *self.tree.tokens], first, "verify" if self.tree else "decode"

    @property
    def logit_rows(self) -> int:
        """Rows of logits the pass must give back: one per drafted token, plus the next token's."""
        return 1 + len(self.proposal) + len(self.tree)

    def take(
        self, logits: Tensor, seconds: float, rows: int = 0, pass_seconds: float | None = None, timed: bool = True
    ) -> None:
        """The pass's logits for this sequence's last `logit_rows` rows: keep the tokens they yield. `rows`:
        all rows of the pass; `pass_seconds`: its time over the target's weights (no drafting); `timed`: False
        when the pass also prefilled (this or another sequence's prompt), so its time says nothing of drafts."""
        self.pass_seconds.append(seconds)
        timed = timed and bool(self.token_ids)  # this sequence's own prefill is no draft's either
        before = len(self.token_ids)
        own = seconds if pass_seconds is None else pass_seconds
        mine = 1 + len(self.proposal) + len(self.tree)
        self.other_rows = max(0, rows - mine)
        if self.budget is not None and timed:  # auto's chain passes time rows for the trees' cost line too
            self.budget.record_pass(max(rows, mine), own)
        if self.mode == "tree":
            self._take_tree(logits, seconds)
        else:
            self._take_chain(logits, seconds)
        if self.modes is not None and timed:
            self.modes.record(self.mode, len(self.token_ids) - before, seconds)

    def _take_chain(self, logits: Tensor, seconds: float) -> None:
        picked = verify(self.sampler, logits, self.proposal, self.seq)
        matched = len(picked) - 1
        self.proposed += len(self.proposal)
        self.accepted += matched
        self.k.update(len(self.proposal), matched)
        if self.drafter is not None:
            self.drafter.rollback(len(self.seq) + matched)
        self._keep(picked, [logits[i] for i in range(len(picked))], seconds)

    def _take_tree(self, logits: Tensor, seconds: float) -> None:
        assert self.budget is not None and self.drafter is not None
        tree = self.tree
        verdict = verify_tree(self.sampler, logits, tree, self.seq)
        if tree:
            self.budget.record_visits(verdict.visits)
            self.proposed += len(tree)
            self.accepted += len(verdict.kept)
            self.tree_nodes += len(tree)
            self.tree_passes += 1
            root = len(self.seq) - 1
            # Node k sits in slot root + 1 + k: the kept line moves up to follow the root.
            assert self.caches is not None
            compact(self.caches, root + 1, [root + 1 + k for k in verdict.kept])
            self.drafter.keep(tree, verdict.kept)
        rows_of = [0, *(k + 1 for k in verdict.kept)]
        self.tree, self.tree_rows = DraftTree(), None
        self._keep(verdict.picked, [logits[r] for r in rows_of], seconds)

    def _keep(self, picked: list[tuple[int, float]], rows: list[Tensor], seconds: float) -> None:
        """Append and stream the pass's tokens, up to the one that ends the sequence."""
        last = len(picked) - 1  # every token before the last is a drafted one verify kept
        for i, (row, (token, logprob)) in enumerate(zip(rows, picked, strict=True)):
            self.seq.append(token)
            top = self._top(row) if self.top_logprobs else ()
            if self._emit_token(token, logprob, seconds / len(picked), top, drafted=i < last):
                self.finished = True
                break

    @property
    def tree_summary(self) -> str:
        """The tree budget and its mean size, for Done (empty for chains)."""
        if self.budget is None:
            return ""
        mean = self.tree_nodes / self.tree_passes if self.tree_passes else 0.0
        chains = f", chains {self.modes.share('chain'):.0%} of passes" if self.modes is not None else ""
        return f"{self.budget.describe()}, {mean:.1f} nodes{chains}"

    def _top(self, row: Tensor) -> tuple[tuple[int, float], ...]:
        values, ids = torch.log_softmax(row.float(), -1).topk(self.top_logprobs)
        return tuple(zip(ids.tolist(), values.tolist(), strict=True))

    def _emit_token(
        self, token: int, logprob: float, seconds: float, top: tuple[tuple[int, float], ...] = (), drafted: bool = False
    ) -> bool:
        """Stream one token through the decoder and stop rules; True when the sequence ends with it."""
        stops, decoder = self.stops, self.decoder
        step = len(self.token_ids)
        self.token_ids.append(token)
        last = step == self.params.max_new_tokens - 1
        if token == self.eos:
            piece, hit = stops.feed(decoder.flush())
            self.reason = "eos"
        else:
            piece, hit = stops.feed(decoder.push(token) + (decoder.flush() if last else ""))
        if hit:
            self.reason = "stop"
        elif self.reason == "eos" or last:
            piece += stops.flush()
        self.text.append(piece)
        self.emit(TokenGenerated(self.generation, step, token, piece, logprob, seconds, self.index, top, drafted))
        return self.reason != "length" or last

    def _emit_draft(self, step: int, tokens: list[int], nodes: int = 0) -> None:
        """Show the guesses: their text after the last few tokens (byte-level BPE pieces join without a
        space rule, but a character may span tokens; an unfinished one is left out)."""
        context = self.token_ids[-4:]
        decode = self.model.decode
        text = decode(context + tokens)[len(decode(context)) :].replace("\ufffd", "")
        self.emit(Drafted(self.generation, step, tuple(tokens), text, self.index, nodes))

    def done(self, peak_rss: int, bytes_read: int) -> Done:
        timings = self.pass_seconds
        decode = sum(timings[1:])
        n = len(self.token_ids)
        return Done(
            self.generation,
            token_ids=tuple(self.token_ids),
            text="".join(self.text),
            prompt_tokens=len(self.prompt_ids),
            new_tokens=n,
            prefill_seconds=timings[0] if timings else 0.0,
            decode_seconds=decode,
            tokens_per_second=(n - 1) / decode if n > 1 and decode > 0 else n / max(timings[0], 1e-9),
            peak_rss=peak_rss,
            bytes_read=bytes_read,
            stop_reason=self.reason,
            passes=len(timings),
            draft_proposed=self.proposed,
            draft_accepted=self.accepted,
            draft_tree=self.tree_summary,
            sequence=self.index,
        )

    def cancelled(self) -> Cancelled:
        return Cancelled(self.generation, tuple(self.token_ids), "".join(self.text), len(self.token_ids), self.index)

    def close(self) -> None:
        if isinstance(self.drafter, ModelDrafter):
            self.drafter.close()
        self.drafter = None
