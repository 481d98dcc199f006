"""Generation: prefill the prompt(s) in one pass over the weights, then one pass per new token (or per
verified group of drafted tokens), every running sequence riding every pass (batch.py).

`Engine.open` reads a checkpoint's resident set (open_model.py); `Engine.generate` and
`Engine.generate_many` run in any thread, report through an event sink, and stop within one block when
their cancel flag is set, leaving the engine ready for the next prompt.
"""

from __future__ import annotations

import threading
from contextlib import nullcontext

from bloomtui.engine.decode.batch import Batch, Ended, run_batch
from bloomtui.engine.decode.draft_spec import DraftSpec
from bloomtui.engine.decode.drafting import Drafter, ModelDrafter, PromptLookup, check_same_tokenizer
from bloomtui.engine.decode.sampling import SamplingParams
from bloomtui.engine.decode.scoring import Scored, score
from bloomtui.engine.decode.sequence import SequenceRun
from bloomtui.engine.events import Cancelled, Done, EventSink, LongPrompt, ignore
from bloomtui.engine.stream.open_model import OpenModel
from bloomtui.engine.weights.generation_config import context_warning
from bloomtui.errors import UsageError


class Engine(OpenModel):
    def generate(
        self,
        prompt: str,
        params: SamplingParams = SamplingParams(),  # noqa: B008 - frozen
        on_event: EventSink = ignore,
        cancel: threading.Event | None = None,
        draft: DraftSpec | None = None,
    ) -> Done | Cancelled:
        """Generate a continuation of `prompt`. Emits events; returns the final Done or Cancelled.

        With `draft`, tokens are proposed by a draft and verified several per pass (speculative.py): greedy
        ids are those without a draft, sampled ones follow the same distribution. Raises BloomtuiError
        (after emitting an Error event) for bad input; one run at a time."""
        return self.generate_many([prompt], [params], on_event, cancel, draft)[0]

    def generate_many(
        self,
        prompts: list[str],
        params: list[SamplingParams],
        on_event: EventSink = ignore,
        cancel: threading.Event | None = None,
        draft: DraftSpec | None = None,
        sequence_cancels: list[threading.Event] | None = None,
    ) -> list[Ended]:
        """Continue every prompt (prompts[i] with params[i]) in shared passes; sequence i's events carry
        `sequence=i` and it ends with its own Done or Cancelled as soon as it finishes. Each sequence gets the
        tokens it would get alone (to rounding: see batch.py). `cancel` stops them all; sequence_cancels[i]
        stops sequence i alone. Returns the results in prompt order."""
        if len(prompts) != len(params) or not prompts:
            raise UsageError("generate_many needs one SamplingParams per prompt, and at least one prompt")
        cancel = cancel or threading.Event()

        def body(generation: int) -> list[Ended]:
            if draft is not None and draft.model is not None:
                if draft.model is self:
                    raise UsageError("the draft model must be a separate engine")
                check_same_tokenizer(self, draft.model)
            ids = [self.encode(p) for p in prompts]
            for i, one in enumerate(ids):
                if not one:
                    raise UsageError("the prompt is empty" if len(ids) == 1 else f"prompt {i + 1} is empty")
            self._warn_long_prompts(prompts, ids, generation, on_event)
            seqs: list[SequenceRun] = []
            held = draft.model._lock if draft is not None and draft.model is not None else nullcontext()
            # Every pass yields at least one token per running sequence: that bounds the reads ahead (a sample
            # whose leader was cancelled prefills again later, and extends it: batch.py).
            passes_needed = max(p.max_new_tokens for p in params)
            ended: list[Ended] = []
            try:
                with held:
                    batch = None
                    while batch is None or batch.active:
                        # A new prefetcher each time a pass stopped part-way (all its riders cancelled).
                        with self.store.prefetcher(passes_needed, cancel) as prefetch:
                            passes = self.passes(generation, on_event, cancel, prefetch)
                            passes.rss()
                            if batch is None:
                                batch = Batch(self, passes, generation, on_event)
                                seqs = self._sequences(
                                    batch, ids, params, generation, on_event, cancel, draft, sequence_cancels
                                )
                            else:
                                batch.use(passes)
                            ended += run_batch(batch)
            finally:
                for seq in seqs:
                    seq.close()
            return sorted(ended, key=lambda r: r.sequence)

        return self.run_locked(on_event, body, emit_result=False)

    def _warn_long_prompts(
        self, prompts: list[str], ids: list[list[int]], generation: int, on_event: EventSink
    ) -> None:
        """A LongPrompt event for each distinct prompt past the training context (samples share theirs)."""
        context = self.config.training_context
        seen: set[str] = set()
        for i, (prompt, one) in enumerate(zip(prompts, ids, strict=True)):
            if prompt not in seen and (message := context_warning(len(one), context)):
                on_event(LongPrompt(generation, len(one), context, message, sequence=i))
            seen.add(prompt)

    def _sequences(
        self,
        batch: Batch,
        ids: list[list[int]],
        params: list[SamplingParams],
        generation: int,
        on_event: EventSink,
        cancel: threading.Event,
        draft: DraftSpec | None,
        sequence_cancels: list[threading.Event] | None,
    ) -> list[SequenceRun]:
        seqs = []
        for i, (one, p) in enumerate(zip(ids, params, strict=True)):
            drafter = self.make_drafter(draft, generation, cancel, len(one) + p.max_new_tokens)
            own = sequence_cancels[i] if sequence_cancels else None
            tree = draft.budget() if draft is not None else None
            tokens = draft.tokens if draft is not None else None
            seq = SequenceRun(self, i, one, p, generation, on_event, drafter, tokens, own, tree=tree)
            seqs.append(seq)
            batch.add(seq)
        return seqs

    def make_drafter(
        self, draft: DraftSpec | None, generation: int, cancel: threading.Event, max_len: int
    ) -> Drafter | None:
        """A sequence's own drafter (prompt lookup, or a draft model with its own caches), or None."""
        if draft is None:
            return None
        if draft.model is None:
            return PromptLookup()
        return ModelDrafter(draft.model, generation, cancel, max_len, self.config.vocab_size)

    def perplexity(
        self,
        text: str,
        context: int = 1024,
        on_event: EventSink = ignore,
        cancel: threading.Event | None = None,
        batch: int | None = None,
    ) -> Scored:
        """Perplexity of `text` in windows of `context` tokens, `batch` windows per pass (None: chosen from
        the memory; see scoring.py). Raises CancelRequested when cancelled, BloomtuiError (after an Error
        event) on bad input."""
        ids = self.encode(text)
        cancel = cancel or threading.Event()
        return self.run_locked(on_event, lambda gen: score(self, ids, context, gen, on_event, cancel, batch))
