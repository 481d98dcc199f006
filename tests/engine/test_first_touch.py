"""Pages a mapped read maps are touched by the reading thread, not first by compute (mapped.Mapping.touch)."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest
import torch

from bloomtui.engine import mapped
from bloomtui.engine.tensorfile import TensorRef
from tests.pagecache import evict

CHUNK = 4 * 1024 * 1024


def _ref(path: Path, nbytes: int) -> TensorRef:
    return TensorRef(path, 0, torch.uint8, (nbytes,))


def test_populate_touches_every_page_it_maps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every chunk a populate maps is touched on the reading thread, cold or warm, so compute never pays a lazily
    backed page's first touch (3-12x on this project's VM); readahead makes "which pages came from the disk" a
    guess, and touching a cached page costs 3.5 ms a GiB. A lease broken by a waiting writer skips it."""
    if not mapped.populate_supported():
        pytest.skip("no MADV_POPULATE_READ here")
    monkeypatch.setattr(mapped, "CHUNK_BYTES", CHUNK)
    path = tmp_path / "weights.bin"
    data = os.urandom(3 * CHUNK + 5 * mmap.PAGESIZE)
    path.write_bytes(data)
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
        assert touched == [(0, CHUNK), (CHUNK, CHUNK), (2 * CHUNK, CHUNK), (3 * CHUNK, 5 * mmap.PAGESIZE)]
        assert bytes(maps.view(ref).numpy()) == data
        touched.clear()
        maps.populate(ref, CHUNK + 100, CHUNK, lambda: False)  # from the page below an unaligned start
        assert touched == [(CHUNK, CHUNK), (2 * CHUNK, 100)]
        touched.clear()
        monkeypatch.setattr(mapped, "lease_broken", lambda fd: True)
        if not mapped.lease_supported(maps._map(path)[0]):
            pytest.skip("no leases on this file system")
        maps.hold_leases({path})
        maps.populate(ref, 0, len(data), lambda: False)
        assert touched == []
    finally:
        maps.close()


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
