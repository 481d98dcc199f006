"""Zero-copy streaming: a streamed tensor stored in the compute dtype is used straight from a file mapping.

Reading into a buffer costs a memcpy of every streamed byte per token; on a machine with few cores that
copy competes with compute. When a tensor is already in the compute dtype we map its file instead: the
prefetch thread asks the kernel to fault the pages in (MADV_POPULATE_READ, which reads cold pages from
disk), compute reads them where the page cache holds them, and afterwards we unmap them again
(MADV_DONTNEED) and, for a model that does not fit in memory, drop them from the page cache.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable

import torch
from torch import Tensor

from bloomtui.engine.reader import CHUNK_BYTES
from bloomtui.engine.tensorfile import TensorRef
from bloomtui.errors import CancelRequested

_MADV_POPULATE_READ = 22  # Linux >= 5.14; Python's mmap module has no name for it
_PAGE = mmap.PAGESIZE


def can_map(ref: TensorRef, dtype: torch.dtype) -> bool:
    return ref.dtype == dtype and ref.offset % ref.dtype.itemsize == 0 and hasattr(mmap.mmap, "madvise")


class FileMaps:
    """One private read-only mapping per checkpoint file, made on first use."""

    def __init__(self, *, drop_cache: bool) -> None:
        self.drop_cache = drop_cache and hasattr(os, "posix_fadvise")
        self._maps: dict[str, tuple[int, mmap.mmap]] = {}
        self._populate_works = True

    def _map(self, ref: TensorRef) -> tuple[int, mmap.mmap]:
        key = str(ref.path)
        if key not in self._maps:
            fd = os.open(ref.path, os.O_RDONLY)
            # Private + writable only so torch gets a writable buffer; nothing ever writes to it.
            mm = mmap.mmap(fd, 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            self._maps[key] = (fd, mm)
        return self._maps[key]

    def view(self, ref: TensorRef, first: int = 0, count: int | None = None) -> Tensor:
        """The tensor (or elements [first, first+count) of it, flattened) as a view of the mapping."""
        _, mm = self._map(ref)
        n = ref.numel - first if count is None else count
        flat = torch.frombuffer(mm, dtype=ref.dtype, count=n, offset=ref.offset + first * ref.dtype.itemsize)
        return flat.view(ref.shape) if count is None else flat

    def populate(self, ref: TensorRef, start: int, length: int, should_stop: Callable[[], bool]) -> None:
        """Fault in bytes [start, start+length) of ref's file, in chunks so a cancel lands mid-read."""
        _, mm = self._map(ref)
        end = start + length
        pos = start - start % _PAGE
        while pos < end:
            if should_stop():
                raise CancelRequested
            n = min(CHUNK_BYTES, end - pos)
            if self._populate_works:
                try:
                    mm.madvise(_MADV_POPULATE_READ, pos, n)
                except OSError:  # older kernel: touch one byte per page instead
                    self._populate_works = False
            if not self._populate_works:
                sum(memoryview(mm)[pos : pos + n : _PAGE])
            pos += n

    def release(self, ref: TensorRef, start: int, length: int) -> None:
        """Unmap those pages again (RSS falls back) and, if asked, drop them from the page cache."""
        fd, mm = self._map(ref)
        pos = start - start % _PAGE
        mm.madvise(mmap.MADV_DONTNEED, pos, start + length - pos)
        if self.drop_cache:
            os.posix_fadvise(fd, start, length, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        for fd, mm in self._maps.values():
            try:
                mm.close()
            except BufferError:  # a view is still alive somewhere; the mapping goes when it does
                pass
            os.close(fd)
        self._maps.clear()
