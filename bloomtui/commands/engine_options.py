"""The engine options every local command takes (--ram-budget, --dtype, --threads, --reads, --activations)."""

from __future__ import annotations

import argparse

from bloomtui.errors import UsageError
from bloomtui.sizes import parse_size


def engine_options(args: argparse.Namespace):  # noqa: ANN201 - an EngineOptions (imports torch)
    from bloomtui.engine import EngineOptions

    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    budget = parse_size(args.ram_budget) if args.ram_budget is not None else None
    return EngineOptions(
        ram_budget=budget,
        dtype=args.dtype,
        threads=args.threads,
        reads=getattr(args, "reads", None),
        activations=getattr(args, "activations", None),
    )


def kv_warning(need: int, what: str, fix: str) -> str | None:
    """A warning when KV caches of `need` bytes (`what` holds them) would not fit in the free memory."""
    from bloomtui.engine.plan.memory_guard import available_memory, headroom, total_memory
    from bloomtui.sizes import format_size

    free = available_memory() - headroom(total_memory())
    if need <= free:
        return None
    return f"{what} need up to {format_size(need)} of KV cache, more than the {format_size(max(0, free))} free; {fix}"
