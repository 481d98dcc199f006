"""What guarding files against changes costs a streamed block: `python -m benchmarks.file_guard_overhead`.

Per streamed unit the engine now does one stat() (FileGuard.check) and, on the mapped path, one
fcntl(F_GETLEASE) per file; per run it takes and drops a read lease. This measures those calls against the
time to stream one bloom-560m-sized block (50 MB, float32) through a file mapping with the page cache warm,
the fastest case and so the one where a fixed cost shows most. The full check of streaming speed is
`python -m benchmarks.run`, whose streaming goals must stay met (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from bloomtui.engine.io.file_guard import FileGuard, drop_lease, lease_broken, take_lease
from bloomtui.engine.io.mapped import FileMaps
from bloomtui.engine.weights.tensorfile import TensorRef

BLOCK_BYTES = 50_356_224  # one bloom-560m block in float32


def _per_call(fn, n: int) -> float:  # noqa: ANN001
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000, help="calls per guard measurement")
    parser.add_argument("--blocks", type=int, default=40, help="mapped block streams to time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "block.bin"
        path.write_bytes(os.urandom(BLOCK_BYTES))
        ref = TensorRef(path, 0, torch.float32, (BLOCK_BYTES // 4,))
        guard = FileGuard([path])
        maps = FileMaps(drop_cache=False)
        fd = maps._map(path)[0]
        take_lease(fd, path)
        stat_s = _per_call(lambda: guard.check(path), args.calls)
        lease_s = _per_call(lambda: lease_broken(fd), args.calls)
        drop_lease(fd)

        def stream_block() -> None:
            maps.populate(ref, 0, BLOCK_BYTES, lambda: False)
            maps.view(ref).sum()  # compute reads the pages, as a block's matmuls do
            maps.release(ref, 0, BLOCK_BYTES)

        stream_block()
        block_s = _per_call(stream_block, args.blocks)
        maps.close()
    guard_s = stat_s + lease_s
    print(f"stat() per unit          {stat_s * 1e6:8.2f} us")
    print(f"F_GETLEASE per unit      {lease_s * 1e6:8.2f} us")
    print(f"one 50 MB block, warm    {block_s * 1e3:8.2f} ms (populate + read + release)")
    print(f"guard cost per block     {guard_s / block_s:8.4%} of streaming it")


if __name__ == "__main__":
    main()
