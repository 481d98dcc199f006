"""The generation loop: prefill the prompt in one pass over the weights, then one pass per new token.

`Engine.open` reads a checkpoint's resident set; `Engine.generate` runs in any thread, reports through an
event sink, and stops within one block when its cancel flag is set, leaving the engine ready for the next
prompt.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bloomtui.engine import cpu_share
from bloomtui.engine.checkpoint import Checkpoint
from bloomtui.engine.cpu_profile import cpu_profile
from bloomtui.engine.cpu_share import CpuShare
from bloomtui.engine.drafting import (
    AdaptiveK,
    Drafter,
    DraftSpec,
    ModelDrafter,
    PromptLookup,
    check_same_tokenizer,
    tokenizer_identity,
)
from bloomtui.engine.events import (
    Cancelled,
    Done,
    Drafted,
    Error,
    EventSink,
    LoadProgress,
    PhaseChanged,
    TokenGenerated,
    ignore,
)
from bloomtui.engine.generation_config import GenerationDefaults
from bloomtui.engine.hub import resolve_model
from bloomtui.engine.loader import WeightStore
from bloomtui.engine.memory_guard import fit_budget
from bloomtui.engine.model import Alibi, KVCache
from bloomtui.engine.passes import Passes
from bloomtui.engine.quant import int4_layout
from bloomtui.engine.read_choice import ReadChoice, choose_reads
from bloomtui.engine.residency import ResidencyPlan, default_budget, plan_residency
from bloomtui.engine.sampling import Sampler, SamplingParams
from bloomtui.engine.scoring import Scored, score
from bloomtui.engine.speculative import Proposal, verify
from bloomtui.engine.textstream import IncrementalDecoder, StopFilter
from bloomtui.errors import BloomtuiError, CancelRequested, CheckpointError, UsageError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class EngineOptions:
    ram_budget: int | None = None
    """Bytes of weights (and stream buffers) to hold in RAM; None means default_budget()."""
    dtype: str | None = None
    """Compute dtype, "float32" or "bfloat16"; None follows the checkpoint (fp16 is computed in fp32)."""
    threads: int | None = None
    """torch intra-op threads; None: torch's default, fewer while other programs hold cores (cpu_share.py)."""
    reads: str | None = None
    """How streamed weights are read: "direct", "cached", or None/"auto" to decide per model (read_choice.py)."""


def compute_dtype(stored: torch.dtype, requested: str | None) -> torch.dtype:
    if requested is not None:
        if requested not in DTYPES:
            raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {requested!r}")
        return DTYPES[requested]
    # fp16 overflows in late BLOOM blocks; fp32 holds fp16 values exactly.
    return torch.bfloat16 if stored == torch.bfloat16 else torch.float32


@dataclass(frozen=True)
class ModelPlan:
    """What opening a model would do: used by `bloomtui info` and before loading."""

    path: Path
    checkpoint: Checkpoint
    dtype: torch.dtype
    plan: ResidencyPlan
    budget_warning: str | None = None
    """Set when the asked budget was more than the machine can hold and was lowered (memory_guard.py)."""
    generation: GenerationDefaults = GenerationDefaults()
    """The model's recommended decoding settings (generation_config.json), for what the user leaves unset."""
    reads: ReadChoice = ReadChoice("", False, "not planned")
    """How streamed weights are read (direct I/O or the page cache), and why."""

    @classmethod
    def make(cls, model: str | Path, options: EngineOptions) -> ModelPlan:
        path = resolve_model(model)
        checkpoint = Checkpoint.open(path)
        check_int4_layout(checkpoint)
        dtype = compute_dtype(checkpoint.dtype, options.dtype)
        budget, warning = fit_budget(options.ram_budget) if options.ram_budget is not None else (default_budget(), None)
        plan = plan_residency(checkpoint, dtype.itemsize, budget)
        reads = choose_reads(checkpoint, plan, dtype, options.reads)
        return cls(path, checkpoint, dtype, plan, warning, GenerationDefaults.read(path), reads)


def check_int4_layout(checkpoint: Checkpoint) -> None:
    """int4 weights are stored in torch's packing for the CPU family that prepared them (see quant.py)."""
    scheme = checkpoint.scheme
    if scheme is not None and scheme.weights == "int4" and scheme.int4_layout != int4_layout().describe():
        raise CheckpointError(
            f"{checkpoint.folder}: its int4 weights were packed for another kind of CPU "
            f"({scheme.int4_layout.split('/')[1]}, here {int4_layout().describe().split('/')[1]}); "
            "run `bloomtui prepare` on this machine"
        )


def load_tokenizer(folder: Path):  # noqa: ANN201 - a transformers tokenizer
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise CheckpointError(f"{folder}: no tokenizer.json (BLOOM checkpoints ship one next to config.json)")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise CheckpointError(f"{folder}: cannot load the tokenizer ({type(exc).__name__}: {exc})") from None


class Engine:
    def __init__(self, model_plan: ModelPlan, tokenizer, store: WeightStore) -> None:  # noqa: ANN001
        self.model_plan = model_plan
        self.config = model_plan.checkpoint.config
        self.tokenizer = tokenizer
        self.store = store
        self.dtype = model_plan.dtype
        self._generation = 0
        self._lock = threading.Lock()
        self._tokenizer_identity: tuple[object, object] | None = None
        self.cpu_share: CpuShare | None = None
        """Sizes torch's thread team to the cores other programs leave (cpu_share.py); None with --threads."""

    def fit_threads(self) -> None:
        """Before a pass: as many compute threads as the cores other programs leave free."""
        if self.cpu_share is not None and (n := self.cpu_share.look()) != torch.get_num_threads():
            torch.set_num_threads(n)

    def tokenizer_identity(self) -> tuple[object, object]:
        """(vocabulary, merges), computed once: a draft's tokenizer must equal the target's."""
        if self._tokenizer_identity is None:
            self._tokenizer_identity = tokenizer_identity(self.tokenizer)
        return self._tokenizer_identity

    @property
    def upcast(self) -> bool:
        """Whether many-row passes multiply in fp32 tiles (see matmul.py)."""
        return multiplies_upcast(self.dtype)

    def passes(self, generation: int, on_event: EventSink, cancel: threading.Event, prefetch) -> Passes:  # noqa: ANN001
        one_row_linear = self.dtype == torch.bfloat16 and cpu_profile().one_row_linear
        return Passes(self.store, self.config, generation, on_event, cancel, prefetch, self.upcast, one_row_linear)

    def run_locked(self, on_event: EventSink, body):  # noqa: ANN001, ANN201
        """Run body(generation) as this engine's one run at a time, in inference mode; errors become an
        Error event (and are re-raised), anything else it returns is emitted as the final event."""
        with self._lock:
            self._generation += 1
            generation = self._generation
            try:
                with torch.inference_mode():
                    result = body(generation)
            except CancelRequested:
                raise
            except BloomtuiError as exc:
                on_event(Error(generation, exc.message))
                raise
            except Exception as exc:
                on_event(Error(generation, f"{type(exc).__name__}: {exc}"))
                raise
            on_event(result)
            return result

    @classmethod
    def open(
        cls,
        model: str | Path,
        options: EngineOptions = EngineOptions(),  # noqa: B008 - frozen, so sharing is safe
        on_event: EventSink = ignore,
        cancel: threading.Event | None = None,
    ) -> Engine:
        """Read the checkpoint's layout and the resident weights. Raises BloomtuiError on bad input."""
        quiet = cpu_share.default_threads()
        torch.set_num_threads(options.threads or quiet)  # the process's: an earlier model may have changed it
        model_plan = ModelPlan.make(model, options)
        tokenizer = load_tokenizer(model_plan.path)
        store = WeightStore(model_plan.checkpoint, model_plan.plan, model_plan.dtype, model_plan.reads)
        stop = cancel.is_set if cancel is not None else (lambda: False)
        try:
            store.load(lambda done, total, what: on_event(LoadProgress(0, done, total, what)), stop)
        except BaseException:
            store.close()
            raise
        engine = cls(model_plan, tokenizer, store)
        if not options.threads and cpu_share.supported():
            engine.cpu_share = CpuShare(quiet)
        return engine

    def close(self) -> None:
        self.store.close()

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def decode(self, ids: list[int] | tuple[int, ...]) -> str:
        return self.tokenizer.decode(list(ids))

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

        def body(generation: int) -> Done | Cancelled:
            run = _Run(self, generation, params, on_event, cancel or threading.Event())
            if draft is None or draft.model is None:
                return run.execute(prompt, draft)
            if draft.model is self:
                raise UsageError("the draft model must be a separate engine")
            check_same_tokenizer(self, draft.model)
            with draft.model._lock:
                return run.execute(prompt, draft)

        return self.run_locked(on_event, body)

    def perplexity(
        self,
        text: str,
        context: int = 1024,
        on_event: EventSink = ignore,
        cancel: threading.Event | None = None,
    ) -> Scored:
        """Perplexity of `text` in windows of `context` tokens (see scoring.py). Raises CancelRequested when
        cancelled, BloomtuiError (after an Error event) on bad input."""
        ids = self.encode(text)
        cancel = cancel or threading.Event()
        return self.run_locked(on_event, lambda gen: score(self, ids, context, gen, on_event, cancel))


def multiplies_upcast(dtype: torch.dtype) -> bool:
    """fp32 tiles for many rows unless the weights are bf16 on a CPU whose bf16 GEMM is fast."""
    return dtype != torch.bfloat16 or cpu_profile().upcast_bf16


def prefill_path(dtype: torch.dtype) -> str:
    """How many-row passes multiply, for `info`."""
    if dtype == torch.float32:
        return "float32 GEMM (int8/int4 matrices dequantised a tile at a time)"
    return cpu_profile().describe()


class _Run:
    """State of one generate() call: a prefill pass, then passes of 1 row (or 1 + K drafted rows)."""

    def __init__(
        self, engine: Engine, generation: int, params: SamplingParams, on_event: EventSink, cancel: threading.Event
    ) -> None:
        self.engine = engine
        self.generation = generation
        self.params = params
        self.emit = on_event
        self.cancel = cancel
        self.token_ids: list[int] = []
        self.text: list[str] = []
        self.decoder = IncrementalDecoder(engine.decode)
        self.stops = StopFilter(params.stop)
        self.eos = None if params.ignore_eos else engine.config.eos_token_id
        self.reason = "length"
        self.proposed = 0
        self.accepted = 0

    def _emit_token(self, token: int, logprob: float, seconds: float) -> bool:
        """Stream one token through the decoder and stop rules; True when the run ends with it."""
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
        self.emit(TokenGenerated(self.generation, step, token, piece, logprob, seconds))
        return self.reason != "length" or last

    def _emit_draft(self, step: int, tokens: list[int]) -> None:
        """Show the guesses: their text after the last few tokens (byte-level BPE pieces join without a
        space rule, but a character may span tokens; an unfinished one is left out)."""
        context = self.token_ids[-4:]
        decode = self.engine.decode
        text = decode(context + tokens)[len(decode(context)) :].replace("\ufffd", "")
        self.emit(Drafted(self.generation, step, tuple(tokens), text))

    def execute(self, prompt: str, draft: DraftSpec | None) -> Done | Cancelled:
        engine, params = self.engine, self.params
        prompt_ids = engine.encode(prompt)
        if not prompt_ids:
            raise UsageError("the prompt is empty")
        cfg, dtype = engine.config, engine.dtype
        max_len = len(prompt_ids) + params.max_new_tokens
        capacity = len(prompt_ids) + min(params.max_new_tokens, 256)  # grows as needed
        caches = [KVCache.empty(cfg, capacity, dtype) for _ in range(cfg.n_layer)]
        alibi = Alibi(cfg.n_head, dtype, capacity)
        sampler = Sampler(params)
        seq = list(prompt_ids)
        timings: list[float] = []
        n_passes = 0
        passes = None
        drafter: Drafter | None = None
        k = AdaptiveK(draft.tokens if draft else None)
        try:
            # Every pass yields at least one token, so max_new_tokens passes bound the reads ahead.
            with engine.store.prefetcher(params.max_new_tokens, self.cancel) as prefetch:
                passes = engine.passes(self.generation, self.emit, self.cancel, prefetch)
                passes.rss()
                if draft is not None:
                    drafter = (
                        PromptLookup()
                        if draft.model is None
                        else ModelDrafter(draft.model, self.generation, self.cancel, max_len, cfg.vocab_size)
                    )
                done = False
                while not done:
                    engine.fit_threads()
                    t0 = time.perf_counter()
                    step = len(self.token_ids)
                    proposal = Proposal()
                    if step == 0:
                        inputs, start, kind = prompt_ids, 0, "prefill"
                    else:
                        # The cache holds every position but the last token's, which this pass feeds.
                        start = len(seq) - 1
                        room = params.max_new_tokens - step - 1  # a pass never yields more than is left
                        if drafter and room > 0:
                            proposal = drafter.propose(seq, min(k.k, room), sampler)
                        if proposal:
                            self._emit_draft(step, proposal.tokens)
                        inputs = [seq[-1], *proposal.tokens]
                        kind = "verify" if proposal else "decode"
                    h = passes.hidden(inputs, start, caches, alibi, kind, step)
                    n_passes += 1
                    rows = 1 + len(proposal)
                    logits = passes.logits(h[-rows:], like_decode=kind == "verify")
                    self.emit(PhaseChanged(self.generation, "sampling", cfg.n_layer, cfg.n_layer))
                    picked = verify(sampler, logits, proposal, seq)
                    matched = len(picked) - 1
                    self.proposed += len(proposal)
                    self.accepted += matched
                    k.update(len(proposal), matched)
                    if drafter is not None:
                        drafter.rollback(len(seq) + matched)
                    timings.append(time.perf_counter() - t0)
                    for token, logprob in picked:
                        seq.append(token)
                        done = self._emit_token(token, logprob, timings[-1] / len(picked))
                        if done:
                            break
        except CancelRequested:
            return Cancelled(self.generation, tuple(self.token_ids), "".join(self.text), len(self.token_ids))
        finally:
            if isinstance(drafter, ModelDrafter):
                drafter.close()
        decode = sum(timings[1:])
        n = len(self.token_ids)
        return Done(
            self.generation,
            token_ids=tuple(self.token_ids),
            text="".join(self.text),
            prompt_tokens=len(prompt_ids),
            new_tokens=n,
            prefill_seconds=timings[0],
            decode_seconds=decode,
            tokens_per_second=(n - 1) / decode if n > 1 and decode > 0 else n / timings[0],
            peak_rss=passes.peak_rss,
            bytes_read=passes.bytes_read,
            stop_reason=self.reason,
            passes=n_passes,
            draft_proposed=self.proposed,
            draft_accepted=self.accepted,
        )
