"""Tokens/s with and without a draft (chains, and token trees of several budgets), greedy, the target
streamed under a budget of 1/4 of its size.

    python -m benchmarks.draft_speed bloomtui/demo_models/trained [--draft bloomtui/demo_models/trained-draft]

Each case runs once to warm up, then `--repeats` times; the median decode tokens/s is reported with the
passes over the target's weights and the acceptance rate, and the ids are checked against the plain run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from benchmarks.common import DRAFT_PROMPTS as PROMPTS
from benchmarks.common import commit_stamp, update_section
from bloomtui.engine import Engine, EngineOptions, SamplingParams
from bloomtui.engine.checkpoint import Checkpoint
from bloomtui.engine.drafting import DraftSpec, open_draft
from bloomtui.engine.events import Done
from bloomtui.engine.generate import compute_dtype
from bloomtui.engine.residency import budget_for, minimum_budget

BEGIN, END = "<!-- trees:begin -->", "<!-- trees:end -->"


def quarter_budget(model: str) -> int:
    ckpt = Checkpoint.open(model)
    itemsize = compute_dtype(ckpt.dtype, None).itemsize
    return max(minimum_budget(ckpt, itemsize), budget_for(ckpt, itemsize, ckpt.n_blocks) // 4)


def measure(engine: Engine, prompt: str, params: SamplingParams, draft: DraftSpec | None, repeats: int) -> list[Done]:
    engine.generate(prompt, params, draft=draft)
    runs = []
    for _ in range(repeats):
        result = engine.generate(prompt, params, draft=draft)
        assert isinstance(result, Done)
        runs.append(result)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--draft", help="draft model folder (prompt lookup is always measured)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--update", type=Path, metavar="MD", help="also write the table into MD's trees section")
    args = parser.parse_args()
    budget = quarter_budget(args.model)
    engine = Engine.open(args.model, EngineOptions(ram_budget=budget))
    plan = engine.model_plan.plan
    setting = (
        f"target {args.model}: budget {budget} B, {len(plan.streamed_blocks)}/{plan.n_blocks} blocks streamed, "
        f"head {'resident' if plan.head_resident else 'streamed'}, warm, {args.max_new_tokens} tokens, "
        f"median of {args.repeats}"
    )
    print(setting)
    lines = []
    drafts: dict[str, DraftSpec | None] = {
        "plain": None,
        "prompt-lookup chain": DraftSpec(tree="off"),
        "prompt-lookup tree auto": DraftSpec(),
    }
    draft_engine = None
    if args.draft:
        draft_engine = open_draft(args.draft, EngineOptions())
        for tree in ("off", "auto", 8, 16, 32, 64):
            drafts[f"draft-model {'chain' if tree == 'off' else f'tree {tree}'}"] = DraftSpec(draft_engine, tree=tree)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, ignore_eos=True)
    lines += ["| prompt | draft | decode tok/s | vs plain | passes | tokens | accepted/proposed | same ids |"]
    lines += ["|---|---|---|---|---|---|---|---|"]
    print(*lines, sep="\n")
    t0 = time.perf_counter()
    for label, prompt in PROMPTS.items():
        base = None
        for name, spec in drafts.items():
            runs = measure(engine, prompt, params, spec, args.repeats)
            speed = statistics.median(r.tokens_per_second for r in runs)
            r = runs[0]
            base = base or (speed, r.token_ids)
            rate = f"{r.draft_accepted}/{r.draft_proposed}" if spec else "-"
            lines.append(
                f"| {label} | {name} | {speed:.1f} | {speed / base[0]:.2f}x | {r.passes} | {r.new_tokens} | "
                f"{rate} | {r.token_ids == base[1]} |"
            )
            print(lines[-1])
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.update:
        command = "python -m benchmarks.draft_speed " + " ".join(
            [args.model, *(["--draft", args.draft] if args.draft else [])]
            + ["--max-new-tokens", str(args.max_new_tokens), "--repeats", str(args.repeats)]
        )
        head = [BEGIN, "## Token trees", "", f"`{command}` ({commit_stamp()}): {setting}.", ""]
        update_section(args.update, "\n".join([*head, *lines, "", END]), BEGIN, END)
    engine.close()
    if draft_engine is not None:
        draft_engine.close()


if __name__ == "__main__":
    main()
