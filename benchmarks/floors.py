"""The floors the benchmarks hold bloomtui to: reading the very byte ranges it streams (pread after a cache
drop, or O_DIRECT with several reads in flight), and copying memory. Run through `benchmarks.worker`."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from benchmarks.common import READ_CHUNK, budget_arg, evict, weight_files


def streamed_ranges(model: Path, budget: int) -> list[tuple[Path, int, int]]:
    """The (file, offset, length) reads bloomtui's prefetcher makes per decode token under `budget`:
    streamed blocks tensor by tensor (a prepared folder's `.qweight`/`.scales` included), LM-head chunks
    (with their int8 scales), and the new token's embedding row (and its scale)."""
    from bloomtui.engine import EngineOptions
    from bloomtui.engine.plan.model_plan import plan_model

    mp = plan_model(model, EngineOptions(ram_budget=budget))
    ckpt, plan = mp.checkpoint, mp.plan
    ranges = []
    if not (plan.head_resident and ckpt.tied):
        emb = ckpt.embeddings
        ranges.append((emb.path, emb.offset, emb.shape[1] * emb.dtype.itemsize))
        if ckpt.embedding_scales is not None:
            sc = ckpt.embedding_scales
            ranges.append((sc.path, sc.offset, sc.dtype.itemsize))
    for i in plan.streamed_blocks:
        ranges += [(ref.path, ref.offset, ref.nbytes) for ref in ckpt.blocks[i].values()]
    head, scales = ckpt.head, ckpt.head_scales
    row = head.shape[1] * head.dtype.itemsize
    for c in range(plan.head_chunks):
        r0 = c * plan.head_chunk_rows
        r1 = min(plan.head_rows, r0 + plan.head_chunk_rows)
        ranges.append((head.path, head.offset + r0 * row, (r1 - r0) * row))
        if scales is not None:
            item = scales.dtype.itemsize
            ranges.append((scales.path, scales.offset + r0 * item, (r1 - r0) * item))
    return ranges


def pread_ranges(ranges: list[tuple[Path, int, int]], buffer: memoryview, fds: dict[Path, int]) -> int:
    total = 0
    for path, offset, length in ranges:
        fd = fds.get(path)
        if fd is None:
            fd = fds[path] = os.open(path, os.O_RDONLY)
        done = 0
        while done < length:
            n = os.preadv(fd, [buffer[done : min(length, done + READ_CHUNK)]], offset + done)
            if n <= 0:
                raise OSError(f"short read in {path}")
            done += n
        total += done
    return total


def _direct_chunks(ranges: list[tuple[Path, int, int]], chunk: int) -> list[tuple[Path, int, int]]:
    """The ranges as 4 KiB-aligned spans (touching ones merged), cut into reads of at most `chunk` bytes."""
    align = 4096
    spans: list[list] = []
    for path, offset, length in sorted(ranges, key=lambda r: (str(r[0]), r[1])):
        start, end = offset - offset % align, -(-(offset + length) // align) * align
        if spans and spans[-1][0] == path and start <= spans[-1][2]:
            spans[-1][2] = max(spans[-1][2], end)
        else:
            spans.append([path, start, end])
    return [(p, o, min(chunk, e - o)) for p, s0, e in spans for o in range(s0, e, chunk)]


def _direct_read(chunks: list[tuple[Path, int, int]], fds: dict[Path, int], inflight: int, chunk: int) -> int:
    """O_DIRECT reads of the chunks, `inflight` at a time, each thread into its own aligned buffer."""
    import mmap
    import threading

    for path, _, _ in chunks:
        if path not in fds:
            fds[path] = os.open(path, os.O_RDONLY | os.O_DIRECT)
    todo = list(reversed(chunks))
    lock, total = threading.Lock(), [0]

    def work() -> None:
        buffer = mmap.mmap(-1, chunk)
        while True:
            with lock:
                if not todo:
                    return
                path, offset, length = todo.pop()
            n = os.preadv(fds[path], [memoryview(buffer)[:length]], offset)
            with lock:
                total[0] += n

    threads = [threading.Thread(target=work) for _ in range(inflight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return total[0]


def run_rawread(args: argparse.Namespace) -> dict:
    budget = budget_arg(args.budget, args.model)
    ranges = streamed_ranges(args.model, budget)
    if args.direct:  # the best plain reader for a model bigger than memory: no page cache at all
        chunks = _direct_chunks(ranges, args.chunk)
        fds: dict[Path, int] = {}
        token_s, cpu_s, nbytes = [], [], 0
        for _ in range(args.tokens):
            t0, c0 = time.perf_counter(), time.process_time()
            nbytes = _direct_read(chunks, fds, args.inflight, args.chunk)
            token_s.append(time.perf_counter() - t0)
            cpu_s.append(time.process_time() - c0)
        for fd in fds.values():
            os.close(fd)
        return {"token_s": token_s, "cpu_s": cpu_s, "bytes": nbytes, "budget": budget}
    files = weight_files(args.model)
    size = max((length for _, _, length in ranges), default=1)
    buffer = torch.zeros(size, dtype=torch.uint8)  # touched: page faults are not read time
    view = memoryview(buffer.numpy())
    fds: dict[Path, int] = {}
    if not args.cold:
        pread_ranges(ranges, view, fds)  # warm the page cache, as bloomtui's earlier passes do
    token_s, cpu_s, nbytes = [], [], 0
    for _ in range(args.tokens):
        if args.cold:
            evict(files)
        t0, c0 = time.perf_counter(), time.process_time()
        nbytes = pread_ranges(ranges, view, fds)
        token_s.append(time.perf_counter() - t0)
        cpu_s.append(time.process_time() - c0)
    for fd in fds.values():
        os.close(fd)
    return {"token_s": token_s, "cpu_s": cpu_s, "bytes": nbytes, "budget": budget}


def run_membw(args: argparse.Namespace) -> dict:
    src = torch.ones(args.bytes, dtype=torch.uint8)
    dst = torch.zeros(args.bytes, dtype=torch.uint8)
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    times.sort()
    # Decoding only reads its weights: a plain sum over the bytes is the read floor (a copy also writes).
    words = src.view(torch.float32)
    reads = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        words.sum()
        reads.append(time.perf_counter() - t0)
    reads.sort()
    return {
        "bytes": args.bytes,
        "copy_s": times,
        "bandwidth": 2 * args.bytes / times[len(times) // 2],
        "read_bandwidth": args.bytes / reads[len(reads) // 2],
    }
