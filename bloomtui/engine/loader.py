"""Weights in RAM: the resident set, read once, and a prefetcher that streams the rest.

The prefetcher is a thread that walks the streamed units (blocks, then LM-head chunks when the head is not
resident) in pass order, wrapping around to the first streamed block for the next token, filling one of
two slots while the other is being computed on.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from bloomtui.engine.checkpoint import BLOCK_TENSORS, Checkpoint
from bloomtui.engine.model import Weights
from bloomtui.engine.reader import CHUNK_BYTES, TensorReader
from bloomtui.engine.residency import STREAM_SLOTS, ResidencyPlan
from bloomtui.errors import CancelRequested

Unit = tuple[str, int]
"""("block", index) or ("head", chunk)."""
_POLL_SECONDS = 0.05


@dataclass
class Slot:
    """One stream buffer: a flat tensor and views of it shaped as a block's tensors."""

    flat: Tensor
    block: Weights

    @classmethod
    def allocate(cls, checkpoint: Checkpoint, elems: int, dtype: torch.dtype) -> Slot:
        flat = torch.empty(elems, dtype=dtype)
        views, start = {}, 0
        for name in BLOCK_TENSORS:
            ref = checkpoint.blocks[0][name]
            views[name] = flat[start : start + ref.numel].view(ref.shape)
            start += ref.numel
        return cls(flat, views)


@dataclass
class Fetched:
    unit: Unit
    slot: Slot
    tensor: Tensor | None
    """The head chunk, for ("head", c) units."""
    nbytes: int
    read_seconds: float
    wait_seconds: float = 0.0


class WeightStore:
    """Resident weights of one model in the compute dtype, plus what streaming needs."""

    def __init__(self, checkpoint: Checkpoint, plan: ResidencyPlan, dtype: torch.dtype, drop_cache: bool) -> None:
        self.checkpoint = checkpoint
        self.plan = plan
        self.dtype = dtype
        self.drop_cache = drop_cache
        self.reader = TensorReader(drop_cache=drop_cache, staging_bytes=plan.staging_bytes or CHUNK_BYTES)
        self.small: dict[str, Tensor] = {}
        self.blocks: dict[int, Weights] = {}
        self.head: Tensor | None = None
        self._slots: list[Slot] = []

    def load(self, on_progress: Callable[[int, int, str], None], should_stop: Callable[[], bool]) -> None:
        """Read the resident set into RAM, reporting (done bytes, total bytes, what)."""
        ckpt, plan = self.checkpoint, self.plan
        jobs: list[tuple[str, list]] = [("small tensors", list(ckpt.small.items()))]
        jobs += [(f"block {i}", list(ckpt.blocks[i].items())) for i in sorted(plan.resident_blocks)]
        if plan.head_resident:
            jobs.append(("LM head" if not ckpt.tied else "embeddings", [("head", ckpt.head)]))
        total = sum(ref.nbytes for _, refs in jobs for _, ref in refs)
        done = 0
        for what, refs in jobs:
            on_progress(done, total, what)
            tensors = {}
            for name, ref in refs:
                tensors[name] = torch.empty(ref.shape, dtype=self.dtype)
                done += self.reader.read(ref, tensors[name], should_stop)
            if what == "small tensors":
                self.small = tensors
            elif what.startswith("block"):
                self.blocks[int(what.split()[1])] = tensors
            else:
                self.head = tensors["head"]
        on_progress(done, total, "done")
        if plan.streams:
            self._slots = [Slot.allocate(ckpt, plan.slot_elems, self.dtype) for _ in range(STREAM_SLOTS)]

    def embed_rows(self, ids: list[int]) -> tuple[Tensor, int]:
        """Embedding rows for ids (T, H), and bytes read from disk for them."""
        if self.head is not None and self.checkpoint.tied:
            return self.head[torch.tensor(ids)], 0
        emb = self.checkpoint.embeddings
        hidden = emb.shape[1]
        rows = torch.empty((len(ids), hidden), dtype=self.dtype)
        nbytes = sum(self.reader.read_range(emb, i * hidden, hidden, rows[j]) for j, i in enumerate(ids))
        return rows, nbytes

    def pass_units(self) -> list[Unit]:
        units: list[Unit] = [("block", i) for i in self.plan.streamed_blocks]
        return units + [("head", c) for c in range(self.plan.head_chunks)]

    def head_chunk_range(self, chunk: int) -> tuple[int, int]:
        rows = self.plan.head_chunk_rows
        return chunk * rows, min(self.plan.head_rows, (chunk + 1) * rows)

    def prefetcher(self, passes: int, cancel: threading.Event) -> Prefetcher:
        return Prefetcher(self, passes, cancel)

    def close(self) -> None:
        self.reader.close()
        self.blocks.clear()
        self._slots.clear()
        self.head = None


class Prefetcher:
    """Reads streamed units ahead of compute on its own thread, for a known number of passes."""

    def __init__(self, store: WeightStore, passes: int, cancel: threading.Event) -> None:
        self._store = store
        self._units = store.pass_units()
        self._passes = passes
        self._cancel = cancel
        self._stop = threading.Event()
        self._free: queue.Queue[Slot] = queue.Queue()
        for slot in store._slots:
            self._free.put(slot)
        self._ready: queue.Queue[Fetched | BaseException] = queue.Queue()
        self._reader = TensorReader(drop_cache=store.drop_cache, staging_bytes=store.plan.staging_bytes or CHUNK_BYTES)
        self._thread = threading.Thread(target=self._run, name="bloomtui-prefetch", daemon=True)
        if self._units:
            self._thread.start()

    def _stopping(self) -> bool:
        return self._stop.is_set() or self._cancel.is_set()

    def _run(self) -> None:
        try:
            for n in range(self._passes * len(self._units)):
                slot = self._wait_free()
                if slot is None:
                    return
                unit = self._units[n % len(self._units)]
                start = time.perf_counter()
                nbytes, tensor = self._read(unit, slot)
                self._ready.put(Fetched(unit, slot, tensor, nbytes, time.perf_counter() - start))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._ready.put(exc)

    def _wait_free(self) -> Slot | None:
        while not self._stopping():
            try:
                return self._free.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue
        return None

    def _read(self, unit: Unit, slot: Slot) -> tuple[int, Tensor | None]:
        kind, index = unit
        ckpt, store = self._store.checkpoint, self._store
        if kind == "block":
            # Every block has the same shapes (checked on open), so the slot's views fit any of them.
            refs = ckpt.blocks[index]
            return sum(self._reader.read(refs[n], slot.block[n], self._stopping) for n in BLOCK_TENSORS), None
        r0, r1 = store.head_chunk_range(index)
        hidden = ckpt.head.shape[1]
        chunk = slot.flat[: (r1 - r0) * hidden].view(r1 - r0, hidden)
        return self._reader.read_range(ckpt.head, r0 * hidden, (r1 - r0) * hidden, chunk, self._stopping), chunk

    def ready(self) -> bool:
        return not self._ready.empty()

    def take(self, unit: Unit) -> Fetched:
        """Block until `unit` is in RAM (or raise CancelRequested); release() it after use."""
        start = time.perf_counter()
        while True:
            if self._cancel.is_set():
                raise CancelRequested
            try:
                item = self._ready.get(timeout=_POLL_SECONDS)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._ready.empty():
                    raise RuntimeError("prefetch thread ended early") from None
        if isinstance(item, BaseException):
            raise item
        assert item.unit == unit, f"prefetch order broken: wanted {unit}, got {item.unit}"
        item.wait_seconds = time.perf_counter() - start
        return item

    def release(self, fetched: Fetched) -> None:
        self._free.put(fetched.slot)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._reader.close()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
