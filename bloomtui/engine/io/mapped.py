"""Zero-copy streaming: a streamed tensor stored in the compute dtype is used straight from a file mapping.

Reading into a buffer costs a memcpy of every streamed byte per token; on a machine with few cores that
copy competes with compute. When a tensor is already in the compute dtype we map its file instead: the
prefetch thread asks the kernel to fault the pages in (MADV_POPULATE_READ, which reads cold pages from
disk), compute reads them where the page cache holds them, and afterwards we unmap them again
(MADV_DONTNEED) and, for a model that does not fit in memory, drop them from the page cache.

A mapped page past the end of a truncated file raises SIGBUS when touched, which no Python code can catch.
So pages are only ever touched after MADV_POPULATE_READ succeeded on them (it fails with EFAULT instead of
faulting), and while a run uses them it holds read leases on their files (see file_guard.py), so no other
program can truncate a file under compute. Without MADV_POPULATE_READ or leases, streaming reads into
buffers instead (reader.py).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from bloomtui.engine.io.file_guard import broken_lease_error, drop_lease, lease_broken, lease_supported, take_lease
from bloomtui.engine.io.reader import CHUNK_BYTES
from bloomtui.engine.weights.tensorfile import TensorRef
from bloomtui.errors import CancelRequested, CheckpointError

MADV_POPULATE_READ = 22  # Linux >= 5.14; Python's mmap module has no name for it
_PAGE = mmap.PAGESIZE
CACHED_MAP_RATE = 20e9
CACHED_MAP_SECONDS = 50e-6
"""A populate that took longer than CACHED_MAP_SECONDS + its bytes / CACHED_MAP_RATE waited for the disk. Pages
found in the page cache are only mapped: 1 GiB of 2 MB folios in 0.2 ms here, 32 MiB of 4 KB pages well under
1 ms, a few pages in the time of a system call; a disk reads at 0.5-7 GB/s, and no read from it returns in 50 us."""
_populate_ok: bool | None = None


def populate_supported() -> bool:
    """Whether the kernel has MADV_POPULATE_READ (probed once on an anonymous page)."""
    global _populate_ok
    if _populate_ok is None:
        if not hasattr(mmap.mmap, "madvise"):
            _populate_ok = False
        else:
            probe = mmap.mmap(-1, _PAGE)
            try:
                probe.madvise(MADV_POPULATE_READ, 0, _PAGE)
                _populate_ok = True
            except OSError:
                _populate_ok = False
            finally:
                probe.close()
    return _populate_ok


class Mapping:
    """A whole file mapped for streaming, asking for 2 MB pages, advised through libc.

    MADV_HUGEPAGE makes the kernel read a cold file in on faults as 2 MB folios (where its filesystem has
    large folios) and map them whole, so faulting in a block and unmapping it again walk a few hundred page
    table entries, not 130,000. Measured on this project's VM, bloom-560m's shape in bf16 with every block and
    the head mapped, after the page cache was filled by the mapped run itself: warm passes 0.081 s/token with
    the advice against 0.125 without (the prefetch thread's faulting 7.7 against 29 ms per token, the
    compute thread's unmapping 6.4 against 18 ms).

    Python's mmap.madvise holds the GIL for the whole call, and MADV_POPULATE_READ of cold pages waits for the
    disk: measured here, a Python loop on another thread ran at 0.30 of its speed while 512 MB were populated
    (0.83 beside pread, which lets go of the GIL). So the prefetch thread's faulting stalled every op the
    compute thread dispatched. `advise` calls libc's madvise through ctypes, which releases the GIL."""

    def __init__(self, fd: int) -> None:
        # Private + writable only so torch gets a writable buffer; nothing ever writes to it.
        self.mm = mmap.mmap(fd, 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self.size = len(self.mm)
        probe = ctypes.c_char.from_buffer(self.mm)
        self._address = ctypes.addressof(probe)
        del probe  # an exported buffer would keep close() from unmapping
        if hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                self.advise(mmap.MADV_HUGEPAGE, 0, self.size)
            except OSError:  # a kernel without transparent huge pages: 4 KB pages, as before
                pass

    def advise(self, advice: int, start: int, length: int) -> None:
        """madvise bytes [start, start+length) (start page-aligned; the length is clamped to the file) as
        mmap.madvise does, without holding the GIL."""
        if not 0 <= start < self.size:
            raise ValueError("madvise start out of bounds")
        length = min(length, self.size - start)
        if _madvise is None:
            self.mm.madvise(advice, start, length)
        elif _madvise(self._address + start, length, advice) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    def touch(self, start: int, length: int) -> None:
        """Read one byte of every page of bytes [start, start+length), on the calling thread.

        Where a hypervisor backs guest memory lazily, the first touch of a page the page cache has just taken
        costs the guest far more than its read did: on this project's VM (Firecracker with free page
        reporting, so memory the guest frees goes back to the host) a multiply over freshly populated
        BLOOM-176B-width matrices ran at 0.4-1.5 s against 0.08 s once touched. Compute paid it, on both
        OpenMP threads, stalling every cold pass through the page cache 3-12x. Touched here, by the prefetch
        thread, it is paid beside compute instead (FileMaps.populate, for what it read from the disk)."""
        length = min(length, self.size - start)
        if length > 0:
            torch.frombuffer(self.mm, dtype=torch.uint8, count=length, offset=start)[::_PAGE].sum()

    def close(self) -> None:
        self.mm.close()

    def __enter__(self) -> Mapping:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _libc_madvise():  # noqa: ANN202 - a ctypes function, or None where libc has none (mmap.madvise then)
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_madvise = _libc_madvise()


def read_from_disk(seconds: float, nbytes: int) -> bool:
    """Whether a populate of `nbytes` that took `seconds` waited for the disk (so its pages are fresh to this
    machine and worth touching before compute does). Touching pages already cached and touched costs more than
    nothing: on every chunk of a warm bloom-560m-shape pass it added 20 ms to a 0.077 s token here."""
    return seconds > CACHED_MAP_SECONDS + nbytes / CACHED_MAP_RATE


def can_map(ref: TensorRef, dtype: torch.dtype) -> bool:
    return ref.dtype == dtype and ref.offset % ref.dtype.itemsize == 0 and populate_supported()


class FileMaps:
    """One private read-only mapping per checkpoint file, made on first use, and leases on them during runs."""

    def __init__(self, *, drop_cache: bool) -> None:
        self.drop_cache = drop_cache and hasattr(os, "posix_fadvise")
        self._maps: dict[str, tuple[int, Mapping]] = {}
        self._leased: dict[int, Path] = {}

    def _map(self, path: Path) -> tuple[int, Mapping]:
        key = str(path)
        if key not in self._maps:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as exc:
                raise CheckpointError(f"{path}: cannot open ({exc.strerror})") from None
            try:
                mm = Mapping(fd)
            except (OSError, ValueError) as exc:
                os.close(fd)
                raise CheckpointError(f"{path}: cannot map ({exc})") from None
            self._maps[key] = (fd, mm)
        return self._maps[key]

    def can_lease(self, paths: set[Path]) -> bool:
        try:
            return all(lease_supported(self._map(path)[0]) for path in paths)
        except CheckpointError:  # cannot even map it: the buffered path will report why when it reads
            return False

    def hold_leases(self, paths: set[Path]) -> None:
        """Lease every file a run maps; CheckpointError (holding none) if one cannot be leased."""
        try:
            for path in sorted(paths):
                fd = self._map(path)[0]
                take_lease(fd, path)
                self._leased[fd] = path
        except BaseException:
            self.drop_leases()
            raise

    def check_leases(self, refs: list[TensorRef]) -> None:
        """Before compute touches these mapped pages: stop if another program waits to write their file."""
        for path in {ref.path for ref in refs}:
            if lease_broken(self._map(path)[0]):
                raise broken_lease_error(path)

    def drop_leases(self) -> None:
        for fd in self._leased:
            drop_lease(fd)
        self._leased.clear()

    def view(self, ref: TensorRef, first: int = 0, count: int | None = None) -> Tensor:
        """The tensor (or elements [first, first+count) of it, flattened) as a view of the mapping."""
        _, mapping = self._map(ref.path)
        n = ref.numel - first if count is None else count
        if ref.offset + (first + n) * ref.dtype.itemsize > mapping.size:
            raise CheckpointError(f"{ref.path}: shorter than when the model was opened")
        flat = torch.frombuffer(mapping.mm, dtype=ref.dtype, count=n, offset=ref.offset + first * ref.dtype.itemsize)
        return flat.view(ref.shape) if count is None else flat

    def populate(self, ref: TensorRef, start: int, length: int, should_stop: Callable[[], bool]) -> None:
        """Fault in bytes [start, start+length) of ref's file, in chunks so a cancel lands mid-read."""
        fd, mm = self._map(ref.path)
        end = start + length
        pos = start - start % _PAGE
        while pos < end:
            if should_stop():
                raise CancelRequested
            n = min(CHUNK_BYTES, end - pos)
            try:
                began = time.perf_counter()
                mm.advise(MADV_POPULATE_READ, pos, n)
                if read_from_disk(time.perf_counter() - began, n) and not (fd in self._leased and lease_broken(fd)):
                    # Touched here, not first by compute (Mapping.touch); not if a program waits to write the
                    # file: compute's lease check then ends the run before anything touches these pages.
                    mm.touch(pos, n)
            except (OSError, ValueError) as exc:
                # EFAULT: a page lies past the end of the file (truncated); EIO and friends: the disk failed.
                failed = isinstance(exc, OSError) and exc.errno != errno.EFAULT
                what = f"read failed ({exc.strerror})" if failed else "truncated while streaming"
                raise CheckpointError(f"{ref.path}: {what}; reopen the model") from None
            pos += n

    def release(self, ref: TensorRef, start: int, length: int) -> None:
        """Unmap those pages again (RSS falls back) and, if asked, drop them from the page cache."""
        fd, mm = self._map(ref.path)
        pos = start - start % _PAGE
        mm.advise(mmap.MADV_DONTNEED, pos, start + length - pos)
        if self.drop_cache:
            os.posix_fadvise(fd, start, length, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        self.drop_leases()  # a mapping keeps its file open after close(fd), and with it the lease
        for fd, mm in self._maps.values():
            try:
                mm.close()
            except BufferError:  # a view is still alive somewhere; the mapping goes when it does
                pass
            os.close(fd)
        self._maps.clear()
