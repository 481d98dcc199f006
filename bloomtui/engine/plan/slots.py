"""What a direct-I/O stream slot holds: each streamed unit's tensors as the page-aligned file spans around them
(direct.py). The spans are a little longer than the tensors, so a direct slot needs a little more than a block;
the residency plan takes that from the budget before the loader carves slots to these layouts."""

from __future__ import annotations

from dataclasses import replace

from bloomtui.engine.io.direct import Piece, SpanLayout, span_layout
from bloomtui.engine.plan.residency import ResidencyPlan, plan_residency
from bloomtui.engine.weights.checkpoint import Checkpoint

Unit = tuple[str, int]
"""("block", index) or ("head", chunk): what a pass streams, in order (ResidencyPlan.pass_units)."""


def unit_pieces(checkpoint: Checkpoint, plan: ResidencyPlan, unit: Unit) -> list[Piece]:
    """The stored tensors (or head rows) one streamed unit of a pass reads."""
    if unit[0] == "block":
        return [Piece(name, ref) for name, ref in checkpoint.blocks[unit[1]].items()]
    r0, r1 = plan.head_chunk_range(unit[1])
    row, scale_row = checkpoint.head_row
    pieces = [Piece("head", checkpoint.head, r0 * row, (r1 - r0) * row)]
    if checkpoint.head_scales is None:
        return pieces
    return [*pieces, Piece("scales", checkpoint.head_scales, r0 * scale_row, (r1 - r0) * scale_row)]


def direct_layouts(checkpoint: Checkpoint, plan: ResidencyPlan) -> dict[Unit, SpanLayout]:
    """Each streamed unit's file spans, for direct I/O in place."""
    return {unit: span_layout(unit_pieces(checkpoint, plan, unit)) for unit in plan.pass_units()}


def slot_extra(checkpoint: Checkpoint, itemsize: int) -> int:
    """Bytes a direct slot needs beyond a block: page alignment of each span, and gaps merged into spans. Taken
    over every block and head chunk, so it holds for any residency (a head chunk's rows follow from the block
    size alone)."""
    any_plan = plan_residency(checkpoint, itemsize, budget=1 << 62)
    every = replace(any_plan, resident_blocks=frozenset(), head_resident=False)
    layouts = direct_layouts(checkpoint, every)
    return max(0, max((layout.nbytes for layout in layouts.values()), default=0) - every.block_bytes)
