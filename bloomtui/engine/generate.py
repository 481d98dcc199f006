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
from torch import Tensor

from bloomtui.engine.checkpoint import Checkpoint
from bloomtui.engine.events import (
    BlockDone,
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
from bloomtui.engine.loader import Prefetcher, WeightStore
from bloomtui.engine.memory_guard import fit_budget
from bloomtui.engine.model import KVCache, alibi_bias, block_forward, layer_norm, linear
from bloomtui.engine.residency import ResidencyPlan, default_budget, plan_residency
from bloomtui.engine.sampling import Sampler, SamplingParams
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
        dtype = compute_dtype(checkpoint.dtype, options.dtype)
        budget, warning = fit_budget(options.ram_budget) if options.ram_budget is not None else (default_budget(), None)
        return cls(path, checkpoint, dtype, plan_residency(checkpoint, dtype.itemsize, budget), warning)


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
        self._process = psutil.Process()
        self._lock = threading.Lock()

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
        with self._lock:
            self._generation += 1
            run = _Run(self, self._generation, params, on_event, cancel or threading.Event())
            try:
                with torch.inference_mode():
                    result = run.execute(prompt)
            except BloomtuiError as exc:
                on_event(Error(run.generation, exc.message))
                raise
            except Exception as exc:
                on_event(Error(run.generation, f"{type(exc).__name__}: {exc}"))
                raise
            on_event(result)
            return result


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
        self.bytes_read = 0
        self.peak_rss = 0
        self.token_ids: list[int] = []
        self.text: list[str] = []

    def _rss(self) -> int:
        rss = self.engine._process.memory_info().rss
        self.peak_rss = max(self.peak_rss, rss)
        return rss

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
        self._rss()
        timings: list[float] = []
        inputs, start = prompt_ids, 0
        reason = "length"
        try:
            with engine.store.prefetcher(params.max_new_tokens, self.cancel) as prefetch:
                for step in range(params.max_new_tokens):
                    t0 = time.perf_counter()
                    logits = self._forward(inputs, start, caches, alibi, prefetch, step)
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
            peak_rss=self.peak_rss,
            bytes_read=self.bytes_read,
            stop_reason=reason,
        )

    def _forward(
        self, ids: list[int], start: int, caches: list[KVCache], alibi: Tensor, prefetch: Prefetcher, step: int
    ) -> Tensor:
        """One pass over the weights for `ids` at positions start..; returns fp32 logits of the last one."""
        engine = self.engine
        store, cfg = engine.store, engine.config
        n, gen = cfg.n_layer, self.generation
        kind = "prefill" if step == 0 else "decode"
        x, nbytes = store.embed_rows(ids)
        self.bytes_read += nbytes
        small = store.small
        eps = cfg.layer_norm_epsilon
        x = layer_norm(x, small["word_embeddings_layernorm.weight"], small["word_embeddings_layernorm.bias"], eps)
        for i in range(n):
            fetched = None
            weights = store.blocks.get(i)
            if weights is None:
                if not prefetch.ready():
                    self.emit(PhaseChanged(gen, "reading", i, n))
                fetched = prefetch.take(("block", i))
                weights = fetched.weights
            self.emit(PhaseChanged(gen, "computing", i, n))
            t0 = time.perf_counter()
            x = block_forward(x, weights, caches[i], start, alibi, cfg)
            compute = time.perf_counter() - t0
            rss = self._rss()  # before release: a mapped block's pages count until then
            if fetched is not None:
                prefetch.release(fetched)
                self.bytes_read += fetched.nbytes
            self.emit(
                BlockDone(
                    gen,
                    index=i,
                    total=n,
                    kind=kind,
                    token_index=step,
                    resident=fetched is None,
                    bytes=fetched.nbytes if fetched else 0,
                    read_seconds=fetched.read_seconds if fetched else 0.0,
                    wait_seconds=fetched.wait_seconds if fetched else 0.0,
                    compute_seconds=compute,
                    rss=rss,
                )
            )
            if self.cancel.is_set():
                raise CancelRequested
        h = layer_norm(x[-1:], small["ln_f.weight"], small["ln_f.bias"], eps)  # (1, H)
        return self._logits(h, prefetch)

    def _logits(self, h: Tensor, prefetch: Prefetcher) -> Tensor:
        store = self.engine.store
        if store.head is not None:
            return linear(h, store.head)[0].float()
        logits = torch.empty(store.plan.head_rows, dtype=torch.float32)
        for chunk in range(store.plan.head_chunks):
            fetched = prefetch.take(("head", chunk))
            r0, r1 = store.head_chunk_range(chunk)
            logits[r0:r1] = linear(h, fetched.tensor)[0].float()
            self._rss()
            prefetch.release(fetched)
            self.bytes_read += fetched.nbytes
        return logits
