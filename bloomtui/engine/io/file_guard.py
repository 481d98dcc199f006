"""Model files changing under an open model: notice it, and never fault on a truncated file mapping.

Identity: each checkpoint file's (device, inode, size, mtime) is recorded when the model opens. Before a
streamed unit is read, its file at its path is compared with that record, so a file deleted, replaced,
truncated or rewritten ends the run with an error naming it, instead of feeding another file's bytes into
the model. One stat() per unit: nothing per byte.

Leases: touching a page of a file mapping that lies past a truncated end raises SIGBUS, and a check before
compute cannot close the window while compute reads the pages. A read lease (fcntl F_SETLEASE) closes it:
the kernel makes any other process that opens the file for writing or truncates it wait until we let go
(at most /proc/sys/fs/lease-break-time, 45 s by default), and shows us the pending break (F_GETLEASE no
longer answers F_RDLCK). The engine holds leases only while a run uses mapped pages, checks them each time
it takes a mapped unit, and lets go when the run ends; a writer waits at most about one block.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from bloomtui.errors import CheckpointError

REOPEN = "reopen the model to use the new file"
# The kernel signals the lease holder when a break starts. SIGIO, the default, would kill the process;
# SIGURG is ignored unless someone handles it, and we poll F_GETLEASE instead.
_LEASE_SIGNAL = signal.SIGURG


@dataclass(frozen=True)
class FileStamp:
    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStamp:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class FileGuard:
    """The checkpoint files as they were when the model opened, and a check that they still are."""

    def __init__(self, files: tuple[Path, ...] | list[Path]) -> None:
        self._stamps: dict[Path, FileStamp] = {}
        for path in files:
            try:
                self._stamps[Path(path)] = FileStamp.of(os.stat(path))
            except OSError as exc:
                raise CheckpointError(f"{path}: cannot stat ({exc.strerror})") from None

    def check(self, path: Path) -> None:
        """Raise CheckpointError naming `path` if it is no longer the file the model was opened from."""
        was = self._stamps.get(Path(path))
        if was is None:
            return
        try:
            now = FileStamp.of(os.stat(path))
        except FileNotFoundError:
            raise CheckpointError(f"{path}: deleted while the model was open; {REOPEN}") from None
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot be read any more ({exc.strerror}); {REOPEN}") from None
        if (now.dev, now.ino) != (was.dev, was.ino):
            raise CheckpointError(f"{path}: replaced by another file while the model was open; {REOPEN}")
        if now.size != was.size:
            change = "truncated" if now.size < was.size else "grew"
            raise CheckpointError(
                f"{path}: {change} from {was.size} to {now.size} bytes while the model was open; {REOPEN}"
            )
        if now.mtime_ns != was.mtime_ns:
            raise CheckpointError(f"{path}: modified while the model was open; {REOPEN}")


def take_lease(fd: int, path: Path) -> None:
    """Hold a read lease on `fd`; CheckpointError if another program has the file open for writing or the
    filesystem refuses (see lease_supported)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETSIG, _LEASE_SIGNAL)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EBUSY):
            raise CheckpointError(
                f"{path}: another program has it open for writing (is it being downloaded or copied?); "
                "reopen the model when it is done"
            ) from None
        raise CheckpointError(f"{path}: cannot take a read lease ({exc.strerror})") from None


def lease_broken(fd: int) -> bool:
    """True when another program waits to write or truncate the file (or we hold no lease)."""
    try:
        return fcntl.fcntl(fd, fcntl.F_GETLEASE) != fcntl.F_RDLCK
    except OSError:
        return True


def drop_lease(fd: int) -> None:
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    except OSError:
        pass  # never held, or the descriptor is gone: nothing to let go of


def lease_supported(fd: int) -> bool:
    """Whether this file can be leased: we own it (or have CAP_LEASE), nobody writes it, and its filesystem
    supports leases (most local ones do; network ones often not)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETSIG, _LEASE_SIGNAL)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError:
        return False
    drop_lease(fd)
    return True


def broken_lease_error(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path}: another program is writing to or truncating it; the run stopped to let it. "
        "Reopen the model when it is done"
    )
