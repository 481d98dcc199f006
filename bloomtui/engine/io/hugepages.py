"""Weight buffers on transparent huge pages.

Decoding reads every resident weight once per token, so the speed of that read is the speed of decoding. On
4 KB pages a 1 GB model spans 262,144 pages, and on a virtual machine each TLB miss walks two page tables;
measured on this project's VM, the same one-row multiplies read bloom-560m's weights at 24 GB/s from 4 KB
pages and at 30 GB/s from 2 MB ones (the machine's plain read speed). Linux gives anonymous memory huge pages
where it is asked to (MADV_HUGEPAGE; `enabled` is `madvise` on most distributions, `always` on some), so big
buffers are mapped here, aligned to 2 MB and advised. Where the kernel has no THP, or the advice fails, they
are ordinary pages, as torch.empty would give.
"""

from __future__ import annotations

import math
import mmap

import torch
from torch import Tensor

HUGE_PAGE = 2 * 1024**2
MIN_BYTES = 4 * 1024**2
"""Smaller buffers stay on torch's allocator: most of them would round up to a whole huge page."""


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """An uninitialised tensor; one of MIN_BYTES or more lies on huge pages where the kernel grants them."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(shape, dtype=dtype)
    # Over-allocate by one huge page so the tensor can start on a 2 MB boundary (THP maps aligned ranges only).
    buf = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        buf.madvise(mmap.MADV_HUGEPAGE)
    except OSError:
        pass  # no THP here: ordinary pages
    whole = torch.frombuffer(buf, dtype=torch.uint8)  # keeps `buf` alive as long as any view of it lives
    offset = -whole.data_ptr() % HUGE_PAGE
    return whole[offset : offset + nbytes].view(dtype).view(shape)
