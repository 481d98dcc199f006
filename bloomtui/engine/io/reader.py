"""Reading tensor bytes from checkpoint files into preallocated memory.

`pread` into the destination (or a small staging buffer when the dtype must change), in chunks so a
cancel lands mid-read, optionally dropping what was read from the OS page cache: a model bigger than RAM
streamed through the page cache would only push the user's other programs out of memory. Files marked for
direct I/O are read with O_DIRECT through an aligned staging buffer instead (direct.py), which fills no
page cache at all: the path for streamed tensors that must change dtype on the way in.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from bloomtui.engine.io.direct import ALIGN, aligned_buffer, viewable
from bloomtui.engine.weights.tensorfile import TensorRef
from bloomtui.errors import CancelRequested, CheckpointError

CHUNK_BYTES = 32 * 1024 * 1024
_HAS_FADVISE = hasattr(os, "posix_fadvise")


def _byte_view(t: Tensor) -> memoryview:
    return memoryview(t.view(-1).view(torch.uint8).numpy())


class TensorReader:
    """Owns open file descriptors and a staging buffer: give each thread its own reader."""

    def __init__(
        self, *, drop_cache: bool, staging_bytes: int = CHUNK_BYTES, direct_files: dict[Path, bool] | None = None
    ) -> None:
        self.drop_cache = drop_cache and _HAS_FADVISE
        self._fds: dict[tuple[Path, bool], int] = {}
        self._staging: Tensor | None = None
        self._staging_bytes = staging_bytes
        self._direct_files = direct_files or {}
        """Files read with O_DIRECT (probed by direct.probe_direct)."""

    def _fd(self, path: Path, direct: bool = False) -> int:
        fd = self._fds.get((path, direct))
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
            except OSError as exc:
                raise CheckpointError(f"{path}: cannot open ({exc.strerror})") from None
            self._fds[(path, direct)] = fd
        return fd

    def _pread_into(self, path: Path, offset: int, view: memoryview, should_stop: Callable[[], bool]) -> None:
        fd = self._fd(path)
        done, total = 0, len(view)
        while done < total:
            if should_stop():
                raise CancelRequested
            try:
                n = os.preadv(fd, [view[done : min(total, done + CHUNK_BYTES)]], offset + done)
            except OSError as exc:  # EIO from a failing disk, ESTALE on a network mount, ...
                raise CheckpointError(f"{path}: read failed ({exc.strerror})") from None
            if n <= 0:
                raise CheckpointError(f"{path}: truncated (read past the end at byte {offset + done})")
            if self.drop_cache:
                os.posix_fadvise(fd, offset + done, n, os.POSIX_FADV_DONTNEED)
            done += n

    def read(self, ref: TensorRef, dest: Tensor, should_stop: Callable[[], bool] = lambda: False) -> int:
        """Fill contiguous `dest` (same numel, any float dtype) from `ref`; return bytes read."""
        return self.read_range(ref, 0, ref.numel, dest, should_stop)

    def read_range(
        self, ref: TensorRef, first: int, count: int, dest: Tensor, should_stop: Callable[[], bool] = lambda: False
    ) -> int:
        """Read elements [first, first+count) of the flattened tensor into `dest`; return bytes read."""
        assert dest.is_contiguous() and dest.numel() == count
        item = ref.dtype.itemsize
        offset = ref.offset + first * item
        if self._direct_files.get(ref.path) and viewable(ref):
            return self._read_direct(ref, offset, count, dest, should_stop)
        if dest.dtype == ref.dtype:
            self._pread_into(ref.path, offset, _byte_view(dest), should_stop)
            return count * item
        flat = dest.view(-1)
        staging = self._staging_buffer()
        per_chunk = len(staging) // item
        for e0 in range(0, count, per_chunk):
            e1 = min(count, e0 + per_chunk)
            raw = staging[: (e1 - e0) * item]
            self._pread_into(ref.path, offset + e0 * item, _byte_view(raw), should_stop)
            flat[e0:e1].copy_(raw.view(ref.dtype))
        return count * item

    def _read_direct(
        self, ref: TensorRef, offset: int, count: int, dest: Tensor, should_stop: Callable[[], bool]
    ) -> int:
        """O_DIRECT reads of the aligned span around each chunk into the aligned staging buffer, then one
        copy (converting the dtype if it must) into `dest`."""
        item, flat = ref.dtype.itemsize, dest.view(-1)
        staging = self._staging_buffer(aligned=True, need=count * item + 2 * ALIGN)
        per_chunk = max(1, (len(staging) - 2 * ALIGN) // item)
        fd = self._fd(ref.path, direct=True)
        for e0 in range(0, count, per_chunk):
            e1 = min(count, e0 + per_chunk)
            start, end = offset + e0 * item, offset + e1 * item
            lead = start % ALIGN
            length = -(-(lead + end - start) // ALIGN) * ALIGN
            if should_stop():
                raise CancelRequested
            view = _byte_view(staging[:length])
            done = 0
            while done < length:
                try:
                    n = os.preadv(fd, [view[done:]], start - lead + done)
                except OSError as exc:
                    raise CheckpointError(f"{ref.path}: read failed ({exc.strerror})") from None
                if n <= 0:
                    break
                done += n
            if done < lead + end - start:
                raise CheckpointError(f"{ref.path}: truncated (read past the end at byte {start - lead + done})")
            flat[e0:e1].copy_(staging[lead : lead + end - start].view(ref.dtype))
        return count * item

    def _staging_buffer(self, aligned: bool = False, need: int | None = None) -> Tensor:
        """The staging buffer: a read chunk (and, for direct reads, the alignment around it), or only `need`
        bytes when a read is smaller (an embedding row needs pages, not 32 MiB)."""
        full = self._staging_bytes + (2 * ALIGN if aligned else 0)
        nbytes = full if need is None else min(full, need)
        staging = self._staging
        if staging is None or len(staging) < nbytes or (aligned and staging.data_ptr() % ALIGN):
            staging = aligned_buffer(nbytes) if aligned else torch.empty(nbytes, dtype=torch.uint8)
            self._staging = staging
        return staging

    def release_staging(self) -> None:
        """Let the staging buffer go (after a model's resident set is read): the next read allocates what it needs."""
        self._staging = None

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._staging = None
