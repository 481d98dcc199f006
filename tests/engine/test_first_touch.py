"""Pages a mapped read brings in from the disk are touched by the reading thread, not first by compute."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest
import torch

from bloomtui.engine.io import mapped
from bloomtui.engine.weights.tensorfile import TensorRef
from tests.pagecache import evict, on_tmpfs

CHUNK = 32 * 1024 * 1024


def _ref(path: Path, nbytes: int) -> TensorRef:
    return TensorRef(path, 0, torch.uint8, (nbytes,))


def test_populate_touches_what_it_read_from_the_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cold populate touches the chunks it waited for the disk to read (so compute does not pay a lazily backed
    page's first touch, 3-12x on this project's VM); a warm one touches nothing (it added 20 ms a token); nor does
    one whose file a waiting writer wants (the lease is broken: compute's check ends the run)."""
    if not mapped.populate_supported():
        pytest.skip("no MADV_POPULATE_READ here")
    path = tmp_path / "weights.bin"
    data = os.urandom(2 * CHUNK + 5 * mmap.PAGESIZE)
    path.write_bytes(data)
    if on_tmpfs(path):
        pytest.skip("a memory file system keeps every page: nothing is read from a disk")
    monkeypatch.setattr(mapped, "CHUNK_BYTES", CHUNK)
    touched: list[tuple[int, int]] = []
    real_touch = mapped.Mapping.touch

    def spy(self: mapped.Mapping, start: int, length: int) -> None:
        touched.append((start, length))
        real_touch(self, start, length)

    monkeypatch.setattr(mapped.Mapping, "touch", spy)
    ref = _ref(path, len(data))
    maps = mapped.FileMaps(drop_cache=False)
    try:
        evict(path)
        maps.populate(ref, 0, len(data), lambda: False)
        assert (0, CHUNK) in touched  # the readahead of an earlier chunk may have read a later one
        assert bytes(maps.view(ref).numpy()) == data
        warm = []
        for _ in range(3):  # a populate preempted on a loaded machine may look slow once; not three times
            touched.clear()
            maps.populate(ref, 0, len(data), lambda: False)
            warm.append(list(touched))
        assert [] in warm, warm
        touched.clear()
        if not mapped.lease_supported(maps._map(path)[0]):
            pytest.skip("no leases on this file system")
        maps.hold_leases({path})
        monkeypatch.setattr(mapped, "read_from_disk", lambda seconds, nbytes: True)  # still mapped: not evictable
        maps.populate(ref, 0, len(data), lambda: False)
        assert touched, "the lease check is what must skip the touch"
        touched.clear()
        monkeypatch.setattr(mapped, "lease_broken", lambda fd: True)
        maps.populate(ref, 0, len(data), lambda: False)
        assert touched == []
    finally:
        maps.close()


def test_a_populate_waited_for_the_disk_when_it_ran_below_memory_speed() -> None:
    assert mapped.read_from_disk(0.016, 32 << 20)  # 2 GB/s: a disk
    assert not mapped.read_from_disk(0.0005, 32 << 20)  # 67 GB/s: pages only mapped
    assert not mapped.read_from_disk(0.0002, 1 << 30)
    assert not mapped.read_from_disk(5e-6, 4096)  # a system call's time: a cached bias
    assert mapped.read_from_disk(200e-6, 4096)  # a disk's latency


def test_touch_reads_one_byte_a_page_and_stops_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(3 * mmap.PAGESIZE))
    fd = os.open(path, os.O_RDONLY)
    try:
        with mapped.Mapping(fd) as mapping:
            mapping.touch(0, 10**9)  # cut to the file: no SIGBUS past its end
            mapping.touch(2 * mmap.PAGESIZE, mmap.PAGESIZE)
    finally:
        os.close(fd)
