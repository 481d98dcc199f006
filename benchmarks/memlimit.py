"""A hard memory limit for one benchmark process: a memory cgroup (v1, or v2 where its memory controller is
enabled) created beside this process's own, so the process's page cache counts against the limit as it would on
a machine that has only that much RAM. Needs write access to the cgroup tree (root on a VM like this one)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_ROOT = Path("/sys/fs/cgroup")


def _own_cgroup() -> tuple[Path, str] | None:
    """(this process's memory cgroup directory, the limit file's name), or None."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            own = _ROOT / "memory" / path.strip("/")
            return (own, "memory.limit_in_bytes") if own.is_dir() else None
    for line in lines:
        if line.startswith("0::"):
            own = _ROOT / line[3:].strip("/")
            parent = own.parent if own != _ROOT else own
            enabled = (parent / "cgroup.subtree_control").read_text().split() if parent.is_dir() else []
            return (parent, "memory.max") if "memory" in enabled else None
    return None


def unavailable() -> str | None:
    """Why no limit can be set here, or None."""
    own = _own_cgroup()
    if own is None:
        return "no memory cgroup controller found"
    if not os.access(own[0], os.W_OK):
        return f"{own[0]} is not writable (run as root)"
    return None


@contextmanager
def memory_limit(limit: int) -> Iterator[Callable[[], None]]:
    """Yields a subprocess preexec_fn that puts the child under a `limit`-byte memory cgroup; the cgroup is
    removed afterwards."""
    why = unavailable()
    if why:
        raise RuntimeError(f"cannot limit memory: {why}")
    parent, limit_file = _own_cgroup()  # type: ignore[misc]
    group = parent / f"bloomtui-bench-{os.getpid()}-{limit}"
    group.mkdir(exist_ok=True)
    (group / limit_file).write_text(str(limit))
    procs = str(group / "cgroup.procs")

    def join() -> None:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    try:
        yield join
    finally:
        try:
            group.rmdir()
        except OSError:
            pass  # a straggling process still in it; the kernel frees the group once it exits
