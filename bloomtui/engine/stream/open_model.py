"""An open model: its plan (layout, dtype, residency, reads), its resident weights and its tokenizer.

`OpenModel.open` reads a checkpoint's resident set. The loops that run passes over it (generation in
generate.py and batch.py, drafting, perplexity scoring) depend on this module, never the other way round.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bloomtui.engine.compute import cpu_share
from bloomtui.engine.compute.cpu_profile import cpu_profile
from bloomtui.engine.compute.cpu_share import CpuShare
from bloomtui.engine.compute.native import chosen
from bloomtui.engine.engine_options import EngineOptions
from bloomtui.engine.events import Error, EventSink, LoadProgress, ignore
from bloomtui.engine.plan.memory_guard import fit_budget
from bloomtui.engine.plan.read_choice import ReadChoice, choose_reads
from bloomtui.engine.plan.residency import ResidencyPlan, default_budget, plan_residency
from bloomtui.engine.stream.loader import WeightStore, slot_extra
from bloomtui.engine.stream.passes import Passes
from bloomtui.engine.weights.checkpoint import Checkpoint
from bloomtui.engine.weights.generation_config import GenerationDefaults
from bloomtui.engine.weights.hub import resolve_model
from bloomtui.engine.weights.quant import int4_layout
from bloomtui.engine.weights.tokenizer import Tokenizer
from bloomtui.errors import BloomtuiError, BudgetError, CancelRequested, CheckpointError, UsageError
from bloomtui.sizes import format_size

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def compute_dtype(stored: torch.dtype, requested: str | None, recommended: str | None = None) -> torch.dtype:
    """--dtype, else the model's recommendation (its config's bloomtui.compute_dtype), else from the weights."""
    if requested is not None:
        if requested not in DTYPES:
            raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {requested!r}")
        return DTYPES[requested]
    if recommended is not None:
        return DTYPES[recommended]
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
        dtype = compute_dtype(checkpoint.dtype, options.dtype, checkpoint.config.recommended_dtype)
        budget, warning = fit_budget(options.ram_budget) if options.ram_budget is not None else (default_budget(), None)
        plan = plan_residency(checkpoint, dtype.itemsize, budget)
        reads = choose_reads(checkpoint, plan, dtype, options.reads)
        if reads.path == "direct":
            plan, reads = _with_direct_slots(checkpoint, dtype, budget, plan, reads, options.reads)
        return cls(path, checkpoint, dtype, plan, warning, GenerationDefaults.read(path), reads)


def _with_direct_slots(
    checkpoint: Checkpoint, dtype: torch.dtype, budget: int, plan: ResidencyPlan, reads: ReadChoice, asked: str | None
) -> tuple[ResidencyPlan, ReadChoice]:
    """Direct I/O reads page-aligned spans into its slots, a little more than a block: the budget holds that
    too (a block may stream that was resident). Where the budget cannot, `auto` reads through the page cache
    and a forced --reads direct is refused."""
    extra = slot_extra(checkpoint, plan)
    if not extra:
        return plan, reads
    try:
        replanned = plan_residency(checkpoint, dtype.itemsize, budget, extra)
    except BudgetError as exc:
        if asked == "direct":
            raise BudgetError(f"{exc.message}; direct reads need page-aligned buffers") from None
        cached = choose_reads(checkpoint, plan, dtype, "cached")
        note = f"{reads.reason}; direct reads' aligned buffers ({format_size(extra)} more a slot) exceed the budget"
        return plan, replace(cached, reason=note)
    # More may stream now (a block, the head): their files are probed for O_DIRECT like the rest.
    again = choose_reads(checkpoint, replanned, dtype, "direct")
    return replanned, replace(again, reason=reads.reason, drop_cache=reads.drop_cache)


def check_int4_layout(checkpoint: Checkpoint) -> None:
    """int4 weights are stored in torch's packing for the CPU family that prepared them (see quant.py)."""
    scheme = checkpoint.scheme
    if scheme is not None and scheme.weights == "int4" and scheme.int4_layout != int4_layout().describe():
        raise CheckpointError(
            f"{checkpoint.folder}: its int4 weights were packed for another kind of CPU "
            f"({scheme.int4_layout.split('/')[1]}, here {int4_layout().describe().split('/')[1]}); "
            "run `bloomtui prepare` on this machine"
        )


def load_tokenizer(folder: Path) -> Tokenizer:
    return Tokenizer(folder)


class OpenModel:
    def __init__(self, model_plan: ModelPlan, tokenizer: Tokenizer, store: WeightStore) -> None:
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
            self._tokenizer_identity = self.tokenizer.identity()
        return self._tokenizer_identity

    @property
    def upcast(self) -> bool:
        """Whether many-row passes multiply in fp32 tiles (see matmul.py)."""
        return multiplies_upcast(self.dtype)

    def passes(self, generation: int, on_event: EventSink, cancel: threading.Event, prefetch) -> Passes:  # noqa: ANN001
        one_row_linear = self.dtype == torch.bfloat16 and cpu_profile().one_row_linear
        return Passes(
            self.store, self.config, generation, on_event, cancel, prefetch, self.upcast, one_row_linear, chosen()
        )

    def run_locked(self, on_event: EventSink, body, emit_result: bool = True):  # noqa: ANN001, ANN201
        """Run body(generation) as this engine's one run at a time, in inference mode; errors become an
        Error event (and are re-raised), anything else it returns is emitted as the final event unless the
        body emitted its results itself (each sequence of a batch ends with its own)."""
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
            if emit_result:
                on_event(result)
            return result

    @classmethod
    def open(
        cls,
        model: str | Path,
        options: EngineOptions = EngineOptions(),  # noqa: B008 - frozen, so sharing is safe
        on_event: EventSink = ignore,
        cancel: threading.Event | None = None,
    ) -> Self:
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
        # The first use on a machine measures the native kernels on ~100-200 MB of test matrices that the
        # allocator keeps: here, that memory counts in what the model holds once open, not in a run's growth.
        try:
            chosen()
        except BaseException:
            engine.close()
            raise
        return engine

    def close(self) -> None:
        self.store.close()

    def kv_bytes(self, positions: int) -> int:
        """Keys and values of every block for `positions` tokens, in the compute dtype (one sequence)."""
        cfg = self.config
        return 2 * cfg.n_layer * cfg.hidden_size * self.dtype.itemsize * positions

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: list[int] | tuple[int, ...]) -> str:
        return self.tokenizer.decode(ids)

    def token_name(self, token: int) -> str:
        """The vocabulary's own spelling of a token (byte-level BPE: bytes as printable characters)."""
        return self.tokenizer.token_name(token)


def multiplies_upcast(dtype: torch.dtype) -> bool:
    """fp32 tiles for many rows unless the weights are bf16 on a CPU whose bf16 GEMM is fast."""
    return dtype != torch.bfloat16 or cpu_profile().upcast_bf16


def prefill_path(dtype: torch.dtype) -> str:
    """How many-row passes multiply, for `info`."""
    if dtype == torch.float32:
        return "float32 GEMM (int8/int4 matrices dequantised a tile at a time)"
    return cpu_profile().describe()
