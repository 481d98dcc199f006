"""The options a model opens with, importable without torch (the app and the CLI build them before the
engine loads; open_model.py acts on them)."""

from __future__ import annotations

from dataclasses import dataclass

ACTIVATIONS = ("auto", "exact", "int8")
"""How few-row int8/int4 multiplies take their inputs: exact (fp32), quantised to int8 per block (faster,
llama.cpp's way), or auto: int8 where this machine measured it faster (compute/native.py)."""


@dataclass(frozen=True)
class EngineOptions:
    ram_budget: int | None = None
    """Bytes of weights (and stream buffers) to hold in RAM; None means default_budget()."""
    dtype: str | None = None
    """Compute dtype, "float32" or "bfloat16"; None follows the checkpoint (fp16 is computed in fp32)."""
    threads: int | None = None
    """torch intra-op threads; None: torch's default, fewer while other programs hold cores (cpu_share.py)."""
    reads: str | None = None
    """How streamed weights are read: "direct", "cached", or None/"auto" to decide per model (read_choice.py)."""
    activations: str | None = None
    """One of ACTIVATIONS for decoding with int8/int4 weights; None means "auto"."""
