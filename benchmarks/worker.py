"""One contender in one process: `python -m benchmarks.worker KIND [options]`.

Prints progress on stderr and, last, one line `BENCH_RESULT {json}` on stdout. Each process measures its
own peak RSS (getrusage), so numbers never mix between contenders. Kinds:

  hf          transformers BloomForCausalLM.generate, KV cache, greedy, model fully in RAM
  accelerate  the same through Accelerate's disk offload (device_map="auto", max_memory={"cpu": budget})
  bloomtui    bloomtui's Engine with a RAM budget; --cold evicts what it streams after each use
  seed        the seed article's method (benchmarks/seed.py)
  rawread     the floor: os.preadv of exactly the byte ranges bloomtui streams per token
  membw       memory bandwidth of a large torch copy
  bigblock    per-block cold read and 1-token compute of a full-width block
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import PROMPT, READ_CHUNK, RESULT_TAG, RangeEvictor, evict, peak_rss, rss, weight_files

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _emit(result: dict) -> None:
    result.setdefault("peak_rss", peak_rss())
    print(RESULT_TAG + json.dumps(result), flush=True)


def _gen_result(load_s: float, token_s: list[float], ids: list[int], baseline: int, **extra) -> dict:
    decode = token_s[1:]
    return {
        "load_s": load_s,
        "prefill_s": token_s[0],
        "token_s": token_s,
        "decode_s": statistics.median(decode) if decode else float("nan"),
        "decode_mean_s": sum(decode) / len(decode) if decode else float("nan"),
        "ids": ids,
        "rss_baseline": baseline,
        **extra,
    }


# --- transformers and Accelerate ------------------------------------------------------------------------


def _hf_generate(model, tokenizer, tokens: int) -> tuple[list[float], list[int]]:  # noqa: ANN001
    from transformers import LogitsProcessor, LogitsProcessorList

    stamps: list[float] = []

    class Stamp(LogitsProcessor):
        """Called once per step, right after the forward pass that produced the step's logits."""

        def __call__(self, input_ids, scores):  # noqa: ANN001, ANN204
            stamps.append(time.perf_counter())
            return scores

    ids = tokenizer(PROMPT)["input_ids"]
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model.generate(
            torch.tensor([ids]),
            max_new_tokens=tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=3,
            logits_processor=LogitsProcessorList([Stamp()]),
        )
    times = [b - a for a, b in zip([t0, *stamps[:-1]], stamps, strict=True)]
    return times, out[0, len(ids) :].tolist()


def run_hf(args: argparse.Namespace) -> dict:
    from transformers import AutoTokenizer, BloomForCausalLM

    baseline = rss()
    t0 = time.perf_counter()
    model = BloomForCausalLM.from_pretrained(args.model, dtype=DTYPES[args.dtype]).eval()
    load_s = time.perf_counter() - t0
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    token_s, ids = _hf_generate(model, tokenizer, args.tokens)
    return _gen_result(load_s, token_s, ids, baseline)


def run_accelerate(args: argparse.Namespace) -> dict:
    from transformers import AutoTokenizer, BloomForCausalLM

    baseline = rss()
    t0 = time.perf_counter()
    model = BloomForCausalLM.from_pretrained(
        args.model,
        dtype=DTYPES[args.dtype],
        device_map="auto",
        max_memory={"cpu": int(args.budget)},
        offload_folder=args.offload_folder,
    ).eval()
    load_s = time.perf_counter() - t0
    placement: dict[str, int] = {}
    for where in getattr(model, "hf_device_map", {}).values():
        placement[str(where)] = placement.get(str(where), 0) + 1
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    token_s, ids = _hf_generate(model, tokenizer, args.tokens)
    return _gen_result(load_s, token_s, ids, baseline, placement=placement)


# --- bloomtui --------------------------------------------------------------------------------------------


def _spans(refs) -> list[tuple[Path, int, int]]:  # noqa: ANN001 - TensorRefs
    """Byte spans (file, offset, length) covering the refs, one per file."""
    by_file: dict[Path, list[int]] = {}
    for ref in refs:
        lo_hi = by_file.setdefault(ref.path, [ref.offset, ref.offset + ref.nbytes])
        lo_hi[0], lo_hi[1] = min(lo_hi[0], ref.offset), max(lo_hi[1], ref.offset + ref.nbytes)
    return [(path, lo, hi - lo) for path, (lo, hi) in by_file.items()]


def _budget(text: str, model: Path) -> int:
    if text != "min":
        return int(text)
    from bloomtui.engine.checkpoint import Checkpoint
    from bloomtui.engine.generate import compute_dtype
    from bloomtui.engine.residency import minimum_budget

    ckpt = Checkpoint.open(model)
    return minimum_budget(ckpt, compute_dtype(ckpt.dtype, None).itemsize)


def run_bloomtui(args: argparse.Namespace) -> dict:
    from transformers import AutoTokenizer  # noqa: F401 - imported before timing, as the hf worker's is

    from bloomtui.engine import Engine, EngineOptions, SamplingParams
    from bloomtui.engine import events as ev

    baseline = rss()
    budget = _budget(args.budget, args.model)
    files = weight_files(args.model)
    if args.cold:
        evict(files)
    t0 = time.perf_counter()
    engine = Engine.open(args.model, EngineOptions(ram_budget=budget, threads=args.threads))
    load_s = time.perf_counter() - t0
    ckpt, plan = engine.model_plan.checkpoint, engine.model_plan.plan
    block_spans = {i: _spans(ckpt.blocks[i].values()) for i in plan.streamed_blocks}
    token_spans = []
    if not plan.head_resident:
        token_spans += _spans([ckpt.head, ckpt.embeddings])
    evictor = RangeEvictor()
    token_s: list[float] = []
    blocks: list[dict[str, float]] = []
    done: list[ev.Done] = []
    in_token = {"evict": 0.0, "bytes": 0, "read": 0.0, "wait": 0.0, "compute": 0.0}

    def sink(event: ev.Event) -> None:
        if isinstance(event, ev.BlockDone):
            in_token["bytes"] += event.bytes
            in_token["read"] += event.read_seconds
            in_token["wait"] += event.wait_seconds
            in_token["compute"] += event.compute_seconds
            if args.cold and not event.resident:
                before = evictor.seconds
                for span in block_spans[event.index]:
                    evictor(*span)
                in_token["evict"] += evictor.seconds - before
        elif isinstance(event, ev.TokenGenerated):
            token_s.append(event.seconds - in_token["evict"])  # eviction is the harness's, not the engine's
            blocks.append({k: v for k, v in in_token.items()})
            in_token.update(evict=0.0, bytes=0, read=0.0, wait=0.0, compute=0.0)
            if args.cold:  # outside any token's timing: the engine stamps a token before emitting it
                for span in token_spans:
                    evictor(*span)
        elif isinstance(event, ev.Done):
            done.append(event)

    if args.cold:
        evict(files)
    params = SamplingParams(max_new_tokens=args.tokens, ignore_eos=True)
    result = engine.generate(PROMPT, params, on_event=sink)
    engine.close()
    evictor.close()
    cfg = engine.config
    prompt_tokens = done[0].prompt_tokens if done else 0
    kv_bytes = 2 * cfg.n_layer * cfg.hidden_size * (prompt_tokens + args.tokens) * engine.dtype.itemsize
    return _gen_result(
        load_s,
        token_s,
        list(result.token_ids),
        baseline,
        budget=budget,
        kv_bytes=kv_bytes,
        engine_peak_rss=done[0].peak_rss if done else None,
        bytes_read=done[0].bytes_read if done else None,
        resident_blocks=len(plan.resident_blocks),
        n_blocks=plan.n_blocks,
        head_resident=plan.head_resident,
        plan_bytes=plan.total_bytes,
        blocks=blocks,
        prompt_tokens=prompt_tokens,
    )


# --- the seed article ------------------------------------------------------------------------------------


def run_seed(args: argparse.Namespace) -> dict:
    from transformers import AutoTokenizer

    from benchmarks.seed import seed_generate

    baseline = rss()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    token_s: list[float] = []

    def on_token(step: int, token: int, seconds: float) -> None:
        token_s.append(seconds)
        _say(f"seed token {step}: {seconds:.2f} s")

    ids = seed_generate(
        args.model, prompt_ids, args.tokens, dtype=DTYPES[args.dtype], cold=args.cold, on_token=on_token
    )
    return _gen_result(0.0, token_s, ids, baseline)


# --- floors ----------------------------------------------------------------------------------------------


def streamed_ranges(model: Path, budget: int) -> list[tuple[Path, int, int]]:
    """The (file, offset, length) reads bloomtui's prefetcher makes per decode token under `budget`:
    streamed blocks tensor by tensor, LM-head chunks, and the new token's embedding row."""
    from bloomtui.engine import EngineOptions
    from bloomtui.engine.checkpoint import BLOCK_TENSORS
    from bloomtui.engine.generate import ModelPlan

    mp = ModelPlan.make(model, EngineOptions(ram_budget=budget))
    ckpt, plan = mp.checkpoint, mp.plan
    ranges = []
    if not (plan.head_resident and ckpt.tied):
        emb = ckpt.embeddings
        row = emb.shape[1] * emb.dtype.itemsize
        ranges.append((emb.path, emb.offset, row))
    for i in plan.streamed_blocks:
        ranges += [(ckpt.blocks[i][n].path, ckpt.blocks[i][n].offset, ckpt.blocks[i][n].nbytes) for n in BLOCK_TENSORS]
    head = ckpt.head
    row = head.shape[1] * head.dtype.itemsize
    for c in range(plan.head_chunks):
        r0 = c * plan.head_chunk_rows
        r1 = min(plan.head_rows, r0 + plan.head_chunk_rows)
        ranges.append((head.path, head.offset + r0 * row, (r1 - r0) * row))
    return ranges


def _pread_ranges(ranges: list[tuple[Path, int, int]], buffer: memoryview, fds: dict[Path, int]) -> int:
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


def run_rawread(args: argparse.Namespace) -> dict:
    budget = _budget(args.budget, args.model)
    ranges = streamed_ranges(args.model, budget)
    files = weight_files(args.model)
    size = max((length for _, _, length in ranges), default=1)
    buffer = torch.zeros(size, dtype=torch.uint8)  # touched: page faults are not read time
    view = memoryview(buffer.numpy())
    fds: dict[Path, int] = {}
    if not args.cold:
        _pread_ranges(ranges, view, fds)  # warm the page cache, as bloomtui's earlier passes do
    token_s, nbytes = [], 0
    for _ in range(args.tokens):
        if args.cold:
            evict(files)
        t0 = time.perf_counter()
        nbytes = _pread_ranges(ranges, view, fds)
        token_s.append(time.perf_counter() - t0)
    for fd in fds.values():
        os.close(fd)
    return {"token_s": token_s, "bytes": nbytes, "budget": budget}


def run_membw(args: argparse.Namespace) -> dict:
    src = torch.ones(args.bytes, dtype=torch.uint8)
    dst = torch.zeros(args.bytes, dtype=torch.uint8)
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"bytes": args.bytes, "copy_s": times, "bandwidth": 2 * args.bytes / times[len(times) // 2]}


def run_bigblock(args: argparse.Namespace) -> dict:
    """Cold read of each full-width block, then the compute of one block for prefill and 1-token decode."""
    from bloomtui.engine.checkpoint import BLOCK_TENSORS, Checkpoint
    from bloomtui.engine.model import KVCache, alibi_bias, block_forward

    ckpt = Checkpoint.open(args.model)
    cfg = ckpt.config
    dtype = ckpt.dtype
    weights = {n: torch.empty(ckpt.blocks[0][n].shape, dtype=dtype) for n in BLOCK_TENSORS}
    for t in weights.values():
        t.view(-1).view(torch.uint8).zero_()  # fault the pages in before timing reads
    fds: dict[Path, int] = {}
    read_s, block_bytes = [], 0
    for i in range(ckpt.n_blocks):
        refs = ckpt.blocks[i]
        evict({refs[n].path for n in BLOCK_TENSORS})
        t0 = time.perf_counter()
        block_bytes = 0
        for n in BLOCK_TENSORS:
            view = memoryview(weights[n].view(-1).view(torch.uint8).numpy())
            block_bytes += _pread_ranges([(refs[n].path, refs[n].offset, refs[n].nbytes)], view, fds)
        read_s.append(time.perf_counter() - t0)
        evict({refs[n].path for n in BLOCK_TENSORS})
        _say(f"block {i}: {block_bytes / 1e9:.2f} GB read cold in {read_s[-1]:.2f} s")
    for fd in fds.values():
        os.close(fd)
    ctx = args.context
    cache = KVCache.empty(cfg, ctx + 1, dtype)
    alibi = alibi_bias(cfg.n_head, ctx + 1, dtype)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(ctx, cfg.hidden_size, generator=generator).to(dtype)
    with torch.inference_mode():
        t0 = time.perf_counter()
        block_forward(x, weights, cache, 0, alibi, cfg)
        prefill_s = time.perf_counter() - t0
        decode_s = []
        x1 = x[-1:].clone()
        for _ in range(args.reps):
            t0 = time.perf_counter()
            block_forward(x1, weights, cache, ctx, alibi, cfg)
            decode_s.append(time.perf_counter() - t0)
    _say(f"decode compute per block: {sorted(decode_s)}")
    return {
        "block_bytes": block_bytes,
        "read_s": read_s,
        "context": ctx,
        "prefill_s": prefill_s,
        "decode_compute_s": decode_s,
        "hidden": cfg.hidden_size,
        "n_head": cfg.n_head,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    for kind in ("hf", "accelerate", "bloomtui", "seed"):
        p = sub.add_parser(kind)
        p.add_argument("--model", type=Path, required=True)
        p.add_argument("--tokens", type=int, required=True)
        p.add_argument("--dtype", choices=tuple(DTYPES), default="bfloat16")
        if kind in ("bloomtui", "seed"):
            p.add_argument("--cold", action="store_true")
        if kind == "bloomtui":
            p.add_argument("--threads", type=int, help="torch threads (EngineOptions.threads)")
        if kind in ("bloomtui", "accelerate"):
            p.add_argument("--budget", required=True, help="bytes, or 'min' for the engine's minimum")
        if kind == "accelerate":
            p.add_argument("--offload-folder", required=True)
    p = sub.add_parser("rawread")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--budget", required=True)
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--cold", action="store_true")
    p = sub.add_parser("membw")
    p.add_argument("--bytes", type=int, default=1 << 30)
    p.add_argument("--reps", type=int, default=7)
    p = sub.add_parser("bigblock")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--context", type=int, default=16)
    p.add_argument("--reps", type=int, default=5)
    return parser


RUNNERS = {
    "hf": run_hf,
    "accelerate": run_accelerate,
    "bloomtui": run_bloomtui,
    "seed": run_seed,
    "rawread": run_rawread,
    "membw": run_membw,
    "bigblock": run_bigblock,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _emit(RUNNERS[args.kind](args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
