"""Which weights stay in RAM and which are streamed from disk, chosen once per model.

Every weight byte is needed once per token, so the plan keeps as many bytes resident as the budget
allows, as a fixed set (an LRU cache on a cyclic scan evicts exactly the block needed next). Streamed
blocks are spread evenly among resident ones so the prefetcher always has a block to read while resident
blocks compute. Two stream slots let one block compute while the next is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bloomtui.engine.io.reader import CHUNK_BYTES
from bloomtui.engine.plan.memory_guard import available_memory, limit_binds
from bloomtui.engine.weights.checkpoint import Checkpoint
from bloomtui.engine.weights.tensorfile import TensorRef
from bloomtui.errors import BudgetError
from bloomtui.sizes import format_size

STREAM_SLOTS = 2


def default_budget() -> int:
    """A safe share of the memory available now: 60%, keeping at least 1 GB for everything else; under a memory
    cgroup's limit (a container), where nothing else shares it, 75%, keeping 150 MB for the KV cache and scratch."""
    available = available_memory()
    if limit_binds():
        return max(256 * 1000**2, min(int(available * 0.75), available - 150 * 1000**2))
    return max(256 * 1000**2, min(int(available * 0.6), available - 1000**3))


@dataclass(frozen=True)
class ResidencyPlan:
    budget: int
    itemsize: int
    """Bytes per element in the compute dtype."""
    n_blocks: int
    block_bytes: int
    """RAM bytes of one block: float tensors in the compute dtype, quantised ones as stored."""
    head_bytes: int
    head_rows: int
    small_bytes: int
    resident_blocks: frozenset[int]
    head_resident: bool
    staging_bytes: int
    """Staging buffer for dtype conversion of streamed reads (0 when the checkpoint is already in the compute dtype)."""
    slot_extra: int = 0
    """Bytes a stream slot holds beyond a block: direct I/O reads page-aligned spans around the tensors."""

    @property
    def streamed_blocks(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.n_blocks) if i not in self.resident_blocks)

    @property
    def streams(self) -> bool:
        return bool(self.streamed_blocks) or not self.head_resident

    @property
    def slot_bytes(self) -> int:
        return self.block_bytes + self.slot_extra if self.streams else 0

    @property
    def head_chunk_rows(self) -> int:
        """Head rows streamed at once: as many as fit in a block's stream slot."""
        return max(1, self.block_bytes // (self.head_bytes // self.head_rows))

    @property
    def head_chunks(self) -> int:
        return 0 if self.head_resident else math.ceil(self.head_rows / self.head_chunk_rows)

    def pass_units(self) -> list[tuple[str, int]]:
        """What a pass streams, in order: ("block", i) for each streamed block, then ("head", c) per chunk."""
        units = [("block", i) for i in self.streamed_blocks]
        return units + [("head", c) for c in range(self.head_chunks)]

    def head_chunk_range(self, chunk: int) -> tuple[int, int]:
        rows = self.head_chunk_rows
        return chunk * rows, min(self.head_rows, (chunk + 1) * rows)

    @property
    def resident_bytes(self) -> int:
        head = self.head_bytes if self.head_resident else 0
        return self.small_bytes + len(self.resident_blocks) * self.block_bytes + head

    @property
    def buffer_bytes(self) -> int:
        return STREAM_SLOTS * self.slot_bytes + (self.staging_bytes if self.streams else 0)

    @property
    def total_bytes(self) -> int:
        return self.resident_bytes + self.buffer_bytes


def ram_dtype(ref: TensorRef, compute: torch.dtype) -> torch.dtype:
    """Floats are held in the compute dtype; quantised integers as stored."""
    return compute if ref.dtype.is_floating_point else ref.dtype


def streamed_refs(checkpoint: Checkpoint, plan: ResidencyPlan) -> list[TensorRef]:
    """Every stored tensor a pass reads from disk under the plan: streamed blocks, then the head if streamed."""
    refs = [ref for i in plan.streamed_blocks for ref in checkpoint.blocks[i].values()]
    return refs + ([] if plan.head_resident else list(checkpoint.head_refs))


def ram_bytes(ref: TensorRef, itemsize: int) -> int:
    """Bytes a stored tensor takes in RAM: floats in the compute dtype, quantised integers as stored."""
    return ref.numel * (itemsize if ref.dtype.is_floating_point else ref.dtype.itemsize)


def _staging_bytes(checkpoint: Checkpoint, itemsize: int) -> int:
    """Staging for dtype conversion of streamed reads: up to one read chunk, 0 without conversion."""
    refs = [*checkpoint.blocks[0].values(), *checkpoint.head_refs]
    if all(ram_bytes(ref, itemsize) == ref.nbytes for ref in refs):
        return 0
    return min(CHUNK_BYTES, max(ref.nbytes for ref in refs))


def _sizes(checkpoint: Checkpoint, itemsize: int) -> tuple[int, int, int]:
    """RAM bytes of one block (all blocks are alike), of the small tensors, and of the head."""
    return (
        sum(ram_bytes(ref, itemsize) for ref in checkpoint.blocks[0].values()),
        sum(ram_bytes(ref, itemsize) for ref in checkpoint.small.values()),
        sum(ram_bytes(ref, itemsize) for ref in checkpoint.head_refs),
    )


def minimum_budget(checkpoint: Checkpoint, itemsize: int, slot_extra: int = 0) -> int:
    """The smallest budget that can stream: small tensors, the stream slots (each a block and `slot_extra`)
    and the staging buffer."""
    block, small, _ = _sizes(checkpoint, itemsize)
    return small + STREAM_SLOTS * (block + slot_extra) + _staging_bytes(checkpoint, itemsize)


def budget_for(checkpoint: Checkpoint, itemsize: int, resident_blocks: int, head_resident: bool = True) -> int:
    """The budget whose plan keeps `resident_blocks` blocks (and the head, if asked) and streams the rest."""
    block, _, head = _sizes(checkpoint, itemsize)
    # Half a block of slack: rounding never drops a block, and no extra block fits.
    return minimum_budget(checkpoint, itemsize) + (head if head_resident else 0) + resident_blocks * block + block // 2


def plan_residency(checkpoint: Checkpoint, itemsize: int, budget: int, slot_extra: int = 0) -> ResidencyPlan:
    """Which blocks (and whether the head) stay resident under `budget`; `slot_extra`: bytes each stream slot
    needs beyond a block (direct I/O's aligned spans)."""
    n = checkpoint.n_blocks
    block, small, head = _sizes(checkpoint, itemsize)
    base = dict(
        budget=budget,
        itemsize=itemsize,
        n_blocks=n,
        block_bytes=block,
        head_bytes=head,
        head_rows=checkpoint.head.shape[0],
        small_bytes=small,
        staging_bytes=_staging_bytes(checkpoint, itemsize),
        slot_extra=slot_extra,
    )
    if small + n * block + head <= budget:
        return ResidencyPlan(resident_blocks=frozenset(range(n)), head_resident=True, **base)

    minimum = minimum_budget(checkpoint, itemsize, slot_extra)
    if budget < minimum:
        raise BudgetError(
            f"RAM budget {format_size(budget)} is below the {format_size(minimum)} this model needs "
            f"to stream ({STREAM_SLOTS} block buffers of {format_size(block + slot_extra)}, "
            f"{format_size(base['staging_bytes'])} for dtype conversion, small tensors)"
        )
    room = budget - minimum
    with_head = min(n, (room - head) // block) if room >= head else -1
    without_head = min(n, room // block)
    head_resident = with_head >= 0 and head + with_head * block >= without_head * block
    count = with_head if head_resident else without_head
    return ResidencyPlan(resident_blocks=_spread(n, count), head_resident=head_resident, **base)


def _spread(n: int, resident: int) -> frozenset[int]:
    """Choose `resident` of n blocks so that the streamed ones are evenly spaced."""
    streamed = n - resident
    if streamed <= 0:
        return frozenset(range(n))
    gaps = {int((j + 0.5) * n / streamed) for j in range(streamed)}
    return frozenset(i for i in range(n) if i not in gaps)
