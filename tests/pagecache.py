"""How much of a file the kernel holds in its page cache, by mincore(2) on a mapping of it."""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]


def cached_pages(path: Path, start: int = 0, end: int | None = None) -> tuple[int, int]:
    """(pages in the page cache, pages) among the whole pages inside bytes [start, end) of `path`."""
    size = path.stat().st_size
    end = size if end is None else end
    first, last = -(-start // mmap.PAGESIZE), end // mmap.PAGESIZE
    if last <= first:
        return 0, 0
    fd = os.open(path, os.O_RDONLY)
    try:
        # Private and writable only so ctypes can take the address; nothing writes, so no page is copied.
        mm = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    try:
        anchor = ctypes.c_char.from_buffer(mm)
        pages = last - first
        vec = (ctypes.c_ubyte * pages)()
        if _libc.mincore(ctypes.addressof(anchor) + first * mmap.PAGESIZE, pages * mmap.PAGESIZE, vec) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        del anchor
        return sum(v & 1 for v in vec), pages
    finally:
        mm.close()


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def on_tmpfs(path: Path) -> bool:
    """Whether `path` lies on a memory file system, whose page cache is the file itself."""
    best, fstype = "", ""
    for line in Path("/proc/mounts").read_text().splitlines():
        _dev, mount, kind, *_ = line.split()
        if str(path.resolve()).startswith(mount) and len(mount) > len(best):
            best, fstype = mount, kind
    return fstype in ("tmpfs", "ramfs")
