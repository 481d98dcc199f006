"""Which cold reader is faster on the disk a model lives on: O_DIRECT or buffered reads, measured once per
filesystem and cached.

Direct I/O spares the CPU the copy out of the page cache, which on a desktop NVMe disk is most of a core at
full speed. But some disks (seen on this project's virtual machines) read much faster through the page
cache, whose readahead keeps more in flight: there `O_DIRECT` made every cold pass 1.5-2.8x slower. So
before `auto` streams a model with direct I/O, it reads the same region of one of its files both ways, cache
dropped first, alternating, and keeps the answer for that filesystem.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from bloomtui.engine.direct import ALIGN, DirectReader, Span, aligned_buffer
from bloomtui.engine.profile_cache import kept_or_measured
from bloomtui.errors import BloomtuiError

SAMPLE_BYTES = 256 * 1024 * 1024
"""Bytes read per measurement: long enough to get past a disk's first burst, under a second on most disks."""
_ROUNDS = 3
_MIN_SAMPLE = 32 * 1024 * 1024


@dataclass(frozen=True)
class DiskProfile:
    direct_gbps: float
    buffered_gbps: float

    @property
    def prefer_direct(self) -> bool:
        """Direct I/O unless it reads clearly slower than the page cache here (it saves the CPU a copy)."""
        return self.direct_gbps >= 0.8 * self.buffered_gbps

    def describe(self) -> str:
        return f"cold reads here: O_DIRECT {self.direct_gbps:.2f} GB/s, buffered {self.buffered_gbps:.2f} GB/s"


def _drop(fd: int, length: int) -> None:
    os.posix_fadvise(fd, 0, length, os.POSIX_FADV_DONTNEED)


def _buffered(path: Path, length: int, buffer: memoryview) -> float:
    fd = os.open(path, os.O_RDONLY)
    try:
        _drop(fd, length)
        start = time.perf_counter()
        for offset in range(0, length, len(buffer)):
            os.preadv(fd, [buffer[: min(len(buffer), length - offset)]], offset)
        seconds = time.perf_counter() - start
        _drop(fd, length)  # leave the cache as it was
        return seconds
    finally:
        os.close(fd)


def _direct(path: Path, length: int, buffer) -> float:  # noqa: ANN001 - an aligned uint8 tensor
    reader = DirectReader({path: True}, drop_cache=False)
    try:
        start = time.perf_counter()
        reader.read_spans([Span(path, 0, length, 0, length)], buffer, lambda: False)
        return time.perf_counter() - start
    finally:
        reader.close()


def measure(path: Path) -> DiskProfile | None:
    """Both readers on the first SAMPLE_BYTES of `path`, alternating; None if the file is too small to tell."""
    length = min(SAMPLE_BYTES, path.stat().st_size) // ALIGN * ALIGN
    if length < _MIN_SAMPLE or not hasattr(os, "posix_fadvise"):
        return None
    target = aligned_buffer(length)
    target.fill_(0)  # fault the pages in: page faults are not read time
    chunk = memoryview(target[: 32 * 1024 * 1024].numpy())
    direct, buffered = [], []
    for _ in range(_ROUNDS):
        buffered.append(length / _buffered(path, length, chunk) / 1e9)
        direct.append(length / _direct(path, length, target) / 1e9)
    return DiskProfile(statistics.median(direct), statistics.median(buffered))


def disk_profile(path: Path) -> DiskProfile | None:
    """The cached profile of `path`'s filesystem, measured on `path` the first time (None: could not tell)."""

    def measured() -> DiskProfile | None:
        try:
            return measure(path)
        except (OSError, BloomtuiError):  # O_DIRECT refused, or the file went away: nothing to choose between
            return None

    key = f"device {os.stat(path).st_dev} | {os.uname().release}"
    return kept_or_measured("disk-profile.json", key, DiskProfile, measured)
