"""Which cold reader serves a run better on the disk a model lives on, O_DIRECT or the page cache, measured
once per filesystem while compute runs, and cached.

Direct I/O spares the CPU the work of a page-cache read: the copy out of it (pread) or the faults and
readahead that fill it (a populated mapping). On a 2-core machine that work lands on the cores the multiply
needs, so a reader's raw speed alone decides badly. Measured on this project's VM on 256 MiB regions of a
BLOOM-176B-width file, with a bf16 matrix-vector loop on torch's threads beside the reads: pread read 1.6 GB/s
and slowed the multiply 2.2x, a populated mapping 2.2 GB/s and 1.2x (5-7x while mapped.py still faulted
through mmap.madvise, which holds the GIL), O_DIRECT 1.5 GB/s and 1.2x. Some disks (seen on another of this
project's VMs) read much faster through the page cache, whose readahead keeps more in flight. So before `auto`
streams a model that does not fit in memory, both readers read their own cold regions of one of its files,
alternating, alone and beside the multiply loop. A run then estimates its pass both ways from its own bytes
(pass_seconds) and takes direct I/O unless the page cache's pass is clearly shorter.
"""

from __future__ import annotations

import mmap
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from bloomtui.engine.compute.profile_cache import kept_or_measured
from bloomtui.engine.io.direct import ALIGN, DirectReader, Span, aligned_buffer
from bloomtui.engine.io.mapped import MADV_POPULATE_READ, Mapping
from bloomtui.errors import BloomtuiError

SAMPLE_BYTES = 256 * 1024 * 1024
"""Bytes read per measurement: long enough to get past a disk's first burst; the 8 measurements took 3 s here."""
CACHED_READERS = ("mapped", "buffered")
"""The page-cache readers a run uses (read_choice.PATHS): populating a mapping, or pread into buffers."""
DIRECT_MARGIN = 1.5
"""Direct I/O is taken unless the page cache's estimated pass is this much shorter, for what the estimate
leaves out. Short samples understate O_DIRECT here: 1.5 GB/s in 256 MiB, 1.9 in 2 GiB, 2.1-2.3 over whole
passes. And a run cycling a model bigger than memory through the page cache gets fresh memory for it every
pass, which the samples (reusing what they just freed) do not: where the host backs guest memory lazily, as
on this project's VM, the first touch of such pages costs more than their read (mapped.Mapping.touch). Passes
of a 14.8 GB model with 9.9 GB of budget took 8.0 s through the mapping and 6.4 s direct, where the estimate
said 6.3 and 6.6 s."""
_ROUNDS = 2
_MIN_SAMPLE = 32 * 1024 * 1024
_CHUNK = 32 * 1024 * 1024
_LOAD_SHAPE = (4096, 8192)
"""The multiply beside the reads: a 64 MiB bf16 matrix times one row, far bigger than any cache, as decoding."""


@dataclass(frozen=True)
class DiskProfile:
    cached_reader: str
    """Which page-cache reader was measured (CACHED_READERS)."""
    direct_gbps: float
    """Read speed alone ..."""
    cached_gbps: float
    direct_loaded_gbps: float
    """... and while the multiply runs ..."""
    cached_loaded_gbps: float
    direct_slowdown: float
    """... and the multiply's time while each reader reads, ÷ its time alone."""
    cached_slowdown: float
    compute_gbps: float
    """Weight bytes per second the multiply runs through alone."""

    def pass_seconds(self, streamed: int, computed: int, direct: bool) -> float:
        """A pass reading `streamed` bytes and multiplying by `computed` bytes of weights: compute runs beside
        the reads (slowed as measured, the reads slowed too), then what is left to read reads alone."""
        alone, loaded, slowdown = (
            (self.direct_gbps, self.direct_loaded_gbps, self.direct_slowdown)
            if direct
            else (self.cached_gbps, self.cached_loaded_gbps, self.cached_slowdown)
        )
        compute = computed / (self.compute_gbps * 1e9) * slowdown
        left = max(0.0, streamed - compute * loaded * 1e9)
        return compute + left / (alone * 1e9)

    def prefer_direct(self, streamed: int, computed: int) -> bool:
        direct = self.pass_seconds(streamed, computed, True)
        return direct <= DIRECT_MARGIN * self.pass_seconds(streamed, computed, False)

    def describe(self, streamed: int, computed: int) -> str:
        direct, cached = (self.pass_seconds(streamed, computed, d) for d in (True, False))
        return (
            f"estimated pass {direct:.2f} s direct, {cached:.2f} s through the page cache (measured here, alone "
            f"and beside compute: O_DIRECT {self.direct_gbps:.2f} and {self.direct_loaded_gbps:.2f} GB/s, "
            f"compute {self.direct_slowdown:.2f}x; {self.cached_reader} {self.cached_gbps:.2f} and "
            f"{self.cached_loaded_gbps:.2f} GB/s, compute {self.cached_slowdown:.2f}x)"
        )


def _drop(fd: int, offset: int, length: int) -> None:
    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def _read_buffered(path: Path, offset: int, length: int, target: torch.Tensor) -> None:
    chunk = memoryview(target[:_CHUNK].numpy())
    fd = os.open(path, os.O_RDONLY)
    try:
        for at in range(offset, offset + length, _CHUNK):
            os.preadv(fd, [chunk[: min(_CHUNK, offset + length - at)]], at)
            _drop(fd, at, _CHUNK)  # as a run that cannot keep the model cached does
    finally:
        os.close(fd)


def _read_mapped(path: Path, offset: int, length: int, _target: torch.Tensor) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        with Mapping(fd) as mm:
            for at in range(offset, offset + length, _CHUNK):
                n = min(_CHUNK, offset + length - at)
                mm.advise(MADV_POPULATE_READ, at, n)
                mm.touch(at, n)  # as FileMaps.populate does with pages it read from the disk
                mm.advise(mmap.MADV_DONTNEED, at, n)
                _drop(fd, at, n)
    finally:
        os.close(fd)


def _read_direct(path: Path, offset: int, length: int, target: torch.Tensor) -> None:
    reader = DirectReader({path: True}, drop_cache=False)
    try:
        reader.read_spans([Span(path, offset, length, 0, length)], target, lambda: False)
    finally:
        reader.close()


class _Multiply:
    """A decode-like multiply on torch's threads, timed alone and beside a read."""

    def __init__(self) -> None:
        self.weight = torch.randn(_LOAD_SHAPE).to(torch.bfloat16)
        self.row = torch.randn(1, _LOAD_SHAPE[1]).to(torch.bfloat16)
        self.once()  # first-touch and kernel selection are not compute time
        self.alone = statistics.median(self._timed() for _ in range(9))

    def once(self) -> None:
        F.linear(self.row, self.weight)

    def _timed(self) -> float:
        start = time.perf_counter()
        self.once()
        return time.perf_counter() - start

    @property
    def gbps(self) -> float:
        return self.weight.nbytes / self.alone / 1e9

    def beside(self, read: Callable[[], None]) -> tuple[float, float]:
        """(seconds `read` took, the multiply's time ÷ alone) with the multiply running until it ends."""
        done = threading.Event()
        failure: list[BaseException] = []

        def reading() -> None:
            try:
                read()
            except BaseException as exc:  # handed back to the measuring thread
                failure.append(exc)
            finally:
                done.set()

        start = time.perf_counter()
        thread = threading.Thread(target=reading, name="bloomtui-disk-profile", daemon=True)
        thread.start()
        count = 0
        while not done.is_set():
            self.once()
            count += 1
        seconds = time.perf_counter() - start
        thread.join()
        if failure:
            raise failure[0]
        return seconds, seconds / max(1, count) / self.alone


def measure(path: Path, cached_reader: str = "mapped") -> DiskProfile | None:
    """Both readers on cold regions of `path`, alternating, alone and beside the multiply; None if the file is too
    small to tell. Each measurement reads its own region where the file is long enough (a region read once
    may stay cached below this machine, in a VM's host)."""
    length = min(SAMPLE_BYTES, path.stat().st_size) // ALIGN * ALIGN
    if length < _MIN_SAMPLE or not hasattr(os, "posix_fadvise"):
        return None
    regions = max(1, path.stat().st_size // length)
    target = aligned_buffer(length)
    target.fill_(0)  # fault the pages in: page faults are not read time
    multiply = _Multiply()
    cached_read = _read_mapped if cached_reader == "mapped" else _read_buffered
    results: dict[tuple[bool, bool], list[tuple[float, float]]] = {}
    fd = os.open(path, os.O_RDONLY)
    try:
        for n in range(4 * _ROUNDS):
            direct, loaded = n % 2 == 1, n % 4 >= 2
            offset = n % regions * length
            _drop(fd, offset, length)  # cold, as a model that does not fit in memory always is
            read = _read_direct if direct else cached_read
            if loaded:
                seconds, slowdown = multiply.beside(lambda r=read, o=offset: r(path, o, length, target))
            else:
                start = time.perf_counter()
                read(path, offset, length, target)
                seconds, slowdown = time.perf_counter() - start, 1.0
            _drop(fd, offset, length)  # leave the cache as it was
            results.setdefault((direct, loaded), []).append((length / seconds / 1e9, slowdown))
    finally:
        os.close(fd)

    def median(direct: bool, loaded: bool, i: int = 0) -> float:
        return statistics.median(r[i] for r in results[direct, loaded])

    return DiskProfile(
        cached_reader,
        direct_gbps=median(True, False),
        cached_gbps=median(False, False),
        direct_loaded_gbps=median(True, True),
        cached_loaded_gbps=median(False, True),
        direct_slowdown=median(True, True, 1),
        cached_slowdown=median(False, True, 1),
        compute_gbps=multiply.gbps,
    )


def disk_profile(path: Path, cached_reader: str = "mapped") -> DiskProfile | None:
    """The cached profile of `path`'s filesystem, measured on `path` the first time (None: could not tell)."""

    def measured() -> DiskProfile | None:
        try:
            return measure(path, cached_reader)
        except (OSError, ValueError, BloomtuiError):  # O_DIRECT refused, the file went away: nothing to choose
            return None

    key = f"device {os.stat(path).st_dev} | {os.uname().release} | {cached_reader} | {torch.get_num_threads()} threads"
    return kept_or_measured("disk-profile.json", key, DiskProfile, measured)
