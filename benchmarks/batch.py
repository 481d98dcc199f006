"""Several sequences per weight pass (issue 17): aggregate tokens/s against N, and batched perplexity.

    python -m benchmarks.batch [--sizes 1,2,4,8,16] [--tokens 16] [--repeats 2] [--ppl-tokens 16384]
                               [--skip-ppl] [--work DIR] [--update BENCHMARKS.md]

bloom-560m's shape in bf16, in three settings: resident (every weight in RAM), streamed warm (a budget of ~1/4
of the model, its streamed blocks in the page cache: `--reads cached`) and streamed cold (the same budget,
`--reads direct`: every pass reads its blocks from the disk, past the page cache). Each point is N samples of
one prompt (temperature 0.8, seed 0, `--tokens` each) in a fresh process, whose peak RSS is its own.
Aggregate tokens/s = the tokens after each sequence's first / the decode wall time (the passes after the
prefill). Points run in order of N within a repeat, settings interleaved, so drift hits all alike.

Perplexity: a text of `--ppl-tokens` tokens in windows of each `--ppl-contexts` length, streamed warm and
cold, one window per pass against the default batch (several windows per pass), each in a fresh process; the
NLL must be the same.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.checkpoints import ensure, full_specs
from benchmarks.common import (
    BIG_BUDGET,
    REPO,
    RESULT_TAG,
    Section,
    commit_stamp,
    cpu_summary,
    long_prompt,
    peak_rss,
    say,
    table_head,
)
from benchmarks.jobs import BLOOMTUI_ENV, DEFAULT_WORK

SECTION = Section("batch")
SETTINGS = {"resident": (None, None), "streamed warm": ("quarter", "cached"), "streamed cold": ("quarter", "direct")}
PROMPT = "The history of the printing press begins"
PLOT = Path("benchmarks/results/batch-tokens.svg")


def _quarter(model: Path) -> int:
    from benchmarks.draft_speed import quarter_budget

    return quarter_budget(str(model))


def worker_generate(model: Path, n: int, tokens: int, budget: int | None, reads: str | None) -> dict:
    from bloomtui.engine import Engine, EngineOptions, SamplingParams
    from bloomtui.engine.sampling_params import sample_params

    engine = Engine.open(model, EngineOptions(ram_budget=budget or BIG_BUDGET, reads=reads))
    params = SamplingParams(max_new_tokens=tokens, temperature=0.8, seed=0, ignore_eos=True)
    engine.generate(PROMPT, SamplingParams(max_new_tokens=2))  # warms the page cache (and torch) for all
    results = engine.generate_many([PROMPT] * n, sample_params(params, n))
    cfg, plan = engine.config, engine.model_plan.plan
    engine.close()
    decode = max(r.decode_seconds for r in results)
    after_first = sum(r.new_tokens - 1 for r in results)
    positions = len(engine.encode(PROMPT)) + tokens
    return {
        "n": n,
        "decode_s": decode,
        "prefill_s": max(r.prefill_seconds for r in results),
        "tokens_per_s": after_first / decode,
        "passes": max(r.passes for r in results),
        "bytes_read": max(r.bytes_read for r in results),
        "peak_rss": peak_rss(),
        "plan_bytes": plan.total_bytes,
        "kv_bytes": n * 2 * cfg.n_layer * cfg.hidden_size * positions * engine.dtype.itemsize,
        "reads": engine.store.reads.path,
        "distinct": len({r.token_ids for r in results}),
    }


def worker_ppl(model: Path, text: Path, batch: int | None, budget: int, reads: str, context: int) -> dict:
    from bloomtui.engine import Engine, EngineOptions

    engine = Engine.open(model, EngineOptions(ram_budget=budget, reads=reads))
    body = text.read_text(encoding="utf-8")
    engine.perplexity(body[:2000], 256)  # warm-up: torch and the page cache
    t0 = time.perf_counter()
    scored = engine.perplexity(body, context, batch=batch)
    seconds = time.perf_counter() - t0
    engine.close()
    return {
        "seconds": seconds,
        "nll": scored.nll,
        "tokens": scored.tokens,
        "batch": scored.batch,
        "peak_rss": peak_rss(),
    }


def _spawn(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.batch", "worker", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **BLOOMTUI_ENV},
        timeout=1800,
    )
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    raise RuntimeError(f"worker {' '.join(args)} failed:\n{proc.stderr[-2000:]}")


def _budget_args(model: Path, budget: str | None) -> list[str]:
    return ["--budget", str(_quarter(model))] if budget == "quarter" else []


def plot_svg(points: dict[str, dict[int, float]], path: Path) -> None:
    """Aggregate tokens/s against N, one line per setting, log2 x axis: a plain SVG (no plotting library)."""
    import math

    width, height, left, bottom, top, right = 560, 300, 60, 40, 20, 150
    sizes = sorted({n for pts in points.values() for n in pts})
    ymax = max(v for pts in points.values() for v in pts.values()) * 1.1
    x_of = lambda n: left + (width - left - right) * (math.log2(n) / max(1, math.log2(sizes[-1])))  # noqa: E731
    y_of = lambda v: height - bottom - (height - bottom - top) * v / ymax  # noqa: E731
    colors = ["#1f77b4", "#d62728", "#2ca02c"]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>',
        f'<text x="{(width - right + left) / 2}" y="{height - 8}" text-anchor="middle">sequences per pass (N)</text>',
        f'<text x="14" y="{(height - bottom + top) / 2}" transform="rotate(-90 14 {(height - bottom + top) / 2})" '
        'text-anchor="middle">aggregate tokens/s</text>',
    ]
    for n in sizes:
        out.append(f'<text x="{x_of(n)}" y="{height - bottom + 16}" text-anchor="middle">{n}</text>')
    for k in range(5):
        v = ymax * k / 4
        out.append(f'<text x="{left - 6}" y="{y_of(v) + 4}" text-anchor="end">{v:.0f}</text>')
        out.append(f'<line x1="{left}" y1="{y_of(v)}" x2="{width - right}" y2="{y_of(v)}" stroke="#ddd"/>')
    for (name, pts), color in zip(points.items(), colors, strict=False):
        xy = " ".join(f"{x_of(n):.1f},{y_of(v):.1f}" for n, v in sorted(pts.items()))
        out.append(f'<polyline points="{xy}" fill="none" stroke="{color}" stroke-width="2"/>')
        for n, v in pts.items():
            out.append(f'<circle cx="{x_of(n):.1f}" cy="{y_of(v):.1f}" r="3" fill="{color}"/>')
        last = max(pts)
        out.append(f'<text x="{width - right + 8}" y="{y_of(pts[last]) + 4}" fill="{color}">{name}</text>')
    out.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")


def medians(gen: dict[str, dict[int, list[dict]]]) -> dict[str, dict[int, float]]:
    return {s: {n: statistics.median(r["tokens_per_s"] for r in rs) for n, rs in pts.items()} for s, pts in gen.items()}


def knee(points: dict[int, float]) -> int:
    """The N past which doubling the sequences adds less than half again to the aggregate rate."""
    sizes = sorted(points)
    for a, b in zip(sizes, sizes[1:], strict=False):
        if points[b] < 1.5 * points[a]:
            return a
    return sizes[-1]


def section(
    gen: dict[str, dict[int, list[dict]]], ppl: dict[str, dict[str, list[dict]]], args: argparse.Namespace
) -> str:
    med = medians(gen)
    sizes = sorted(next(iter(gen.values())))
    ppl_args = " --skip-ppl" if args.skip_ppl else f" --ppl-tokens {args.ppl_tokens} --ppl-contexts {args.ppl_contexts}"
    lines = [
        "## Several sequences per pass",
        "",
        f"`python -m benchmarks.batch --sizes {args.sizes} --tokens {args.tokens} --repeats {args.repeats}"
        f"{ppl_args}` ({commit_stamp()}, "
        f"{cpu_summary()}): bloom-560m's shape in bf16, N samples of one prompt side by side (temperature 0.8), "
        f"{args.tokens} tokens each; aggregate decode tokens/s (median of {args.repeats}), and ÷ N = 1 of the same "
        "setting. Streamed: budget ~1/4 of the model; warm = blocks in the page cache (`--reads cached`), "
        "cold = every pass from the disk (`--reads direct`).",
        "",
        f"![aggregate tokens/s against N]({PLOT.as_posix()})",
        "",
        *table_head("setting", *(f"N={n}" for n in sizes), "knee"),
    ]
    for s, pts in med.items():
        cells = [f"{pts[n]:.1f} ({pts[n] / pts[1]:.2f}x)" for n in sizes]
        lines.append(f"| {s} | " + " | ".join(cells) + f" | N={knee(pts)} |")
    lines += ["", "Peak RSS against the bound budget + N KV caches + 600 MB (largest N of each setting):", ""]
    lines += ["| setting | N | peak RSS | budget + N KV + 600 MB | within |", "|---|---|---|---|---|"]
    for s, pts in gen.items():
        r = max(pts[sizes[-1]], key=lambda r: r["peak_rss"])
        bound = r["plan_bytes"] + r["kv_bytes"] + 600 * 1000**2
        lines.append(
            f"| {s} | {sizes[-1]} | {r['peak_rss'] / 1e6:.0f} MB | {bound / 1e6:.0f} MB | "
            f"{'yes' if r['peak_rss'] <= bound else '**no**'} |"
        )
    if ppl:
        lines += ["", f"Perplexity of {args.ppl_tokens} tokens, streamed (median s):", ""]
        lines += ["| setting | 1 window per pass | default batch | speed-up | same NLL |", "|---|---|---|---|---|"]
        for s, runs in ppl.items():
            one, many = (statistics.median(r["seconds"] for r in runs[k]) for k in ("1", "default"))
            same = all(abs(r["nll"] - runs["1"][0]["nll"]) <= 1e-6 * runs["1"][0]["nll"] for r in runs["default"])
            batch = runs["default"][0]["batch"]
            lines.append(f"| {s} | {one:.1f} | {many:.1f} ({batch} per pass) | {one / many:.2f}x | {same} |")
    goals = (
        "Goals (issue 17): streamed, 4 sequences >= 3.2x the aggregate tokens/s of 1 and 8 >= 5.5x; resident 4 >= "
        "1.5x; perplexity of a 16k-token file streamed >= 2.5x faster than one window per pass."
    )
    return SECTION.text([*lines, "", goals])


def main() -> None:
    parser = Section.parser(__doc__)
    parser.add_argument("--sizes", default="1,2,4,8,16")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ppl-tokens", type=int, default=16384)
    parser.add_argument("--ppl-contexts", default="1024,128", help="window lengths to score with")
    parser.add_argument("--skip-ppl", action="store_true")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = parser.parse_args()
    model = ensure(full_specs()["bf16"], args.work)
    sizes = [int(x) for x in args.sizes.split(",")]
    gen: dict[str, dict[int, list[dict]]] = {s: {} for s in SETTINGS}
    for _ in range(args.repeats):
        for n in sizes:
            for name, (budget, reads) in SETTINGS.items():
                extra = _budget_args(model, budget) + (["--reads", reads] if reads else [])
                r = _spawn("generate", str(model), "--n", str(n), "--tokens", str(args.tokens), *extra)
                gen[name].setdefault(n, []).append(r)
                say(f"{name} N={n}: {r['tokens_per_s']:.1f} tokens/s ({r['reads'] or 'resident'})")
    ppl: dict[str, dict[str, list[dict]]] = {}
    if not args.skip_ppl:
        from transformers import AutoTokenizer

        text = Path(tempfile.mkdtemp()) / "ppl.txt"
        text.write_text(long_prompt(AutoTokenizer.from_pretrained(str(model)), args.ppl_tokens), encoding="utf-8")
        for _ in range(max(1, args.repeats - 1)):
            for context in (int(c) for c in args.ppl_contexts.split(",")):
                for name, (budget, reads) in list(SETTINGS.items())[1:]:
                    for batch in ("1", "default"):
                        extra = _budget_args(model, budget) + ["--reads", str(reads), "--context", str(context)]
                        extra += ["--batch", batch] if batch != "default" else []
                        r = _spawn("ppl", str(model), "--text", str(text), *extra)
                        ppl.setdefault(f"{name}, windows of {context}", {}).setdefault(batch, []).append(r)
                        say(f"ppl {name} context {context} batch {batch}: {r['seconds']:.1f} s (batch {r['batch']})")
    plot_svg(medians(gen), REPO / PLOT)
    (REPO / "benchmarks" / "results" / "batch.json").write_text(
        json.dumps({"generate": gen, "ppl": ppl}, indent=1) + "\n"
    )
    SECTION.publish(section(gen, ppl, args), args.update)


def worker_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="benchmarks.batch worker")
    parser.add_argument("kind", choices=("generate", "ppl"))
    parser.add_argument("model", type=Path)
    parser.add_argument("--n", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--budget", type=int)
    parser.add_argument("--reads")
    parser.add_argument("--text", type=Path)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--context", type=int, default=1024)
    a = parser.parse_args(argv)
    if a.kind == "generate":
        result = worker_generate(a.model, a.n, a.tokens, a.budget, a.reads)
    else:
        result = worker_ppl(a.model, a.text, a.batch, a.budget, a.reads, a.context)
    print(RESULT_TAG + json.dumps(result), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        worker_main(sys.argv[2:])
    else:
        main()
