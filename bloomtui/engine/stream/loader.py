"""Weights in RAM: the resident set, read once, and a prefetcher that streams the rest.

The prefetcher is a thread that walks the streamed units (blocks, then LM-head chunks when the head is not
resident) in pass order, wrapping around to the first streamed block for the next token, filling one of
two slots while the other is being computed on. How a slot is filled is chosen per model (plan/read_choice.py):
direct I/O into an aligned buffer mirroring the unit's file spans (direct.py), a file mapping faulted in
place (mapped.py), or pread into a buffer shaped as a block's tensors.

Files can change under an open model: each streamed unit's file is checked once before it is read, and a
mapped unit's lease before compute touches it (file_guard.py), so a run ends with an error naming the file.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from bloomtui.engine.compute.matmul import QuantizedLinear, Weight
from bloomtui.engine.compute.model import Weights
from bloomtui.engine.io import hugepages
from bloomtui.engine.io.direct import DirectReader, SpanLayout, aligned_buffer
from bloomtui.engine.io.file_guard import FileGuard
from bloomtui.engine.io.mapped import FileMaps
from bloomtui.engine.io.reader import CHUNK_BYTES, TensorReader
from bloomtui.engine.plan.memory_guard import MemoryGuard
from bloomtui.engine.plan.model_plan import ModelPlan
from bloomtui.engine.plan.residency import STREAM_SLOTS, ram_dtype, streamed_refs
from bloomtui.engine.plan.slots import Unit, direct_layouts
from bloomtui.engine.weights.checkpoint import MATRICES, Checkpoint
from bloomtui.engine.weights.config import INT4_ROWS, Scheme
from bloomtui.engine.weights.quant import from_torch_packing
from bloomtui.engine.weights.tensorfile import TensorRef
from bloomtui.errors import CancelRequested

_POLL_SECONDS = 0.05


_ALIGN = 64


def assemble(raw: dict[str, Tensor], scheme: Scheme | None) -> Weights:
    """A block's stored tensors as the model reads them: quantised matrices become QuantizedLinear."""
    if scheme is None or not scheme.quantized:
        return dict(raw)
    weights: Weights = {name: t for name, t in raw.items() if not name.endswith(("qweight", "scales"))}
    bits = 8 if scheme.weights == "int8" else 4
    for name in MATRICES:
        base = name.removesuffix("weight")
        q, scales = raw[base + "qweight"], raw[base + "scales"]
        shape = (q.shape[0], q.shape[1] * (2 if bits == 4 else 1))
        if bits == 4 and scheme.int4_layout != INT4_ROWS:  # format 1: plan/model_plan.py warns that it costs
            q, scales = from_torch_packing(q, scales, shape[1], scheme.int4_layout or "")
        weights[name] = QuantizedLinear(bits, q, scales, scheme.group_size or 0, shape)
    return weights


def head_rows(q: Tensor, scales: Tensor | None) -> Weight:
    """An embedding/head matrix (or rows of it) as held: plain, int8 rows with a scale each, or int4 rows (codes
    [rows, hidden/2]) with their (scale, zero) pairs (any shape holding [rows, groups, 2])."""
    if scales is None:
        return q
    rows = q.shape[0]
    if q.dtype == torch.uint8:
        pairs = scales.reshape(rows, -1, 2)
        hidden = 2 * q.shape[1]
        return QuantizedLinear(4, q, pairs, hidden // pairs.shape[1], (rows, hidden))
    return QuantizedLinear(8, q, scales.reshape(rows), 0, tuple(q.shape))


class Slot:
    """One stream buffer: raw bytes, carved into views shaped as a block's stored tensors."""

    def __init__(self, checkpoint: Checkpoint, nbytes: int, dtype: torch.dtype) -> None:
        refs = checkpoint.blocks[0]
        self.flat = hugepages.empty((nbytes + _ALIGN * (len(refs) + 2),), torch.uint8)
        self._dtype = dtype
        self.raw: dict[str, Tensor] = {}
        start = 0
        for name, ref in refs.items():
            self.raw[name], start = self._carve(start, ref.shape, ram_dtype(ref, dtype))
        self.block = assemble(self.raw, checkpoint.scheme)

    def _carve(self, start: int, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[Tensor, int]:
        start = -(-start // _ALIGN) * _ALIGN
        n = math.prod(shape) * dtype.itemsize
        return self.flat[start : start + n].view(dtype).view(shape), start + n

    def head_chunk(self, rows: int, head: TensorRef, scales: TensorRef | None) -> tuple[Tensor, Tensor | None]:
        """Views for `rows` rows of the head (and their scales) at the start of the buffer."""
        matrix, end = self._carve(0, (rows, head.shape[1]), ram_dtype(head, self._dtype))
        return matrix, (None if scales is None else self._carve(end, (rows, *scales.shape[1:]), self._dtype)[0])


@dataclass
class Fetched:
    unit: Unit
    weights: Weights | None
    """The block's tensors, for ("block", i) units."""
    tensor: Weight | None
    """The head chunk, for ("head", c) units."""
    nbytes: int
    read_seconds: float
    slot: Slot | Tensor | None
    """The buffer read into (a span buffer for direct I/O in place); None for a mapped unit."""
    mapped: list[tuple[TensorRef, int, int]]
    """(ref, file offset, bytes) faulted in for a mapped unit, released after use."""
    wait_seconds: float = 0.0


class WeightStore:
    """Resident weights of one model in the compute dtype, plus what streaming needs."""

    def __init__(self, model_plan: ModelPlan) -> None:
        checkpoint, plan, reads = model_plan.checkpoint, model_plan.plan, model_plan.reads
        self.checkpoint = checkpoint
        self.plan = plan
        self.dtype = model_plan.dtype
        self.reads = reads
        self.drop_cache = reads.drop_cache
        self.small: dict[str, Tensor] = {}
        self.blocks: dict[int, Weights] = {}
        self.head: Weight | None = None
        self._embedding_rows: tuple[Tensor, Tensor | None] | None = None
        self._slots: list[Slot | Tensor | None] = []
        self.guard = FileGuard(checkpoint.files)
        self.streamed_files = {ref.path for ref in streamed_refs(checkpoint, plan)}
        self.direct_files = reads.direct_files(self.streamed_files)
        self.reader = self.new_reader()
        self.maps = FileMaps(drop_cache=self.drop_cache)
        self.zero_copy = reads.path == "mapped"
        """Streamed units are used from file mappings (mapped.py)."""
        self.layouts: dict[Unit, SpanLayout] = direct_layouts(checkpoint, plan) if reads.path == "direct" else {}
        """Direct I/O in place: each streamed unit's file spans, read into an aligned slot (direct.py)."""

    def new_reader(self) -> TensorReader:
        staging = self.plan.staging_bytes or CHUNK_BYTES
        return TensorReader(drop_cache=self.drop_cache, staging_bytes=staging, direct_files=self.direct_files)

    def load(self, on_progress: Callable[[int, int, str], None], should_stop: Callable[[], bool]) -> None:
        """Read the resident set into RAM, reporting (done bytes, total bytes, what)."""
        ckpt, plan = self.checkpoint, self.plan
        jobs: list[tuple[str, list]] = [("small tensors", list(ckpt.small.items()))]
        jobs += [(f"block {i}", list(ckpt.blocks[i].items())) for i in sorted(plan.resident_blocks)]
        if plan.head_resident:
            head = [("head", ckpt.head)] + ([("scales", ckpt.head_scales)] if ckpt.head_scales else [])
            jobs.append(("LM head" if not ckpt.tied else "embeddings", head))
        total = sum(ref.nbytes for _, refs in jobs for _, ref in refs)
        done = 0
        memory = MemoryGuard()
        for what, refs in jobs:
            memory.check(total - done, what)  # before the system would swap, not after
            on_progress(done, total, what)
            tensors = {}
            for name, ref in refs:
                tensors[name] = hugepages.empty(ref.shape, ram_dtype(ref, self.dtype))
                done += self.reader.read(ref, tensors[name], should_stop)
            if what == "small tensors":
                self.small = tensors
            elif what.startswith("block"):
                self.blocks[int(what.split()[1])] = assemble(tensors, ckpt.scheme)
            else:
                self.head = head_rows(tensors["head"], tensors.get("scales"))
                if ckpt.tied:
                    self._embedding_rows = (tensors["head"], tensors.get("scales"))
        on_progress(done, total, "done")
        self.reader.release_staging()  # the prefetcher has its own; embedding rows need a page or two
        if plan.streams:
            # Mapped units need no buffer: the slots then only bound how many are faulted in at once.
            self._slots = [self._new_slot() for _ in range(STREAM_SLOTS)]

    def _new_slot(self) -> Slot | Tensor | None:
        if self.zero_copy:
            return None
        if self.layouts:  # sized for the largest unit's spans: a block, or a head chunk with its padding
            return aligned_buffer(max(layout.nbytes for layout in self.layouts.values()))
        return Slot(self.checkpoint, self.plan.slot_bytes, self.dtype)

    def embed_rows(self, ids: list[int]) -> tuple[Tensor, int]:
        """Embedding rows for ids (T, H) in the compute dtype, and bytes read from disk for them."""
        index = torch.tensor(ids)
        nbytes = 0
        if self._embedding_rows is not None:
            matrix, scales = self._embedding_rows
            rows, scale_rows = matrix[index], (None if scales is None else scales[index])
        else:
            emb, scale_ref = self.checkpoint.embeddings, self.checkpoint.embedding_scales
            self.guard.check(emb.path)
            row, scale_row = self.checkpoint.head_row
            rows = torch.empty((len(ids), row), dtype=ram_dtype(emb, self.dtype))
            nbytes = sum(self.reader.read_range(emb, i * row, row, rows[j]) for j, i in enumerate(ids))
            scale_rows = None
            if scale_ref is not None:
                scale_rows = torch.empty((len(ids), scale_row), dtype=self.dtype)
                reads = (
                    self.reader.read_range(scale_ref, i * scale_row, scale_row, scale_rows[j])
                    for j, i in enumerate(ids)
                )
                nbytes += sum(reads)
        weight = head_rows(rows, scale_rows)
        if isinstance(weight, QuantizedLinear):
            return weight.dequantize_rows(0, len(ids), self.dtype), nbytes
        return weight, nbytes

    def pass_units(self) -> list[Unit]:
        return self.plan.pass_units()

    def head_chunk_range(self, chunk: int) -> tuple[int, int]:
        return self.plan.head_chunk_range(chunk)

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
        self._free: queue.Queue[Slot | Tensor | None] = queue.Queue()
        for slot in store._slots:
            self._free.put(slot)
        self._ready: queue.Queue[Fetched | BaseException] = queue.Queue()
        self._reader = store.new_reader()
        self._direct = (
            DirectReader(store.direct_files, drop_cache=store.drop_cache) if store.layouts and self._units else None
        )
        self._thread = threading.Thread(target=self._run, name="bloomtui-prefetch", daemon=True)
        self._plan_lock = threading.Lock()
        self._n = 0
        """Units handed to reading so far, over all passes."""
        self._reading = bool(self._units)
        self._files = {unit: self._unit_files(unit) for unit in self._units}
        if self._units:
            for path in sorted(store.streamed_files):
                store.guard.check(path)  # a model changed since the last run fails before any work
            if store.zero_copy:
                store.maps.hold_leases(store.streamed_files)
            self._thread.start()

    def _unit_files(self, unit: Unit) -> tuple[Path, ...]:
        ckpt = self._store.checkpoint
        refs = ckpt.blocks[unit[1]].values() if unit[0] == "block" else ckpt.head_refs
        return tuple(sorted({ref.path for ref in refs}))

    def _stopping(self) -> bool:
        return self._stop.is_set() or self._cancel.is_set()

    def ensure(self, passes: int) -> None:
        """Read ahead for `passes` passes in all (more than planned: a sequence of a batch prefills again, see
        batch.py); the reading thread goes on, or starts again if it had finished."""
        with self._plan_lock:
            if passes <= self._passes:
                return
            self._passes = passes
            if not self._reading and self._units and not self._stopping():
                self._reading = True
                self._thread = threading.Thread(target=self._run, name="bloomtui-prefetch", daemon=True)
                self._thread.start()

    def _next_unit(self) -> int | None:
        """The index of the next unit to read (counting over passes), or None when the planned passes are read."""
        with self._plan_lock:
            if self._n >= self._passes * len(self._units):
                self._reading = False
                return None
            self._n += 1
            return self._n - 1

    def _run(self) -> None:
        try:
            while (n := self._next_unit()) is not None:
                got = self._wait_free()
                if got is None:
                    return
                slot = got[0]
                unit = self._units[n % len(self._units)]
                for path in self._files[unit]:
                    self._store.guard.check(path)
                start = time.perf_counter()
                if self._store.zero_copy:
                    fetched = self._map(unit)
                elif self._direct is not None:
                    fetched = self._read_spans(unit, slot)
                else:
                    fetched = self._read(unit, slot)
                fetched.slot = slot
                fetched.read_seconds = time.perf_counter() - start
                self._ready.put(fetched)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._ready.put(exc)

    def _wait_free(self) -> tuple[Slot | Tensor | None] | None:
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
            nbytes = sum(self._reader.read(ref, slot.raw[n], self._stopping) for n, ref in refs.items())
            return Fetched(unit, slot.block, None, nbytes, 0.0, slot, [])
        r0, r1 = store.head_chunk_range(index)
        row, scale_row = ckpt.head_row
        chunk, scales = slot.head_chunk(r1 - r0, ckpt.head, ckpt.head_scales)
        nbytes = self._reader.read_range(ckpt.head, r0 * row, (r1 - r0) * row, chunk, self._stopping)
        if scales is not None:
            count = (r1 - r0) * scale_row
            nbytes += self._reader.read_range(ckpt.head_scales, r0 * scale_row, count, scales, self._stopping)
        return Fetched(unit, None, head_rows(chunk, scales), nbytes, 0.0, slot, [])

    def _read_spans(self, unit: Unit, buffer: Tensor) -> Fetched:
        assert self._direct is not None
        layout = self._store.layouts[unit]
        nbytes = self._direct.read_spans(layout.spans, buffer, self._stopping)
        views = layout.views(buffer)
        if unit[0] == "block":
            return Fetched(unit, assemble(views, self._store.checkpoint.scheme), None, nbytes, 0.0, buffer, [])
        r0, r1 = self._store.head_chunk_range(unit[1])
        matrix = views["head"].view(r1 - r0, -1)
        return Fetched(unit, None, head_rows(matrix, views.get("scales")), nbytes, 0.0, buffer, [])

    def _map(self, unit: Unit) -> Fetched:
        kind, index = unit
        ckpt, maps = self._store.checkpoint, self._store.maps
        tensor: Weight | None = None
        if kind == "block":
            refs = ckpt.blocks[index]
            spans = [(ref, ref.offset, ref.nbytes) for ref in refs.values()]
            weights: Weights | None = assemble({n: maps.view(ref) for n, ref in refs.items()}, ckpt.scheme)
        else:
            r0, r1 = self._store.head_chunk_range(index)
            head, scales = ckpt.head, ckpt.head_scales
            row, scale_row = ckpt.head_row
            spans = [(head, head.offset + r0 * row * head.dtype.itemsize, (r1 - r0) * row * head.dtype.itemsize)]
            matrix = maps.view(head, r0 * row, (r1 - r0) * row).view(r1 - r0, row)
            scale_rows = None
            if scales is not None:
                item = scales.dtype.itemsize * scale_row
                spans.append((scales, scales.offset + r0 * item, (r1 - r0) * item))
                scale_rows = maps.view(scales, r0 * scale_row, (r1 - r0) * scale_row)
            weights, tensor = None, head_rows(matrix, scale_rows)
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
        if self._direct is not None:
            self._direct.close()
        self._store.maps.drop_leases()  # after the join: nothing touches mapped pages any more

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
