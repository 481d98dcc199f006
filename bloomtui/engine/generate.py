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

import psutil
import torch

from bloomtui.engine.checkpoint import Checkpoint
from bloomtui.engine.cpu_profile import cpu_profile
from bloomtui.engine.events import (
    Cancelled,
    Done,
    Error,
    EventSink,
    LoadProgress,
    PhaseChanged,
    TokenGenerated,
    ignore,
)
from bloomtui.engine.hub import resolve_model
from bloomtui.engine.loader import WeightStore
from bloomtui.engine.memory_guard import fit_budget
from bloomtui.engine.model import KVCache, alibi_bias
from bloomtui.engine.passes import Passes
from bloomtui.engine.quant import int4_layout
from bloomtui.engine.residency import ResidencyPlan, default_budget, plan_residency
from bloomtui.engine.sampling import Sampler, SamplingParams
from bloomtui.engine.scoring import Scored, score
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
    """torch intra-op threads; None keeps torch's default."""


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

    @classmethod
    def make(cls, model: str | Path, options: EngineOptions) -> ModelPlan:
        path = resolve_model(model)
        checkpoint = Checkpoint.open(path)
        check_int4_layout(checkpoint)
        dtype = compute_dtype(checkpoint.dtype, options.dtype)
        budget, warning = fit_budget(options.ram_budget) if options.ram_budget is not None else (default_budget(), None)
        return cls(path, checkpoint, dtype, plan_residency(checkpoint, dtype.itemsize, budget), warning)


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

    @property
    def upcast(self) -> bool:
        """Whether many-row passes multiply in fp32 tiles (see matmul.py)."""
        return multiplies_upcast(self.dtype)

    def passes(self, generation: int, on_event: EventSink, cancel: threading.Event, prefetch) -> Passes:  # noqa: ANN001
        return Passes(self.store, self.config, generation, on_event, cancel, prefetch, self.upcast)

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
        if options.threads:
            torch.set_num_threads(options.threads)
        model_plan = ModelPlan.make(model, options)
        tokenizer = load_tokenizer(model_plan.path)
        ckpt, plan = model_plan.checkpoint, model_plan.plan
        # Keep streamed bytes out of the page cache unless the whole model fits beside our own memory.
        drop_cache = ckpt.total_file_bytes + plan.total_bytes > psutil.virtual_memory().available
        store = WeightStore(ckpt, plan, model_plan.dtype, drop_cache)
        stop = cancel.is_set if cancel is not None else (lambda: False)
        try:
            store.load(lambda done, total, what: on_event(LoadProgress(0, done, total, what)), stop)
        except BaseException:
            store.close()
            raise
        return cls(model_plan, tokenizer, store)

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
    ) -> Done | Cancelled:
        """Generate a continuation of `prompt`. Emits events; returns the final Done or Cancelled.

        Raises BloomtuiError (after emitting an Error event) for bad input; one run at a time."""
        return self.run_locked(
            on_event,
            lambda generation: _Run(self, generation, params, on_event, cancel or threading.Event()).execute(prompt),
        )

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
    """State of one generate() call."""

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

    def execute(self, prompt: str) -> Done | Cancelled:
        engine, params = self.engine, self.params
        prompt_ids = engine.encode(prompt)
        if not prompt_ids:
            raise UsageError("the prompt is empty")
        cfg, dtype = engine.config, engine.dtype
        max_len = len(prompt_ids) + params.max_new_tokens
        capacity = len(prompt_ids) + min(params.max_new_tokens, 256)  # grows as needed
        caches = [KVCache.empty(cfg, capacity, dtype) for _ in range(cfg.n_layer)]
        alibi = alibi_bias(cfg.n_head, max_len, dtype)
        sampler = Sampler(params)
        decoder = IncrementalDecoder(engine.decode)
        stops = StopFilter(params.stop)
        eos = None if params.ignore_eos else cfg.eos_token_id
        seen = list(prompt_ids)
        timings: list[float] = []
        inputs, start = prompt_ids, 0
        reason = "length"
        passes = None
        try:
            with engine.store.prefetcher(params.max_new_tokens, self.cancel) as prefetch:
                passes = engine.passes(self.generation, self.emit, self.cancel, prefetch)
                passes.rss()
                for step in range(params.max_new_tokens):
                    t0 = time.perf_counter()
                    kind = "prefill" if step == 0 else "decode"
                    h = passes.hidden(inputs, start, caches, alibi, kind, step)
                    logits = passes.logits(h[-1:])[0]
                    self.emit(PhaseChanged(self.generation, "sampling", cfg.n_layer, cfg.n_layer))
                    token, logprob = sampler(logits, torch.tensor(seen))
                    timings.append(time.perf_counter() - t0)
                    self.token_ids.append(token)
                    seen.append(token)
                    last = step == params.max_new_tokens - 1
                    if token == eos:
                        piece, hit = stops.feed(decoder.flush())
                        reason = "eos"
                    else:
                        piece, hit = stops.feed(decoder.push(token) + (decoder.flush() if last else ""))
                    if hit:
                        reason = "stop"
                    elif reason == "eos" or last:
                        piece += stops.flush()
                    self.text.append(piece)
                    self.emit(TokenGenerated(self.generation, step, token, piece, logprob, timings[-1]))
                    if reason != "length":
                        break
                    start += len(inputs)
                    inputs = [token]
        except CancelRequested:
            return Cancelled(self.generation, tuple(self.token_ids), "".join(self.text), len(self.token_ids))
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
            stop_reason=reason,
        )
