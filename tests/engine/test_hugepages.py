"""Resident weights on transparent huge pages (hugepages.py): right shapes, aligned, freed with their tensor."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import psutil
import pytest
import torch

from bloomtui.engine.io import hugepages


def _anon_huge_kb() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


def test_big_buffers_are_aligned_writable_tensors_and_small_ones_ordinary() -> None:
    t = hugepages.empty((3, 4096, 1024), torch.bfloat16)
    assert t.shape == (3, 4096, 1024) and t.dtype == torch.bfloat16 and t.is_contiguous()
    assert t.data_ptr() % hugepages.HUGE_PAGE == 0
    t.fill_(1.5)
    assert float(t.float().sum()) == 1.5 * t.numel()
    small = hugepages.empty((10, 10), torch.float32)
    assert small.shape == (10, 10) and small.dtype == torch.float32


def test_a_buffer_is_freed_with_its_last_view() -> None:
    before = psutil.Process().memory_info().rss
    for _ in range(5):
        t = hugepages.empty((200 * 1024**2,), torch.uint8)
        view = t[10:20]
        t.fill_(7)
        del t
        assert int(view[0]) == 7  # a view keeps the mapping alive
        del view
        gc.collect()
    assert psutil.Process().memory_info().rss - before < 150 * 1024**2  # 1 GB written in all, not kept


def test_the_kernel_gives_huge_pages_where_it_can() -> None:
    try:
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        pytest.skip("this kernel has no transparent huge pages")
    if "[never]" in mode:
        pytest.skip("transparent huge pages are turned off on this machine")
    before = _anon_huge_kb()
    t = hugepages.empty((64 * 1024**2,), torch.uint8)
    t.fill_(1)
    assert _anon_huge_kb() - before >= 2048  # at least one 2 MB page of the 64 MB
    del t


def _vm_flags(address: int) -> list[str]:
    """The VmFlags of this process's mapping that holds `address`."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split(" ", 1)[0] and not line.startswith("VmFlags"):
            start, end = (int(x, 16) for x in line.split(" ", 1)[0].split("-"))
            inside = start <= address < end
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    return []


def test_streamed_files_are_mapped_asking_for_huge_pages(tmp_path: Path) -> None:
    """Without the advice a cold file faulted in through the mapping came in as 4 KB pages here, and every
    warm token paid for mapping and unmapping them one by one (0.125 against 0.081 s/token)."""
    import ctypes
    import mmap

    from bloomtui.engine.io.mapped import Mapping

    if not hasattr(mmap, "MADV_HUGEPAGE") or not Path("/proc/self/smaps").exists():
        pytest.skip("no transparent huge pages to ask for here")
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(8 * 1024 * 1024))
    fd = os.open(path, os.O_RDONLY)
    try:
        with Mapping(fd) as mapping:
            address = ctypes.addressof(ctypes.c_char.from_buffer(mapping.mm))
            assert "hg" in _vm_flags(address)
    finally:
        os.close(fd)


def test_advice_goes_to_the_kernel_and_its_errors_come_back(tmp_path: Path) -> None:
    """Mapping.advise calls libc's madvise (it lets go of the GIL, mmap.madvise does not): a bad advice is the
    kernel's EINVAL, a start outside the file is refused before any call, and a length past the end is cut."""
    import errno
    import mmap

    from bloomtui.engine.io import mapped

    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(3 * mmap.PAGESIZE))
    fd = os.open(path, os.O_RDONLY)
    try:
        with mapped.Mapping(fd) as mapping:
            assert mapped._madvise is not None  # Linux's libc has madvise: the GIL-free path is the one tested
            mapping.advise(mmap.MADV_DONTNEED, mmap.PAGESIZE, 10**9)  # cut to the file's last two pages
            if mapped.populate_supported():
                mapping.advise(mapped.MADV_POPULATE_READ, 0, 3 * mmap.PAGESIZE)
                assert mapping.mm[0] == 0
            with pytest.raises(OSError) as bad:
                mapping.advise(-1, 0, mmap.PAGESIZE)
            assert bad.value.errno == errno.EINVAL
            with pytest.raises(ValueError, match="out of bounds"):
                mapping.advise(mmap.MADV_DONTNEED, 3 * mmap.PAGESIZE, mmap.PAGESIZE)
    finally:
        os.close(fd)
