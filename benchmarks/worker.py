"""One contender in one process: `python -m benchmarks.worker KIND [options]`.

Prints progress on stderr and, last, one line `BENCH_RESULT {json}` on stdout. Each process measures its
own peak RSS (VmHWM), so numbers never mix between contenders. Kinds:

  hf          transformers BloomForCausalLM.generate, KV cache, greedy, model fully in RAM
  accelerate  the same through Accelerate's disk offload (device_map="auto", max_memory={"cpu": budget})
  bloomtui    bloomtui's Engine with a RAM budget; --cold evicts what it streams after each use
  seed        the seed article's method (benchmarks/seed.py)
  rawread     the floor: the byte ranges bloomtui streams per token, with pread or --direct (floors.py)
  membw       memory bandwidth of a large torch copy (floors.py)
  bigblock    per-block cold read and 1-token compute of a full-width block (bf16 or a prepared int4 copy)
              (worker_passes.py)
  verify      a pass of 1 row against one of R rows, streamed warm or cold (worker_passes.py)
  prefill     bloomtui's prefill of a long prompt, fully resident, on the path it picks or a forced one
  hfprefill   transformers' forward of the same prompt ids (one model() call)
  cancel      cancel latency: a long prompt's generate cancelled ~2 s in
  ppl         Engine.perplexity of a text, plus a greedy continuation of a fixed prompt
  gemm        torch.matmul peak of large bf16 and fp32 matrices
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

from benchmarks.common import (
    DRAFT_PROMPTS,
    PROMPT,
    READ_CHUNK,
    RESULT_TAG,
    RangeEvictor,
    budget_arg,
    evict,
    peak_rss,
    rss,
    say,
    spans,
    weight_files,
)
from benchmarks.floors import run_membw, run_rawread
from benchmarks.worker_passes import run_bigblock, run_verify
from benchmarks.worker_resident import DTYPES, run_cancel, run_gemm, run_hfprefill, run_ppl, run_prefill


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


def run_bloomtui(args: argparse.Namespace) -> dict:
    from transformers import AutoTokenizer  # noqa: F401 - imported before timing, as the hf worker's is

    from bloomtui.engine import DraftSpec, Engine, EngineOptions, SamplingParams
    from bloomtui.engine import events as ev
    from bloomtui.engine.decode.draft_spec import PROMPT_LOOKUP
    from bloomtui.engine.decode.drafting import open_draft

    baseline = rss()
    budget = budget_arg(args.budget, args.model)
    files = weight_files(args.model)
    if args.cold:
        evict(files)
    t0 = time.perf_counter()
    engine = Engine.open(args.model, EngineOptions(ram_budget=budget, threads=args.threads, reads=args.reads))
    # A draft model is held resident beside the target's plan (which stays the plain run's, to compare).
    draft_engine = open_draft(args.draft, EngineOptions()) if args.draft not in (None, PROMPT_LOOKUP) else None
    draft = None if args.draft is None else DraftSpec(draft_engine, args.draft_tokens)
    load_s = time.perf_counter() - t0
    ckpt, plan = engine.model_plan.checkpoint, engine.model_plan.plan
    block_spans = {i: spans(ckpt.blocks[i].values()) for i in plan.streamed_blocks}
    token_spans = []
    if not plan.head_resident:  # the head (and int8 scales) and, when tied, the embedding rows read per token
        token_spans += spans([*ckpt.head_refs, ckpt.embeddings, *filter(None, [ckpt.embedding_scales])])
    evictor = RangeEvictor()
    token_s: list[float] = []
    blocks: list[dict[str, float]] = []
    done: list[ev.Done] = []
    in_pass = {"evict": 0.0, "bytes": 0, "read": 0.0, "wait": 0.0, "compute": 0.0}
    pass_tokens: list[float] = []

    def end_pass() -> None:
        """A pass's tokens (several when drafting) share its time: each gets 1/n of its sums, and of the
        harness's eviction time, which is taken out (it is not the engine's)."""
        n = len(pass_tokens)
        for seconds in pass_tokens:
            token_s.append(seconds - in_pass["evict"] / n)
            blocks.append({k: v / n for k, v in in_pass.items()})
        pass_tokens.clear()
        in_pass.update(evict=0.0, bytes=0, read=0.0, wait=0.0, compute=0.0)

    def sink(event: ev.Event) -> None:
        if isinstance(event, ev.BlockDone):
            if event.index == 0 and pass_tokens:
                end_pass()
            in_pass["bytes"] += event.bytes
            in_pass["read"] += event.read_seconds
            in_pass["wait"] += event.wait_seconds
            in_pass["compute"] += event.compute_seconds
            if args.cold and not event.resident:
                before = evictor.seconds
                for span in block_spans[event.index]:
                    evictor(*span)
                in_pass["evict"] += evictor.seconds - before
        elif isinstance(event, ev.TokenGenerated):
            pass_tokens.append(event.seconds)  # the pass's time / its tokens (generate.py)
            if args.cold:  # outside any token's timing: the engine stamps a token before emitting it
                for span in token_spans:
                    evictor(*span)
        elif isinstance(event, ev.Done):
            done.append(event)

    if args.cold:
        evict(files)
    params = SamplingParams(max_new_tokens=args.tokens, ignore_eos=True)
    prompt = DRAFT_PROMPTS[args.prompt] if args.prompt else PROMPT
    result = engine.generate(prompt, params, on_event=sink, draft=draft)
    end_pass()
    engine.close()
    if draft_engine is not None:
        draft_engine.close()
    evictor.close()
    cfg = engine.config
    prompt_tokens = done[0].prompt_tokens if done else 0
    kv_bytes = 2 * cfg.n_layer * cfg.hidden_size * (prompt_tokens + args.tokens) * engine.dtype.itemsize
    return _gen_result(
        load_s,
        token_s,
        list(result.token_ids),
        baseline,
        budget=engine.model_plan.plan.budget,
        kv_bytes=kv_bytes,
        engine_peak_rss=done[0].peak_rss if done else None,
        bytes_read=done[0].bytes_read if done else None,
        reads=engine.store.reads.path,
        resident_blocks=len(plan.resident_blocks),
        n_blocks=plan.n_blocks,
        head_resident=plan.head_resident,
        plan_bytes=plan.total_bytes,
        blocks=blocks,
        prompt_tokens=prompt_tokens,
        passes=result.passes,
        draft_proposed=result.draft_proposed,
        draft_accepted=result.draft_accepted,
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
        say(f"seed token {step}: {seconds:.2f} s")

    ids = seed_generate(
        args.model, prompt_ids, args.tokens, dtype=DTYPES[args.dtype], cold=args.cold, on_token=on_token
    )
    return _gen_result(0.0, token_s, ids, baseline)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    for kind in ("hf", "accelerate", "bloomtui", "seed"):
        p = sub.add_parser(kind)
        p.add_argument("--model", type=Path, required=True)
        p.add_argument("--tokens", type=int, required=True)
        if kind != "bloomtui":  # bloomtui computes in the dtype its engine picks for the checkpoint
            p.add_argument("--dtype", choices=tuple(DTYPES), default="bfloat16")
        if kind in ("bloomtui", "seed"):
            p.add_argument("--cold", action="store_true")
        if kind == "bloomtui":
            p.add_argument("--threads", type=int, help="torch threads (EngineOptions.threads)")
            p.add_argument("--draft", help="a draft model folder, or prompt-lookup")
            p.add_argument("--draft-tokens", type=int, help="fixed K (default adaptive)")
            p.add_argument("--prompt", choices=tuple(DRAFT_PROMPTS), help="a drafting prompt (default: the SQL one)")
            p.add_argument("--reads", choices=("auto", "direct", "cached"), help="EngineOptions.reads")
        if kind in ("bloomtui", "accelerate"):
            p.add_argument("--budget", required=True, help="bytes, or 'min' for the engine's minimum")
        if kind == "accelerate":
            p.add_argument("--offload-folder", required=True)
    p = sub.add_parser("rawread")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--budget", required=True)
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--cold", action="store_true")
    p.add_argument("--direct", action="store_true", help="O_DIRECT, aligned spans, several reads in flight")
    p.add_argument("--inflight", type=int, default=4)
    p.add_argument("--chunk", type=int, default=READ_CHUNK)
    p = sub.add_parser("verify")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--budget", required=True)
    p.add_argument("--rows", type=int, default=5)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--cold", action="store_true")
    p.add_argument("--threads", type=int)
    p.add_argument("--reads", choices=("auto", "direct", "cached"), help="EngineOptions.reads")
    p = sub.add_parser("membw")
    p.add_argument("--bytes", type=int, default=1 << 30)
    p.add_argument("--reps", type=int, default=7)
    p = sub.add_parser("bigblock")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--context", type=int, default=16)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--rows", help="rows of the few-row passes to time, e.g. 4,16,64 (default 5,9)")
    for kind in ("prefill", "hfprefill", "cancel"):
        p = sub.add_parser(kind)
        p.add_argument("--model", type=Path, required=True)
        p.add_argument("--prompt-tokens", type=int, required=True)
        p.add_argument("--reps", type=int, default=1)
        if kind == "prefill":
            p.add_argument("--path", choices=("auto", "native", "upcast", "other"), default="auto")
            p.add_argument("--engine-root", type=Path, help="import bloomtui from this folder (an older engine)")
        if kind == "hfprefill":
            p.add_argument("--dtype", choices=tuple(DTYPES), default="bfloat16")
        else:
            p.add_argument("--threads", type=int)
        if kind == "cancel":
            p.add_argument("--after", type=float, default=2.0)
    p = sub.add_parser("ppl")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--text", type=Path, required=True)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--chars", type=int, default=0, help="score only the text's first N characters (0: all)")
    p.add_argument("--threads", type=int)
    p = sub.add_parser("gemm")
    p.add_argument("--size", type=int, default=3072)
    p.add_argument("--reps", type=int, default=3)
    return parser


RUNNERS = {
    "hf": run_hf,
    "accelerate": run_accelerate,
    "bloomtui": run_bloomtui,
    "seed": run_seed,
    "rawread": run_rawread,
    "membw": run_membw,
    "bigblock": run_bigblock,
    "verify": run_verify,
    "prefill": run_prefill,
    "hfprefill": run_hfprefill,
    "cancel": run_cancel,
    "ppl": run_ppl,
    "gemm": run_gemm,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "engine_root", None):
        sys.path.insert(0, str(args.engine_root))  # before anything imports bloomtui
    _emit(RUNNERS[args.kind](args))
    return 0


if __name__ == "__main__":
    status = main()
    # Without the interpreter's teardown: with torch loaded it takes 1-2 s, and the harness runs dozens of workers.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
