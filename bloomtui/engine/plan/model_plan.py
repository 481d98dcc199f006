"""The plan of one model, made once: which file, which compute dtype, what stays in RAM and how the rest is read.

`plan_model` is the one function from (a model's name or folder, the user's options, this machine) to a frozen
`ModelPlan`. The loader builds its store from it, `bloomtui info` prints it, and the app checks budgets with it
before loading; nothing plans a model again after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bloomtui.engine.engine_options import ACTIVATIONS, EngineOptions
from bloomtui.engine.plan.machine import Machine
from bloomtui.engine.plan.read_choice import ReadChoice, read_choice, read_mode
from bloomtui.engine.plan.residency import ResidencyPlan, plan_residency
from bloomtui.engine.plan.slots import slot_extra
from bloomtui.engine.weights.checkpoint import Checkpoint
from bloomtui.engine.weights.config import INT4_ROWS
from bloomtui.engine.weights.generation_config import GenerationDefaults
from bloomtui.engine.weights.hub import resolve_model
from bloomtui.errors import BudgetError, UsageError
from bloomtui.sizes import format_size

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
THIS_MACHINE = Machine()


def compute_dtype(stored: torch.dtype, requested: str | None, recommended: str | None = None) -> torch.dtype:
    """--dtype, else the model's recommendation (its config's bloomtui.compute_dtype), else from the weights."""
    if requested is not None:
        if requested not in DTYPES:
            raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {requested!r}")
        return DTYPES[requested]
    if recommended is not None:
        return DTYPES[recommended]
    # fp16 overflows in late BLOOM blocks; fp32 holds fp16 values exactly.
    return torch.bfloat16 if stored == torch.bfloat16 else torch.float32


@dataclass(frozen=True)
class ModelPlan:
    """What opening a model does: read by the loader, by `bloomtui info` and by budget checks before loading."""

    path: Path
    checkpoint: Checkpoint
    dtype: torch.dtype
    plan: ResidencyPlan
    budget_warning: str | None = None
    """Set when the asked budget was more than the machine can hold and was lowered (memory_guard.py)."""
    generation: GenerationDefaults = GenerationDefaults()
    """The model's recommended decoding settings (generation_config.json), for what the user leaves unset."""
    reads: ReadChoice = ReadChoice("", False, "not planned")
    """How streamed weights are read (direct I/O or the page cache), and why."""
    activations: str = "auto"
    """How few-row int8/int4 multiplies take their inputs (EngineOptions.activations, checked)."""
    format_warning: str | None = None
    """Set when the folder's int4 weights are in an older layout, repacked as they load (slower)."""


def plan_model(model: str | Path, options: EngineOptions, machine: Machine = THIS_MACHINE) -> ModelPlan:
    """Resolve and read the checkpoint's layout (no weights), then decide everything loading it needs."""
    path = resolve_model(model)
    checkpoint = Checkpoint.open(path)
    activations = (options.activations or "auto").strip().lower()
    if activations not in ACTIVATIONS:
        raise UsageError(f"activations must be one of {', '.join(ACTIVATIONS)}, got {options.activations!r}")
    dtype = compute_dtype(checkpoint.dtype, options.dtype, checkpoint.config.recommended_dtype)
    budget, warning = machine.budget(options.ram_budget)
    residency, reads = plan_reads(checkpoint, dtype, budget, options.reads, machine)
    generation = GenerationDefaults.read(path)
    return ModelPlan(
        path, checkpoint, dtype, residency, warning, generation, reads, activations, int4_format_warning(checkpoint)
    )


def plan_reads(
    checkpoint: Checkpoint, dtype: torch.dtype, budget: int, requested: str | None, machine: Machine = THIS_MACHINE
) -> tuple[ResidencyPlan, ReadChoice]:
    """What stays resident under `budget`, and how the rest is read. The read path is decided on the plan that
    fills the budget with blocks; direct I/O's slots hold page-aligned spans, a little more than a block, so
    that plan is then made once more with the slots' extra bytes (a block may stream that was resident). Where
    the budget cannot hold them, `auto` reads through the page cache and a forced --reads direct is refused."""
    itemsize = dtype.itemsize
    residency = plan_residency(checkpoint, itemsize, budget)
    mode = read_mode(checkpoint, residency, dtype, requested, machine)
    if mode is not None and mode.direct and (extra := slot_extra(checkpoint, itemsize)):
        try:
            residency = plan_residency(checkpoint, itemsize, budget, extra)
        except BudgetError as exc:
            if requested == "direct":
                raise BudgetError(f"{exc.message}; direct reads need page-aligned buffers") from None
            why = f"direct reads' aligned buffers ({format_size(extra)} more a slot) exceed the budget"
            mode = mode.cached_instead(why)
    return residency, read_choice(checkpoint, residency, dtype, mode, machine)


def int4_format_warning(checkpoint: Checkpoint) -> str | None:
    """Folders prepared before format 2 hold int4 in torch's packing: the loader repacks each block as it
    loads (quant.from_torch_packing), which works on any CPU but costs time on every pass that reads one."""
    scheme = checkpoint.scheme
    if scheme is None or scheme.weights != "int4" or scheme.int4_layout == INT4_ROWS:
        return None
    return (
        f"{checkpoint.folder.name} holds int4 weights in an older bloomtui's layout (format 1): each block is "
        "repacked as it loads, which slows every pass that reads one; run `bloomtui prepare` on the original "
        "model again for the current layout"
    )
