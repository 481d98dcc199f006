"""Weights in RAM: the resident set, read once, and a prefetcher that streams the rest.

The prefetcher is a thread that walks the streamed units (blocks, then LM-head chunks when the head is not
resident) in pass order, wrapping around to the first streamed block for the next token, filling one of
two slots while the other is being computed on. A slot is a buffer the bytes are read into, or, when the
checkpoint already stores the compute dtype, a file mapping faulted in place (see mapped.py).

Files can change under an open model: each streamed unit's file is checked once before it is read, and a
mapped unit's lease before compute touches it (file_guard.py), so a run ends with an error naming the file.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from bloomtui.engine.checkpoint import BLOCK_TENSORS, Checkpoint
from bloomtui.engine.file_guard import FileGuard
from bloomtui.engine.mapped import FileMaps, can_map
from bloomtui.engine.memory_guard import MemoryGuard
from bloomtui.engine.model import Weights
from bloomtui.engine.reader import CHUNK_BYTES, TensorReader
from bloomtui.engine.residency import STREAM_SLOTS, ResidencyPlan
from bloomtui.engine.tensorfile import TensorRef
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
    weights: Weights | None
    """The block's tensors, for ("block", i) units."""
    tensor: Tensor | None
    """The head chunk, for ("head", c) units."""
    nbytes: int
    read_seconds: float
    slot: Slot | None
    """The buffer read into; None for a mapped unit."""
    mapped: list[tuple[TensorRef, int, int]]
    """(ref, file offset, bytes) faulted in for a mapped unit, released after use."""
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
        self._slots: list[Slot | None] = []
        self.guard = FileGuard(checkpoint.files)
        streamed = [ref for i in plan.streamed_blocks for ref in checkpoint.blocks[i].values()]
        streamed += [] if plan.head_resident else [checkpoint.head]
        self.streamed_files = {ref.path for ref in streamed}
        self.maps = FileMaps(drop_cache=drop_cache)
        self.zero_copy = (
            bool(streamed) and all(can_map(ref, dtype) for ref in streamed) and self.maps.can_lease(self.streamed_files)
        )

    def load(self, on_progress: Callable[[int, int, str], None], should_stop: Callable[[], bool]) -> None:
        """Read the resident set into RAM, reporting (done bytes, total bytes, what)."""
        ckpt, plan = self.checkpoint, self.plan
        jobs: list[tuple[str, list]] = [("small tensors", list(ckpt.small.items()))]
        jobs += [(f"block {i}", list(ckpt.blocks[i].items())) for i in sorted(plan.resident_blocks)]
        if plan.head_resident:
            jobs.append(("LM head" if not ckpt.tied else "embeddings", [("head", ckpt.head)]))
        total = sum(ref.nbytes for _, refs in jobs for _, ref in refs)
        done = 0
        memory = MemoryGuard()
        for what, refs in jobs:
            memory.check(total - done, what)  # before the system would swap, not after
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
            # Mapped units need no buffer: the slots then only bound how many are faulted in at once.
            self._slots = [
                None if self.zero_copy else Slot.allocate(ckpt, plan.slot_elems, self.dtype)
                for _ in range(STREAM_SLOTS)
            ]

    def embed_rows(self, ids: list[int]) -> tuple[Tensor, int]:
        """Embedding rows for ids (T, H), and bytes read from disk for them."""
        if self.head is not None and self.checkpoint.tied:
            return self.head[torch.tensor(ids)], 0
        emb = self.checkpoint.embeddings
        self.guard.check(emb.path)
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
        self.maps.close()


class Prefetcher:
    """Reads streamed units ahead of compute on its own thread, for a known number of passes."""

    def __init__(self, store: WeightStore, passes: int, cancel: threading.Event) -> None:
        self._store = store
        self._units = store.pass_units()
        self._passes = passes
        self._cancel = cancel
        self._stop = threading.Event()
        self._free: queue.Queue[Slot | None] = queue.Queue()
        for slot in store._slots:
            self._free.put(slot)
        self._ready: queue.Queue[Fetched | BaseException] = queue.Queue()
        self._reader = TensorReader(drop_cache=store.drop_cache, staging_bytes=store.plan.staging_bytes or CHUNK_BYTES)
        self._thread = threading.Thread(target=self._run, name="bloomtui-prefetch", daemon=True)
        self._files = {unit: self._unit_files(unit) for unit in self._units}
        if self._units:
            for path in sorted(store.streamed_files):
                store.guard.check(path)  # a model changed since the last run fails before any work
            if store.zero_copy:
                store.maps.hold_leases(store.streamed_files)
            self._thread.start()

    def _unit_files(self, unit: Unit) -> tuple[Path, ...]:
        ckpt = self._store.checkpoint
        refs = ckpt.blocks[unit[1]].values() if unit[0] == "block" else [ckpt.head]
        return tuple(sorted({ref.path for ref in refs}))

    def _stopping(self) -> bool:
        return self._stop.is_set() or self._cancel.is_set()

    def _run(self) -> None:
        try:
            for n in range(self._passes * len(self._units)):
                got = self._wait_free()
                if got is None:
                    return
                slot = got[0]
                unit = self._units[n % len(self._units)]
                for path in self._files[unit]:
                    self._store.guard.check(path)
                start = time.perf_counter()
                fetched = self._map(unit) if self._store.zero_copy else self._read(unit, slot)
                fetched.slot = slot
                fetched.read_seconds = time.perf_counter() - start
                self._ready.put(fetched)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._ready.put(exc)

    def _wait_free(self) -> tuple[Slot | None] | None:
        """Take a free slot (wrapped, as a mapped run's slots are None), or None when the run stops."""
        while not self._stopping():
            try:
                return (self._free.get(timeout=_POLL_SECONDS),)
            except queue.Empty:
                continue
        return None

    def _read(self, unit: Unit, slot: Slot) -> Fetched:
        kind, index = unit
        ckpt, store = self._store.checkpoint, self._store
        if kind == "block":
            # Every block has the same shapes (checked on open), so the slot's views fit any of them.
            refs = ckpt.blocks[index]
            nbytes = sum(self._reader.read(refs[n], slot.block[n], self._stopping) for n in BLOCK_TENSORS)
            return Fetched(unit, slot.block, None, nbytes, 0.0, slot, [])
        r0, r1 = store.head_chunk_range(index)
        hidden = ckpt.head.shape[1]
        chunk = slot.flat[: (r1 - r0) * hidden].view(r1 - r0, hidden)
        nbytes = self._reader.read_range(ckpt.head, r0 * hidden, (r1 - r0) * hidden, chunk, self._stopping)
        return Fetched(unit, None, chunk, nbytes, 0.0, slot, [])

    def _map(self, unit: Unit) -> Fetched:
        kind, index = unit
        ckpt, maps = self._store.checkpoint, self._store.maps
        if kind == "block":
            refs = ckpt.blocks[index]
            spans = [(refs[n], refs[n].offset, refs[n].nbytes) for n in BLOCK_TENSORS]
            weights: Weights | None = {n: maps.view(refs[n]) for n in BLOCK_TENSORS}
            tensor = None
        else:
            r0, r1 = self._store.head_chunk_range(index)
            head = ckpt.head
            row = head.shape[1]
            spans = [(head, head.offset + r0 * row * head.dtype.itemsize, (r1 - r0) * row * head.dtype.itemsize)]
            weights, tensor = None, maps.view(head, r0 * row, (r1 - r0) * row).view(r1 - r0, row)
        for ref, start, length in spans:
            maps.populate(ref, start, length, self._stopping)
        return Fetched(unit, weights, tensor, sum(length for _, _, length in spans), 0.0, None, spans)

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
        if item.mapped:
            try:
                self._store.maps.check_leases([ref for ref, _, _ in item.mapped])
            except BaseException:
                self.release(item)
                raise
        item.wait_seconds = time.perf_counter() - start
        return item

    def release(self, fetched: Fetched) -> None:
        for ref, start, length in fetched.mapped:
            self._store.maps.release(ref, start, length)
        self._free.put(fetched.slot)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._reader.close()
        self._store.maps.drop_leases()  # after the join: nothing touches mapped pages any more

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
