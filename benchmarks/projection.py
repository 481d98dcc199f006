"""Seconds per token for BLOOM-176B, projected from per-block measurements at its real width.

B   = bytes of one block (bf16)                       E = bytes of the 250880 x 14336 embedding / LM head
k   = blocks the engine keeps resident under the RAM budget (bloomtui's own residency plan)
S   = (70 - k) * B + (E if the head is streamed else 0)          bytes read from disk per token
C   = 70 * c + E * c / B                                          compute per token (c: one block, 1 token;
                                                                  the head at the blocks' per-byte rate)
T   = max(S / bw, C)        reads overlap compute (the prefetcher's design point)
T_s = S / bw + C            no overlap at all (an upper bound)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

N_BLOCKS = 70
HIDDEN = 14336
N_HEAD = 112
VOCAB = 250880
ITEM = 2  # bf16
BLOCK_BYTES = (12 * HIDDEN * HIDDEN + 13 * HIDDEN) * ITEM
HEAD_BYTES = VOCAB * HIDDEN * ITEM
SEED_SECONDS_PER_TOKEN = 180.0  # "one token every 3 minutes" on an i5 11th gen, 16 GB, Samsung 980 PRO


@dataclass(frozen=True)
class Projection:
    budget: int
    resident_blocks: int
    head_resident: bool
    streamed_bytes: int
    read_s: float
    compute_s: float

    @property
    def overlapped_s(self) -> float:
        return max(self.read_s, self.compute_s)

    @property
    def serial_s(self) -> float:
        return self.read_s + self.compute_s


def residency(budget: int) -> tuple[int, bool]:
    """(resident blocks, head resident) from bloomtui's planner for a 176B-shaped checkpoint."""
    try:
        from bloomtui.engine.checkpoint import BLOCK_TENSORS, SMALL_TENSORS, Checkpoint, block_shapes
        from bloomtui.engine.config import BloomConfig
        from bloomtui.engine.residency import plan_residency
        from bloomtui.engine.tensorfile import TensorRef

        config = BloomConfig(hidden_size=HIDDEN, n_head=N_HEAD, n_layer=N_BLOCKS, vocab_size=VOCAB)
        shapes = block_shapes(config)
        nowhere = Path("/nonexistent")

        def ref(shape: tuple[int, ...]) -> TensorRef:
            return TensorRef(nowhere, 0, torch.bfloat16, shape)

        blocks = tuple({n: ref(shapes[n]) for n in BLOCK_TENSORS} for _ in range(N_BLOCKS))
        small = {n: ref((HIDDEN,)) for n in SMALL_TENSORS}
        emb = ref((VOCAB, HIDDEN))
        ckpt = Checkpoint(nowhere, config, "projection", (), blocks, small, emb, emb)
        plan = plan_residency(ckpt, ITEM, budget)
        return len(plan.resident_blocks), plan.head_resident
    except Exception:  # the planner moved or refused: fall back to its documented rule
        room = budget - 2 * BLOCK_BYTES
        if room < 0:
            return -1, False
        with_head = (room - HEAD_BYTES) // BLOCK_BYTES if room >= HEAD_BYTES else -1
        without = min(N_BLOCKS, room // BLOCK_BYTES)
        if with_head >= 0 and HEAD_BYTES + with_head * BLOCK_BYTES >= without * BLOCK_BYTES:
            return min(N_BLOCKS, with_head), True
        return without, False


def project(budget: int, bandwidth: float, block_compute_s: float) -> Projection | None:
    k, head_resident = residency(budget)
    if k < 0:
        return None
    streamed = (N_BLOCKS - k) * BLOCK_BYTES + (0 if head_resident else HEAD_BYTES)
    compute = N_BLOCKS * block_compute_s + HEAD_BYTES * block_compute_s / BLOCK_BYTES
    return Projection(budget, k, head_resident, streamed, streamed / bandwidth, compute)


def fmt_seconds(s: float) -> str:
    if math.isnan(s):
        return "n/a"
    return f"{s:.3g}"
