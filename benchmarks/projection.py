"""Seconds per token for BLOOM-176B, projected from per-block measurements at its real width (bf16, or a
`bloomtui prepare` int4/int8 copy, whose bytes come from the engine's own stored-tensor shapes).

B   = bytes of one block (bf16)                       E = bytes of the 250880 x 14336 embedding / LM head
k   = blocks the engine keeps resident under the RAM budget (bloomtui's own residency plan)
S   = (70 - k) * B + (E if the head is streamed else 0)          bytes read from disk per token
C   = 70 * c + E * c / B                                          compute per token (c: one block, 1 token;
                                                                  the head at the blocks' per-byte rate)
T   = max(S / bw, C)        reads overlap compute (the prefetcher's design point)
T_s = S / bw + C            no overlap at all (an upper bound)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bloomtui.engine.weights.config import INT4_ROWS

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


def _checkpoint(weights: str):  # noqa: ANN202 - a Checkpoint of BLOOM-176B's shape that has no files
    from bloomtui.engine.prepare import default_group_size
    from bloomtui.engine.weights.checkpoint import SMALL_TENSORS, Checkpoint, stored_block_tensors
    from bloomtui.engine.weights.config import BloomConfig, Scheme
    from bloomtui.engine.weights.tensorfile import TensorRef

    scheme = None
    if weights != "bf16":
        group = default_group_size(HIDDEN) if weights == "int4" else None
        scheme = Scheme(weights, group, INT4_ROWS if weights == "int4" else None)
    config = BloomConfig(hidden_size=HIDDEN, n_head=N_HEAD, n_layer=N_BLOCKS, vocab_size=VOCAB, scheme=scheme)
    nowhere = Path("/nonexistent")

    def ref(shape: tuple[int, ...], dtype: torch.dtype | None) -> TensorRef:
        return TensorRef(nowhere, 0, dtype or torch.bfloat16, shape)

    stored = stored_block_tensors(config)
    blocks = tuple({n: ref(shape, dtype) for n, (shape, dtype) in stored.items()} for _ in range(N_BLOCKS))
    small = {n: ref((HIDDEN,), None) for n in SMALL_TENSORS}
    if scheme is None:
        emb, scales = ref((VOCAB, HIDDEN), None), None
    else:  # prepared folders store the embedding/head as int8 rows with a bf16 scale each
        emb, scales = ref((VOCAB, HIDDEN), torch.int8), ref((VOCAB,), None)
    return Checkpoint(nowhere, config, "projection", (), blocks, small, emb, emb, scales, scales)


def sizes(weights: str = "bf16") -> tuple[int, int]:
    """(bytes read per streamed block, bytes of the embedding/LM head) of BLOOM-176B stored as `weights`."""
    ckpt = _checkpoint(weights)
    return ckpt.block_nbytes(), sum(ref.nbytes for ref in ckpt.head_refs)


def residency(budget: int, weights: str = "bf16") -> tuple[int, bool]:
    """(resident blocks, head resident) from bloomtui's planner for a 176B-shaped checkpoint."""
    block_bytes, head_bytes = sizes(weights) if weights != "bf16" else (BLOCK_BYTES, HEAD_BYTES)
    try:
        from bloomtui.engine.plan.residency import plan_residency

        plan = plan_residency(_checkpoint(weights), ITEM, budget)
        return len(plan.resident_blocks), plan.head_resident
    except Exception:  # the planner moved or refused: fall back to its documented rule
        room = budget - 2 * block_bytes
        if room < 0:
            return -1, False
        with_head = (room - head_bytes) // block_bytes if room >= head_bytes else -1
        without = min(N_BLOCKS, room // block_bytes)
        if with_head >= 0 and head_bytes + with_head * block_bytes >= without * block_bytes:
            return min(N_BLOCKS, with_head), True
        return without, False


def project(budget: int, bandwidth: float, block_compute_s: float, weights: str = "bf16") -> Projection | None:
    """`block_compute_s`: one block's 1-token compute measured in the same scheme; the head is charged at the
    blocks' per-byte rate."""
    k, head_resident = residency(budget, weights)
    if k < 0:
        return None
    block_bytes, head_bytes = sizes(weights) if weights != "bf16" else (BLOCK_BYTES, HEAD_BYTES)
    streamed = (N_BLOCKS - k) * block_bytes + (0 if head_resident else head_bytes)
    compute = N_BLOCKS * block_compute_s + head_bytes * block_compute_s / block_bytes
    return Projection(budget, k, head_resident, streamed, streamed / bandwidth, compute)


def prefill_flops(tokens: int, n_layer: int = N_BLOCKS, hidden: int = HIDDEN) -> float:
    """Prefill (many rows) is compute-bound: FLOPs = 2 * block params * T + attention (QK^T and PV over the causal
    pairs of T tokens: 2 * 2 * hidden * T(T+1)/2 per block). The head runs for the last row only."""
    params = n_layer * (12 * hidden * hidden + 13 * hidden)
    return 2.0 * params * tokens + n_layer * 2.0 * hidden * tokens * (tokens + 1)
