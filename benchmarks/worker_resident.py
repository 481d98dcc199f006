"""Workers that time a model wholly in RAM: prefill on bloomtui's paths and transformers', cancel latency,
perplexity, and torch's GEMM peak (`python -m benchmarks.worker prefill|hfprefill|cancel|ppl|gemm`)."""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import BIG_BUDGET, long_prompt

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def _force_path(path: str) -> None:
    """Force how many-row passes multiply: 'upcast' (fp32 tiles), 'native' (the dtype's own GEMM), or 'other'
    (whichever bf16 weights would not get in this process: the choice depends on the thread count)."""
    if path == "auto":
        return
    from bloomtui.engine import generate
    from bloomtui.engine.compute.cpu_profile import multiplies_upcast

    if path == "other":
        path = "native" if multiplies_upcast(torch.bfloat16) else "upcast"
    generate.Engine.upcast = property(lambda self, up=path == "upcast": up)


def _bloomtui_prompt(engine, tokens: int) -> tuple[str, list[int]]:  # noqa: ANN001 - an Engine
    prompt = long_prompt(engine.tokenizer, tokens)
    return prompt, engine.encode(prompt)


def run_prefill(args: argparse.Namespace) -> dict:
    """Time to first token of a long prompt, fully resident: embed, every block, ln_f, the head for one row."""
    from bloomtui.engine import Engine, EngineOptions, SamplingParams

    _force_path(args.path)
    engine = Engine.open(args.model, EngineOptions(ram_budget=BIG_BUDGET, threads=args.threads))
    prompt, ids = _bloomtui_prompt(engine, args.prompt_tokens)
    one = SamplingParams(max_new_tokens=1, ignore_eos=True)
    engine.generate(long_prompt(engine.tokenizer, 64), one)  # warm-up: kernels, allocator
    seconds = []
    for _ in range(args.reps):
        done = engine.generate(prompt, one)
        seconds.append(done.prefill_seconds)
    upcast = getattr(engine, "upcast", None)  # None: an engine from before the per-machine choice
    engine.close()
    try:
        from bloomtui.engine.compute.cpu_profile import cpu_profile

        profile = cpu_profile()
        chosen, described = profile.upcast_bf16, profile.describe()
    except ImportError:
        chosen, described = None, "n/a (engine before cpu_profile)"
    return {
        "prefill_s": statistics.median(seconds),
        "runs_s": seconds,
        "prompt_tokens": len(ids),
        "upcast": upcast,
        "path": args.path,
        "chosen_upcast": chosen,
        "profile": described,
        "dtype": str(engine.dtype).removeprefix("torch."),
        "ids": ids[:8],
    }


def run_hfprefill(args: argparse.Namespace) -> dict:
    """transformers' forward of the same prompt ids in one model() call; logits for the last position only
    (logits_to_keep=1, as its generate() does for prefill and as bloomtui computes them)."""
    from transformers import AutoTokenizer, BloomForCausalLM

    model = BloomForCausalLM.from_pretrained(args.model, dtype=DTYPES[args.dtype]).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    ids = tokenizer(long_prompt(tokenizer, args.prompt_tokens))["input_ids"]
    seconds = []
    with torch.inference_mode():
        model(torch.tensor([ids[:64]]), logits_to_keep=1)  # warm-up
        for _ in range(args.reps):
            t0 = time.perf_counter()
            model(torch.tensor([ids]), logits_to_keep=1)
            seconds.append(time.perf_counter() - t0)
    return {"prefill_s": statistics.median(seconds), "runs_s": seconds, "prompt_tokens": len(ids), "ids": ids[:8]}


def run_cancel(args: argparse.Namespace) -> dict:
    """Start generate on a long prompt in a thread, set the cancel event after `--after` s, time until it returns."""
    import threading

    from bloomtui.engine import Engine, EngineOptions, SamplingParams
    from bloomtui.engine.events import Cancelled

    engine = Engine.open(args.model, EngineOptions(ram_budget=BIG_BUDGET, threads=args.threads))
    prompt, ids = _bloomtui_prompt(engine, args.prompt_tokens)
    latencies, cancelled = [], []
    for _ in range(args.reps):
        cancel = threading.Event()
        result: list = []
        thread = threading.Thread(
            target=lambda c=cancel, r=result: r.append(
                engine.generate(prompt, SamplingParams(max_new_tokens=4, ignore_eos=True), cancel=c)
            )
        )
        thread.start()
        time.sleep(args.after)
        t0 = time.perf_counter()
        cancel.set()
        thread.join()
        latencies.append(time.perf_counter() - t0)
        cancelled.append(bool(result) and isinstance(result[0], Cancelled))
    engine.close()
    return {"latency_s": latencies, "cancelled": cancelled, "after_s": args.after, "prompt_tokens": len(ids)}


# --- quality ----------------------------------------------------------------------------------------------

QUALITY_PROMPT = "The for statement in Python differs a bit from what you may be used to in C or Pascal."


def run_ppl(args: argparse.Namespace) -> dict:
    from bloomtui.engine import Engine, EngineOptions, SamplingParams

    engine = Engine.open(args.model, EngineOptions(ram_budget=BIG_BUDGET, threads=args.threads))
    text = Path(args.text).read_text(encoding="utf-8")
    text = text[: args.chars] if args.chars else text
    scored = engine.perplexity(text, args.context)
    done = engine.generate(QUALITY_PROMPT, SamplingParams(max_new_tokens=args.tokens, ignore_eos=True))
    engine.close()
    scheme = engine.model_plan.checkpoint.scheme
    return {
        "perplexity": scored.perplexity,
        "nll": scored.nll,
        "tokens": scored.tokens,
        "windows": scored.windows,
        "seconds": scored.seconds,
        "ids": list(done.token_ids),
        "text": done.text,
        "weights": scheme.weights if scheme else "as stored",
        "group_size": scheme.group_size if scheme else None,
    }


def run_gemm(args: argparse.Namespace) -> dict:
    """GFLOPS of torch.matmul (M x K by K x N) in bf16 and fp32: the peak a prefill could approach."""
    m = n = k = args.size
    out = {"size": args.size}
    for name, dtype in DTYPES.items():
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        torch.matmul(a, b)  # warm-up
        best = math.inf
        for _ in range(args.reps):
            t0 = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - t0)
        out[f"{name}_gflops"] = 2 * m * n * k / best / 1e9
    return out
