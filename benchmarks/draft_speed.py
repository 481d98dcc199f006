"""Tokens/s with and without a draft (chains, and token trees of several budgets), greedy, the target
streamed under a budget of 1/4 of its size.

    python -m benchmarks.draft_speed bloomtui/demo_models/trained [--draft bloomtui/demo_models/trained-draft]
        [--states warm,cold]

Each case runs once to warm up, then `--repeats` times; the median decode tokens/s is reported with the
passes over the target's weights and the acceptance rate, and the ids are checked against the plain run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from benchmarks.common import DRAFT_PROMPTS as PROMPTS
from benchmarks.common import Section, commit_stamp, cpu_summary
from bloomtui.engine import Engine, EngineOptions, SamplingParams
from bloomtui.engine.decode.draft_spec import DraftSpec
from bloomtui.engine.decode.drafting import open_draft
from bloomtui.engine.events import Done
from bloomtui.engine.plan.model_plan import compute_dtype
from bloomtui.engine.plan.residency import budget_for, minimum_budget
from bloomtui.engine.stream.open_model import OpenModel
from bloomtui.engine.weights.checkpoint import Checkpoint

SECTION = Section("trees")


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


STATES = {"warm": "cached", "cold": "direct"}
"""Warm: the streamed blocks stay in the page cache. Cold: O_DIRECT reads them from the disk on every pass."""


def cases(draft_engine: OpenModel | None) -> dict[str, DraftSpec | None]:
    drafts: dict[str, DraftSpec | None] = {
        "plain": None,
        "prompt-lookup chain": DraftSpec(tree="off"),
        "prompt-lookup tree auto": DraftSpec(tree="auto"),
    }
    if draft_engine is not None:
        for tree in ("off", "auto", 8, 16, 32, 64):
            drafts[f"draft-model {'chain' if tree == 'off' else f'tree {tree}'}"] = DraftSpec(draft_engine, tree=tree)
    return drafts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--draft", help="draft model folder (prompt lookup is always measured)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--states", default="warm,cold", help="warm, cold (O_DIRECT reads every pass), or both")
    parser.add_argument("--update", type=Path, metavar="MD", help="also write the table into MD's trees section")
    args = parser.parse_args()
    states = [state for state in args.states.split(",") if state]
    if not states or any(state not in STATES for state in states):
        parser.error(f"--states: a comma-separated list of {', '.join(STATES)}")
    budget = quarter_budget(args.model)
    draft_engine = open_draft(args.draft, EngineOptions()) if args.draft else None
    params = SamplingParams(max_new_tokens=args.max_new_tokens, ignore_eos=True)
    lines = [
        "| prompt | state | draft | decode tok/s | vs plain | passes | tokens/pass | accepted/proposed | same ids |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    print(*lines, sep="\n")
    setting = ""
    t0 = time.perf_counter()
    for state in states:
        engine = Engine.open(args.model, EngineOptions(ram_budget=budget, reads=STATES[state]))
        plan = engine.model_plan.plan
        setting = (
            f"target {args.model}: budget {budget} B, {len(plan.streamed_blocks)}/{plan.n_blocks} blocks streamed, "
            f"head {'resident' if plan.head_resident else 'streamed'}; {args.max_new_tokens} tokens, greedy, "
            f"median of {args.repeats} after a warm-up run"
        )
        for label, prompt in PROMPTS.items():
            base = None
            for name, spec in cases(draft_engine).items():
                runs = measure(engine, prompt, params, spec, args.repeats)
                speed = statistics.median(r.tokens_per_second for r in runs)
                r = runs[0]
                base = base or (speed, r.token_ids)
                rate = f"{r.draft_accepted}/{r.draft_proposed}" if spec else "-"
                lines.append(
                    f"| {label} | {state} | {name} | {speed:.1f} | {speed / base[0]:.2f}x | {r.passes} | "
                    f"{r.new_tokens / r.passes:.2f} | {rate} | {r.token_ids == base[1]} |"
                )
                print(lines[-1])
        engine.close()
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.update:
        command = "python -m benchmarks.draft_speed " + " ".join(
            [args.model, *(["--draft", args.draft] if args.draft else [])]
            + ["--max-new-tokens", str(args.max_new_tokens), "--repeats", str(args.repeats), "--states", args.states]
        )
        head = [
            "## Token trees",
            "",
            f"`{command}` ({commit_stamp()}, {cpu_summary()}): {setting}. Warm: the streamed blocks stay in the page "
            "cache; cold: O_DIRECT reads them from the disk on every pass (on a VM the host may still cache the "
            "disk). The draft model is held resident beside the budget.",
            "",
        ]
        SECTION.update(args.update, SECTION.text([*head, *lines, ""]))
    if draft_engine is not None:
        draft_engine.close()


if __name__ == "__main__":
    main()
