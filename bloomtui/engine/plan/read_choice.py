"""How a run reads its streamed weights: past the page cache (direct I/O) or through it, decided per model.

Where the streamed set cannot stay in the page cache (the model does not fit in free memory beside our own:
every BLOOM-176B token), caching it only evicts what the next pass needs and the user's other programs,
and each byte read through the cache costs the cores a copy or a fault: direct I/O (direct.py) reads it by
DMA instead, unless a pass of this model was estimated clearly faster through the page cache from this disk's
readers measured beside compute (disk_profile.py). Where it can stay,
the page cache serves warm passes at memory speed, and tensors already stored in the compute dtype are used
from mapped pages with no copy at all (mapped.py); other tensors are read with pread and converted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from bloomtui.engine.io.direct import viewable
from bloomtui.engine.io.mapped import can_map
from bloomtui.engine.plan.machine import Machine
from bloomtui.engine.plan.residency import ResidencyPlan, ram_dtype, streamed_refs
from bloomtui.engine.weights.checkpoint import Checkpoint
from bloomtui.engine.weights.tensorfile import TensorRef
from bloomtui.errors import UsageError
from bloomtui.sizes import format_size

READ_MODES = ("auto", "direct", "cached")

PATHS = {
    "direct": "direct I/O (O_DIRECT into aligned buffers; compute uses them in place)",
    "direct-staged": "direct I/O (O_DIRECT through a staging buffer, converted to the compute dtype)",
    "mapped": "page cache, mapped (compute reads cached pages in place)",
    "buffered": "page cache, pread into buffers",
    "": "nothing streamed",
}


@dataclass(frozen=True)
class ReadChoice:
    path: str
    """A key of PATHS."""
    drop_cache: bool
    """Whether what is read through the page cache is dropped from it again (the model does not fit)."""
    reason: str
    refused: tuple[Path, ...] = ()
    """Streamed files whose filesystem refused O_DIRECT: read with pread into the same buffers."""

    @property
    def direct(self) -> bool:
        return self.path.startswith("direct")

    def direct_files(self, files: set[Path]) -> dict[Path, bool]:
        """Per streamed file, whether it is read with O_DIRECT."""
        return {path: self.direct and path not in self.refused for path in files}

    def describe(self) -> str:
        text = f"{PATHS[self.path]}: {self.reason}"
        if self.refused:
            text += f"; {len(self.refused)} file(s) refuse O_DIRECT and are read with pread"
        return text


NOTHING_STREAMED = ReadChoice("", False, "every weight is resident")


@dataclass(frozen=True)
class ReadMode:
    """The decision, before the residency is final: direct I/O or the page cache, and why."""

    direct: bool
    drop_cache: bool
    reason: str
    cached_path: str | None
    """The page-cache path ("mapped" or "buffered") for this streamed set; None where --reads direct skipped it."""

    def cached_instead(self, why: str) -> ReadMode:
        assert self.cached_path is not None, "--reads direct is refused, never turned into cached"
        return replace(self, direct=False, reason=f"{self.reason}; {why}")


def read_mode(
    checkpoint: Checkpoint, plan: ResidencyPlan, dtype: torch.dtype, requested: str | None, machine: Machine
) -> ReadMode | None:
    """How `checkpoint`'s streamed weights under `plan` are read: `requested` is "auto" (None), "direct" or
    "cached". None when nothing streams."""
    mode = requested or "auto"
    if mode not in READ_MODES:
        raise UsageError(f"--reads must be one of {', '.join(READ_MODES)}, got {requested!r}")
    refs = streamed_refs(checkpoint, plan)
    if not refs:
        return None
    available = machine.available_memory()
    need = checkpoint.total_file_bytes + plan.total_bytes
    fits = need <= available
    if mode != "auto":
        reason = f"--reads {mode}"
    elif fits:
        mode, reason = "cached", f"the model's files and budget ({format_size(need)}) fit in free memory"
    else:
        mode = "direct"
        reason = f"the model's files and budget ({format_size(need)}) exceed free memory ({format_size(available)})"
    files = {ref.path for ref in refs}
    forced_direct = mode == "direct" and requested not in (None, "auto")
    cached = None if forced_direct else _cached_path(refs, files, dtype, machine)
    if cached is not None and mode == "direct":
        largest = max(files, key=lambda path: path.stat().st_size)
        profile = machine.disk_profile(largest, cached)
        if profile is not None:
            streamed = sum(ref.nbytes for ref in refs)
            # Every weight is multiplied once a pass: the files' bytes are close enough (int8/int4 scales,
            # BLOOM's tied head counted once).
            computed = checkpoint.total_file_bytes
            reason += f"; {profile.describe(streamed, computed)}"
            if not profile.prefer_direct(streamed, computed):
                mode = "cached"
                reason += ", so through the page cache, dropped after use"
    return ReadMode(mode == "direct", not fits, reason, cached)


def read_choice(
    checkpoint: Checkpoint, plan: ResidencyPlan, dtype: torch.dtype, mode: ReadMode | None, machine: Machine
) -> ReadChoice:
    """The read path for the final `plan`: direct I/O probes each streamed file for O_DIRECT."""
    if mode is None:
        return NOTHING_STREAMED
    if not mode.direct:
        assert mode.cached_path is not None
        return ReadChoice(mode.cached_path, mode.drop_cache, mode.reason)
    refs = streamed_refs(checkpoint, plan)
    refused = tuple(sorted(path for path in {ref.path for ref in refs} if not machine.takes_direct(path)))
    in_place = all(ram_dtype(ref, dtype) == ref.dtype and viewable(ref) for ref in refs)
    return ReadChoice("direct" if in_place else "direct-staged", mode.drop_cache, mode.reason, refused)


def _cached_path(refs: list[TensorRef], files: set[Path], dtype: torch.dtype, machine: Machine) -> str:
    """The page-cache path for these streamed tensors: mapped where all can be used in place, else buffered."""
    mapped = all(can_map(ref, ram_dtype(ref, dtype)) for ref in refs) and machine.can_lease(files)
    return "mapped" if mapped else "buffered"
