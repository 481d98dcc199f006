"""How much slower the cores multiply right after the machine has been idle: `python -m benchmarks.idle_wake`.

No bloomtui code runs: a decode-like bf16 multiply (a 64 MiB matrix times one row, twice) is timed back to back,
and again after each of a series of pauses, on 1 and 2 torch threads, and with a pause spent as short sleeps
(the waiting thread waking every few ms). A read-bound streamed pass leaves the cores idle while it waits for
the disk, so where this shows a penalty, "compute while streaming ÷ alone" (benchmarks.reads) carries it too.
On this project's 2-core VM: 8.9 ms (1 thread) and 4.5 ms (2 threads) back to back, 1.6-1.7x and 2.4-3.5x that
after a pause of 20-100 ms, also when it is spent as 2 ms sleeps; a single 2 ms pause costs nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

SHAPE = (4096, 8192)


def _paused(total: float, piece: float) -> None:
    end = time.perf_counter() + total
    while (left := end - time.perf_counter()) > 0:
        time.sleep(min(piece, left))


def timed(weight: torch.Tensor, row: torch.Tensor, pause: float, piece: float, runs: int) -> float:
    """Median ms of two multiplies, each time after a pause of `pause` s spent as sleeps of `piece` s."""
    for _ in range(3):
        F.linear(row, weight)
    times = []
    for _ in range(runs):
        if pause:
            _paused(pause, piece)
        start = time.perf_counter()
        F.linear(row, weight)
        F.linear(row, weight)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="timed multiplies per setting (median)")
    args = parser.parse_args()
    weight = torch.randn(SHAPE).to(torch.bfloat16)
    row = torch.randn(1, SHAPE[1]).to(torch.bfloat16)
    print("| threads | pause | slept as | ms for two multiplies | ÷ back to back |")
    print("|---|---|---|---|---|")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        base = timed(weight, row, 0.0, 0.0, args.runs)
        print(f"| {threads} | none | | {base:.2f} | 1.00x |")
        for pause, piece in ((0.002, 0.002), (0.02, 0.02), (0.1, 0.1), (0.1, 0.002)):
            ms = timed(weight, row, pause, piece, args.runs)
            slept = f"sleeps of {piece * 1e3:.0f} ms"
            print(f"| {threads} | {pause * 1e3:.0f} ms | {slept} | {ms:.2f} | {ms / base:.2f}x |")


if __name__ == "__main__":
    main()
