"""Direct I/O: streamed weights read by the disk straight into page-aligned buffers, past the page cache.

A model bigger than free memory cannot stay in the page cache, so every buffered read of it fills the
cache only to evict it again, and copies each byte out of it with a CPU, on the cores the multiply needs.
With `O_DIRECT` the disk's DMA writes the bytes where compute will read them: no CPU copies, no page cache
filled or evicted, and a short read on a truncated file is an error, never a SIGBUS.

`O_DIRECT` wants the file offset, the length and the buffer address aligned (to the logical block size;
4096 covers every device). So a unit's tensors are read as the page-aligned spans of their files around
them, into a buffer that mirrors those spans byte for byte; each tensor is then a view of the buffer at its
offset within its span (`SpanLayout`). Several reads are in flight at once so the disk's queue stays full.
A file whose filesystem refuses `O_DIRECT` (some network and FUSE mounts; probed per file) is read into
the same buffers with plain `pread`, dropping what it read from the page cache when asked to.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from bloomtui.engine.weights.tensorfile import TensorRef
from bloomtui.errors import CancelRequested, CheckpointError

ALIGN = max(4096, mmap.PAGESIZE)
DIRECT_CHUNK = 32 * 1024 * 1024
"""Bytes per read: the kernel splits one into several requests of the disk's maximum size, all in flight at once;
measured here, 8 MiB reads with 2 in flight ran 0.79-1.75 s per bloom-560m-shape pass, 32 MiB ones 0.75-0.94 s."""
DIRECT_INFLIGHT = 2
"""Reads in flight at once: one keeps the queue full while the other completes."""
_MERGE_GAP = 256 * 1024
"""Tensors of one file closer than this are read as one span (reading the gap costs less than a request)."""
_HAS_DIRECT = hasattr(os, "O_DIRECT")


def _down(n: int) -> int:
    return n - n % ALIGN


def _up(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def aligned_buffer(nbytes: int) -> Tensor:
    """A uint8 tensor of `nbytes` whose first byte lies on an ALIGN boundary."""
    raw = torch.empty(nbytes + ALIGN, dtype=torch.uint8)
    skip = -raw.data_ptr() % ALIGN
    return raw[skip : skip + nbytes]


@dataclass(frozen=True)
class Piece:
    """Elements [first, first+count) of a stored tensor, wanted as a view named `name`."""

    name: str
    ref: TensorRef
    first: int = 0
    count: int | None = None

    @property
    def file_offset(self) -> int:
        return self.ref.offset + self.first * self.ref.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return (self.ref.numel - self.first if self.count is None else self.count) * self.ref.dtype.itemsize


@dataclass(frozen=True)
class Span:
    """Aligned bytes [start, start+length) of `path`, read to buffer offset `at`; the data ends at `needed`."""

    path: Path
    start: int
    length: int
    at: int
    needed: int
    """Bytes of the span that hold tensor data (the rest is alignment padding, possibly past the end of file)."""


@dataclass(frozen=True)
class SpanLayout:
    spans: tuple[Span, ...]
    places: tuple[tuple[Piece, int], ...]
    """Each piece and its byte offset in the buffer."""
    nbytes: int
    """Buffer bytes the layout needs."""

    @property
    def payload(self) -> int:
        return sum(piece.nbytes for piece, _ in self.places)

    def views(self, buffer: Tensor) -> dict[str, Tensor]:
        """The pieces as tensors viewing `buffer` (filled by DirectReader.read_spans)."""
        out = {}
        for piece, at in self.places:
            flat = buffer[at : at + piece.nbytes].view(piece.ref.dtype)
            out[piece.name] = flat.view(piece.ref.shape) if piece.count is None else flat
        return out


def viewable(ref: TensorRef) -> bool:
    """Whether the tensor can be a view of a span buffer: its file offset is aligned to its element size."""
    return ref.offset % ref.dtype.itemsize == 0


def span_layout(pieces: Iterable[Piece]) -> SpanLayout:
    """Spans covering the pieces, nearby pieces of one file merged, placed one after another in a buffer."""
    ordered = sorted(pieces, key=lambda p: (str(p.ref.path), p.file_offset))
    groups: list[list[Piece]] = []
    for piece in ordered:
        last = groups[-1][-1] if groups else None
        if (
            last is not None
            and last.ref.path == piece.ref.path
            and _down(piece.file_offset) <= _up(last.file_offset + last.nbytes) + _MERGE_GAP
        ):
            groups[-1].append(piece)
        else:
            groups.append([piece])
    spans, places, at = [], [], 0
    for group in groups:
        start = _down(group[0].file_offset)
        end = max(p.file_offset + p.nbytes for p in group)
        spans.append(Span(group[0].ref.path, start, _up(end) - start, at, end - start))
        places += [(p, at + p.file_offset - start) for p in group]
        at += _up(end) - start
    return SpanLayout(tuple(spans), tuple(places), at)


def _open_error(path: Path, exc: OSError) -> CheckpointError:
    return CheckpointError(f"{path}: cannot open ({exc.strerror})")


def probe_direct(path: Path) -> bool:
    """Whether `path`'s filesystem takes O_DIRECT reads: open it so and read one aligned block."""
    if not _HAS_DIRECT:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise _open_error(path, exc) from None
    try:
        os.preadv(fd, [aligned_buffer(ALIGN).numpy()], 0)
        return True
    except OSError:  # EINVAL: the file system accepts the flag but not this alignment
        return False
    finally:
        os.close(fd)


class DirectReader:
    """Reads span layouts into aligned buffers with several reads in flight; one per prefetch thread."""

    def __init__(
        self,
        direct_files: dict[Path, bool],
        *,
        drop_cache: bool,
        inflight: int | None = None,
        chunk: int | None = None,
    ) -> None:
        inflight = inflight or DIRECT_INFLIGHT
        chunk = chunk or DIRECT_CHUNK
        self._direct = direct_files
        """Per file: whether it is read with O_DIRECT (else plain pread into the same buffers)."""
        self._drop_cache = drop_cache and hasattr(os, "posix_fadvise")
        self._chunk = _up(chunk)
        self._fds: dict[Path, int] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(1, inflight), thread_name_prefix="bloomtui-read")
        self._inflight = max(1, inflight)

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            flags = os.O_RDONLY | (os.O_DIRECT if self._direct.get(path) else 0)
            try:
                fd = self._fds[path] = os.open(path, flags)
            except OSError as exc:
                raise _open_error(path, exc) from None
        return fd

    def _read_chunk(self, path: Path, fd: int, offset: int, view: memoryview, needed: int) -> int:
        """Read into all of `view` from `offset`; the first `needed` bytes must exist in the file."""
        done = 0
        while done < len(view):
            try:
                n = os.preadv(fd, [view[done:]], offset + done)
            except OSError as exc:  # EIO from a failing disk, ESTALE on a network mount, ...
                raise CheckpointError(f"{path}: read failed ({exc.strerror})") from None
            if n <= 0:
                break  # end of file: fine in the alignment padding after the last tensor
            done += n
        if done < needed:
            raise CheckpointError(f"{path}: truncated (read past the end at byte {offset + done})")
        if self._drop_cache and not self._direct.get(path):
            os.posix_fadvise(fd, offset, done, os.POSIX_FADV_DONTNEED)
        return done

    def read_spans(self, spans: Iterable[Span], buffer: Tensor, should_stop: Callable[[], bool]) -> int:
        """Fill `buffer` (aligned, at least the layout's nbytes) with the spans; return the bytes read."""
        whole = memoryview(buffer.numpy())
        pending: list[Future[int]] = []
        total = 0
        try:
            for span in spans:
                fd = self._fd(span.path)
                for off in range(0, span.length, self._chunk):
                    if should_stop():
                        raise CancelRequested
                    if len(pending) >= self._inflight:
                        total += pending.pop(0).result()
                    length = min(self._chunk, span.length - off)
                    view = whole[span.at + off : span.at + off + length]
                    needed = max(0, min(length, span.needed - off))
                    pending.append(self._pool.submit(self._read_chunk, span.path, fd, span.start + off, view, needed))
            while pending:
                total += pending.pop(0).result()
        finally:
            for future in pending:  # a cancel or an error: let the reads in flight land before the buffer is reused
                future.exception()
        return total

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
