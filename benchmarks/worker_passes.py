"""Workers that time single passes by their rows, what speculative decoding's and token trees' projections are
built on (`python -m benchmarks.worker bigblock|verify`): one full-width block read cold and computed for 1, 5
and 9 rows, and a whole model's pass of 1 row against one of R rows, streamed warm or cold."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from benchmarks.common import PROMPT, RangeEvictor, budget_arg, evict, say, spans, weight_files
from benchmarks.floors import pread_ranges

ROWS = (5, 9)
"""Rows of the verify passes bigblock times (4 and 8 drafted tokens)."""


def run_bigblock(args: argparse.Namespace) -> dict:
    """Cold read of each full-width block, then the compute of one block for prefill and 1-token decode.
    Works on bf16 checkpoints and on prepared (int8/int4) folders; the multiplies go the way a pass's go (the
    native few-row kernels this machine chose, fp32 tiles for prefill where its bf16 GEMM is slow)."""
    from bloomtui.engine.compute.cpu_profile import multiplies_upcast
    from bloomtui.engine.compute.matmul import Matmul
    from bloomtui.engine.compute.model import Alibi, KVCache, block_forward
    from bloomtui.engine.compute.native import chosen
    from bloomtui.engine.plan.model_plan import compute_dtype
    from bloomtui.engine.plan.residency import ram_dtype
    from bloomtui.engine.stream.loader import assemble
    from bloomtui.engine.weights.checkpoint import Checkpoint

    ckpt = Checkpoint.open(args.model)
    cfg = ckpt.config
    dtype = compute_dtype(ckpt.dtype, None)
    refs0 = ckpt.blocks[0]
    raw = {n: torch.empty(ref.shape, dtype=ram_dtype(ref, dtype)) for n, ref in refs0.items()}
    for t in raw.values():
        t.view(-1).view(torch.uint8).zero_()  # fault the pages in before timing reads
    weights = assemble(raw, ckpt.scheme)
    fds: dict[Path, int] = {}
    read_s, block_bytes = [], 0
    for i in range(ckpt.n_blocks):
        refs = ckpt.blocks[i]
        evict({ref.path for ref in refs.values()})
        t0 = time.perf_counter()
        block_bytes = 0
        for n, ref in refs.items():
            view = memoryview(raw[n].view(-1).view(torch.uint8).numpy())
            block_bytes += pread_ranges([(ref.path, ref.offset, ref.nbytes)], view, fds)
        read_s.append(time.perf_counter() - t0)
        evict({ref.path for ref in refs.values()})
        say(f"block {i}: {block_bytes / 1e9:.2f} GB read cold in {read_s[-1]:.2f} s")
    for fd in fds.values():
        os.close(fd)
    rows_list = tuple(int(r) for r in args.rows.split(",")) if args.rows else ROWS
    ctx = max(args.context, *rows_list)  # the rows are the context's last rows
    cache = KVCache.empty(cfg, ctx + 1, dtype)
    alibi = Alibi(cfg.n_head, dtype, ctx + max(rows_list) + 1)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(ctx, cfg.hidden_size, generator=generator).to(dtype)
    upcast = multiplies_upcast(dtype)
    few, many = (
        Matmul(upcast=upcast, native=chosen(), chunks=True),
        Matmul(upcast=upcast, native=chosen()),
    )  # as passes.py
    with torch.inference_mode():
        t0 = time.perf_counter()
        block_forward(x, weights, cache, 0, alibi, cfg, many)
        prefill_s = time.perf_counter() - t0
        decode_s = []
        x1 = x[-1:].clone()
        for _ in range(args.reps):
            t0 = time.perf_counter()
            block_forward(x1, weights, cache, ctx, alibi, cfg, few)
            decode_s.append(time.perf_counter() - t0)
        # A verify pass of K drafted tokens: K + 1 rows, multiplied as decoding multiplies (no fp32 tiles).
        rows_s: dict[str, list[float]] = {}
        for rows in rows_list:
            rows_s[str(rows)] = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                block_forward(x[:rows], weights, cache, ctx, alibi, cfg, few)  # as a verify pass multiplies
                rows_s[str(rows)].append(time.perf_counter() - t0)
    say(f"decode compute per block: {sorted(decode_s)}; rows: {rows_s}")
    return {
        "block_bytes": block_bytes,
        "read_s": read_s,
        "context": ctx,
        "prefill_s": prefill_s,
        "decode_compute_s": decode_s,
        "rows_compute_s": rows_s,
        "hidden": cfg.hidden_size,
        "n_head": cfg.n_head,
        "weights": ckpt.scheme.weights if ckpt.scheme else "bf16",
        "group_size": ckpt.scheme.group_size if ckpt.scheme else None,
    }


def run_verify(args: argparse.Namespace) -> dict:
    """Speculative decoding's price: one pass over the weights with 1 row, and with `--rows` rows (a verify
    pass of rows - 1 drafted tokens), alternating, after a prefill of the prompt. Cold: each streamed block's
    bytes (and a streamed head's) are evicted after use, as in the bloomtui runs."""
    import threading

    from bloomtui.engine import Engine, EngineOptions
    from bloomtui.engine import events as ev
    from bloomtui.engine.compute.model import Alibi, KVCache

    budget = budget_arg(args.budget, args.model)
    engine = Engine.open(args.model, EngineOptions(ram_budget=budget, threads=args.threads, reads=args.reads))
    ckpt, plan, cfg = engine.model_plan.checkpoint, engine.model_plan.plan, engine.config
    block_spans = {i: spans(ckpt.blocks[i].values()) for i in plan.streamed_blocks}
    head_spans = [] if plan.head_resident else spans([*ckpt.head_refs, ckpt.embeddings])
    evictor = RangeEvictor()

    def sink(event: ev.Event) -> None:
        if args.cold and isinstance(event, ev.BlockDone) and not event.resident:
            for span in block_spans[event.index]:
                evictor(*span)

    prompt = engine.encode(PROMPT)
    start = len(prompt)
    caches = [KVCache.empty(cfg, start + args.rows, engine.dtype) for _ in range(cfg.n_layer)]
    alibi = Alibi(cfg.n_head, engine.dtype, start + args.rows)
    times: dict[int, list[float]] = {1: [], args.rows: []}
    if args.cold:
        evict(weight_files(args.model))
    cancel = threading.Event()
    with torch.inference_mode(), engine.store.prefetcher(1 + 2 * args.reps, cancel) as prefetch:
        passes = engine.passes(1, sink, cancel, prefetch)
        passes.logits(passes.hidden(prompt, 0, caches, alibi, "prefill", 0)[-1:])  # the head streams after blocks
        for rep in range(args.reps):
            for rows in (1, args.rows):
                for span in head_spans if args.cold else ():
                    evictor(*span)
                before = evictor.seconds
                t0 = time.perf_counter()
                h = passes.hidden(prompt[-1:] * rows, start, caches, alibi, "decode" if rows == 1 else "verify", rep)
                passes.logits(h, like_decode=True)
                times[rows].append(time.perf_counter() - t0 - (evictor.seconds - before))
    engine.close()
    evictor.close()
    say(f"1 row: {sorted(times[1])}; {args.rows} rows: {sorted(times[args.rows])}")
    return {
        "one_row_s": times[1],
        "rows_s": times[args.rows],
        "rows": args.rows,
        "budget": engine.model_plan.plan.budget,
        "streamed_blocks": len(plan.streamed_blocks),
        "n_blocks": plan.n_blocks,
        "head_resident": plan.head_resident,
    }
