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

from dataclasses import dataclass
from pathlib import Path

import torch

from bloomtui.engine.io.direct import probe_direct, viewable
from bloomtui.engine.io.mapped import FileMaps, can_map
from bloomtui.engine.plan.disk_profile import disk_profile
from bloomtui.engine.plan.memory_guard import available_memory
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


def choose_reads(checkpoint: Checkpoint, plan: ResidencyPlan, dtype: torch.dtype, requested: str | None) -> ReadChoice:
    """The read path for streaming `checkpoint` under `plan`; `requested` is "auto" (None), "direct" or "cached"."""
    mode = requested or "auto"
    if mode not in READ_MODES:
        raise UsageError(f"--reads must be one of {', '.join(READ_MODES)}, got {requested!r}")
    refs = streamed_refs(checkpoint, plan)
    if not refs:
        return ReadChoice("", False, "every weight is resident")
    available = available_memory()
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
    cached = None if mode == "direct" and requested not in (None, "auto") else _cached_reader(refs, files, dtype)
    if cached is not None and mode == "direct":
        largest = max(files, key=lambda path: path.stat().st_size)
        profile = disk_profile(largest, cached)
        if profile is not None:
            streamed = sum(ref.nbytes for ref in refs)
            # Every weight is multiplied once a pass: the files' bytes are close enough (int8/int4 scales,
            # BLOOM's tied head counted once).
            computed = checkpoint.total_file_bytes
            reason += f"; {profile.describe(streamed, computed)}"
            if not profile.prefer_direct(streamed, computed):
                mode = "cached"
                reason += ", so through the page cache, dropped after use"
    if mode == "direct":
        refused = tuple(sorted(path for path in files if not probe_direct(path)))
        in_place = all(ram_dtype(ref, dtype) == ref.dtype and viewable(ref) for ref in refs)
        return ReadChoice("direct" if in_place else "direct-staged", not fits, reason, refused)
    assert cached is not None
    return ReadChoice(cached, not fits, reason)


def _cached_reader(refs: list[TensorRef], files: set[Path], dtype: torch.dtype) -> str:
    """The page-cache path for these streamed tensors: mapped where all can be used in place, else buffered."""
    maps = FileMaps(drop_cache=False)
    try:
        mapped = all(can_map(ref, ram_dtype(ref, dtype)) for ref in refs) and maps.can_lease(files)
    finally:
        maps.close()
    return "mapped" if mapped else "buffered"
