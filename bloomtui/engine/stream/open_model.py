"""An open model: its plan (plan/model_plan.py), its resident weights and its tokenizer.

`OpenModel.open` plans the model once and reads its resident set. The loops that run passes over it (generation in
generate.py and batch.py, drafting, perplexity scoring) depend on this module, never the other way round.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bloomtui.engine.compute import cpu_share
from bloomtui.engine.compute.cpu_profile import cpu_profile, multiplies_upcast
from bloomtui.engine.compute.cpu_share import CpuShare
from bloomtui.engine.compute.native import chosen
from bloomtui.engine.engine_options import EngineOptions
from bloomtui.engine.events import Error, EventSink, LoadProgress, ignore
from bloomtui.engine.plan.model_plan import ModelPlan, plan_model
from bloomtui.engine.stream.loader import WeightStore
from bloomtui.engine.stream.passes import Passes
from bloomtui.engine.weights.tokenizer import Tokenizer
from bloomtui.errors import BloomtuiError, CancelRequested

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11


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
            self.store,
            self.config,
            generation,
            on_event,
            cancel,
            prefetch,
            self.upcast,
            one_row_linear,
            chosen(self.model_plan.activations),
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
        model_plan = plan_model(model, options)
        tokenizer = load_tokenizer(model_plan.path)
        store = WeightStore(model_plan)
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
            chosen(model_plan.activations)
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
