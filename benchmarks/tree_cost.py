"""What a token tree's rows cost, and BLOOM-176B projected with trees against chains.

    python -m benchmarks.tree_cost [--rows 2,5,9,17,33,65] [--reps 3] [--update BENCHMARKS.md]

Measured: one verify pass of R rows against a one-row pass (`worker verify`, alternating in one process), on the
bloom-560m-shaped bf16 checkpoint streamed at 1/4 of its size, warm (blocks in the page cache) and cold (each
streamed block evicted after use), and wholly resident (what a bloom-560m draft's round of R rows costs).
Projected: BLOOM-176B with bloom-560m drafting, from the 176B-width block compute saved in
benchmarks/results/full.json and the resident curve measured here.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

from benchmarks import projection as proj
from benchmarks.checkpoints import ensure, full_specs
from benchmarks.common import BIG_BUDGET, Section, commit_stamp, cpu_summary, quarter_bytes, say, table_head
from benchmarks.jobs import BLOOMTUI_ENV, DEFAULT_WORK, Job, run_job
from benchmarks.report_drafting import best_k, interpolate, rows_compute
from bloomtui.engine.decode.tree_budget import BRANCH, Choice, TreeBudget

SECTION = Section("tree-cost")
STATES = ("cold", "warm", "resident")
RESULTS = Path(__file__).resolve().parent / "results" / "full.json"
ACCEPTANCE = (0.5, 0.7, 0.9)
SIBLING = 0.31
"""A later sibling's chance to be kept once those before it were rejected, in the projection: the shipped
(distilled) draft's first choice is the target's 60% of the time and one of its top 4 87% (training/README.md),
so (1 - 0.87) = 0.40 (1 - s)^3."""
SAVED = Path(__file__).resolve().parent / "results" / "tree-cost.json"
VERIFY_32_TARGET = 1.3


def measure(model: Path, rows: list[int], reps: int, timeout: float, say: Callable[[str], None]) -> dict:
    """{state: {R: (one-row s, R-row s)}} medians over the in-process pairs."""
    quarter = quarter_bytes(model)
    budgets = {"cold": quarter, "warm": quarter, "resident": BIG_BUDGET}
    out: dict[str, dict[int, tuple[float, float]]] = {state: {} for state in STATES}
    for state in STATES:
        for r in rows:
            args = ["verify", "--model", str(model), "--budget", str(budgets[state]), "--rows", str(r)]
            job = Job(f"{state} {r}", "tree", [*args, "--reps", str(reps), *(["--cold"] if state == "cold" else [])],
                      1, timeout, dict(BLOOMTUI_ENV))  # fmt: skip
            run_job(job)
            if not job.runs:
                say(f"{state} {r} rows: {job.errors}")
                continue
            run = job.runs[0]
            out[state][r] = statistics.median(run["one_row_s"]), statistics.median(run["rows_s"])
            say(f"{state} {r} rows: {out[state][r][1]:.3f} s vs 1 row {out[state][r][0]:.3f} s")
    out["quarter"] = quarter  # type: ignore[assignment]
    return out


def profile(first: float) -> TreeBudget:
    """A budget whose positional acceptance is `first` for the draft's first choice, SIBLING for later ones."""
    budget = TreeBudget(None, draft_costs=True)
    budget.tried = [1e6] * BRANCH
    budget.kept = [first * 1e6] + [SIBLING * 1e6] * (BRANCH - 1)
    return budget


def best_tree(
    budget: TreeBudget, pass_s: Callable[[int], float], round_s: Callable[[int], float]
) -> tuple[Choice, float]:
    """The candidate tree with the fewest seconds per expected token: a pass of 1 + nodes rows, and a draft round
    per level (the first feeds the accepted tokens, about one row; each later one a level's nodes)."""

    def seconds(choice: Choice) -> float:
        rounds = round_s(1) + sum(round_s(n) for n in choice.levels[:-1])
        return (pass_s(1 + choice.nodes) + rounds) / choice.expected_tokens

    best = min(budget.shapes(), key=seconds)
    return best, seconds(best)


def _extrapolated(points: dict[int, float]) -> Callable[[int], float]:
    """Linear between measured row counts, and beyond the last along the last two points' slope."""
    xs = sorted(points)

    def at(rows: int) -> float:
        if rows <= xs[-1] or len(xs) < 2:
            return interpolate(points, rows)
        a, b = xs[-2], xs[-1]
        return points[b] + (points[b] - points[a]) * (rows - b) / (b - a)

    return at


def projection(resident: dict[int, tuple[float, float]]) -> list[str]:
    if not RESULTS.is_file() or not resident:
        return ["(No saved 176B-width runs or resident curve: projection left out.)"]
    big = json.loads(RESULTS.read_text()).get("big") or {}
    rounds = {1: statistics.median(one for one, _ in resident.values()), **{r: s for r, (_, s) in resident.items()}}
    round_s = _extrapolated(rounds)
    lines = [
        "| weights | disk | plain s/token | " + " | ".join(f"a = {a}: chain / tree" for a in ACCEPTANCE) + " |",
        "|---|---|---|" + "---|" * len(ACCEPTANCE),
    ]
    for weights, key in (("bf16", "bigblock"), ("int4", "bigblock_int4")):
        runs = (big.get(key) or {}).get("runs") or []
        if not runs:
            continue
        compute = _extrapolated(rows_compute(runs[0]))
        block_b, head_b = proj.sizes(weights)
        bw_here = runs[0]["block_bytes"] / statistics.median(runs[0]["read_s"])
        for bw, disk in ((bw_here, f"{bw_here / 1e9:.2f} GB/s (saved run)"), (7e9, "7 GB/s")):
            plain = proj.project(10 * 10**9, bw, compute(1), weights)
            if plain is None:
                continue

            def pass_s(rows: int, plain=plain, compute=compute, block_b=block_b, head_b=head_b) -> float:  # noqa: ANN001
                c = compute(rows)
                return max(plain.read_s, proj.N_BLOCKS * c + head_b * c / block_b)

            cells = []
            for a in ACCEPTANCE:
                k, chain_s = best_k(pass_s, round_s(1), a)
                tree, tree_s = best_tree(profile(a), pass_s, round_s)
                shape = "/".join(map(str, tree.levels))
                cells.append(
                    f"{chain_s:.3g} s (K={k}) / **{tree_s:.3g}** s ({tree.nodes} nodes, {shape}; "
                    f"{plain.overlapped_s / tree_s:.1f}x plain)"
                )
            lines.append(f"| {weights} | {disk} | {plain.overlapped_s:.3g} | " + " | ".join(cells) + " |")
    return lines


def section(measured: dict, args: argparse.Namespace, model: Path, stamp: str) -> str:
    rows = sorted({r for state in STATES for r in measured[state]})
    command = f"python -m benchmarks.tree_cost --rows {','.join(map(str, args.rows))} --reps {args.reps}"
    out = [
        "## Token trees: what rows cost, and BLOOM-176B with trees",
        "",
        f"`{command}` ({stamp}). One process per cell: after a prefill, passes of 1 "
        f"row and of R rows alternate, {args.reps} of each; medians. `{model.name}` streamed at 1/4 of its size "
        f"({measured['quarter'] / 1e6:.0f} MB: cold evicts each streamed block after use, warm leaves it in the "
        "page cache) and wholly resident (the price of a bloom-560m draft's round of R rows). The rows are a "
        "chain's; a tree's differ only in the attention mask.",
        "",
        *table_head("rows", *(f"{s} {what}" for s in STATES for what in ("s/pass", "÷ 1 row"))),
    ]
    for r in rows:
        cells = []
        for state in STATES:
            one, many = measured[state].get(r, (float("nan"), float("nan")))
            cells.append(f"{many:.3f} | {many / one:.2f}x")
        out.append(f"| {r} | " + " | ".join(cells) + " |")
    for r in (33,):
        if r in measured["cold"]:
            one, many = measured["cold"][r]
            met = "met" if many / one <= VERIFY_32_TARGET else "not met"
            out += ["", f"Goal: a pass of 32 tree rows (33 with the root) <= {VERIFY_32_TARGET}x a one-row pass, "
                    f"cold: **{many / one:.2f}x**, {met}."]  # fmt: skip
    out += [
        "",
        "### BLOOM-176B with bloom-560m drafting: chains against trees, projected",
        "",
        "A pass of R rows: T(R) = max(S / bw, 70 c(R) + E c(R) / B) as in the chain projection above, with c(R) the "
        "176B-width block's compute saved in benchmarks/results/full.json for R = 1, 5, 9 (beyond 9, along the "
        "5-9 slope). A draft round of R rows: the resident bloom-560m pass measured above. Chain: each drafted "
        "token kept with probability a, the best K in 1..8. Tree: the draft's first choice kept with probability "
        f"a, each later sibling with {SIBLING} once those before it were rejected (from the shipped pair's top-1 "
        "and top-4 agreement); the tree is the one `--draft-tree auto` would choose among its candidates (budgets "
        "up to 64 nodes, depth limits 1-10), a round per level. Shape: nodes per depth. RAM budget 10 GB.",
        "",
        *projection(measured["resident"]),
        "",
    ]
    return SECTION.text(out)


def main() -> None:
    parser = Section.parser(__doc__)
    parser.add_argument("--rows", type=lambda s: [int(x) for x in s.split(",")], default=[2, 5, 9, 17, 33, 65])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help=f"only rewrite the section from a saved {SAVED.name}"
    )
    args = parser.parse_args()
    if args.render:  # the saved measurements, the report's code as it is now
        saved = json.loads(args.render.read_text())
        measured = {state: {int(r): tuple(v) for r, v in saved[state].items()} for state in STATES}
        measured["quarter"] = saved["quarter"]
        args.rows, args.reps = saved["rows"], saved["reps"]
        text = section(measured, args, Path(saved["model"]), saved["stamp"])
    else:
        model = ensure(full_specs()["bf16"], args.work, say)
        measured = measure(model, args.rows, args.reps, args.timeout, say)
        stamp = f"{commit_stamp()}, {cpu_summary()}"
        SAVED.write_text(
            json.dumps({**measured, "rows": args.rows, "reps": args.reps, "model": str(model), "stamp": stamp})
        )
        text = section(measured, args, model, stamp)
    SECTION.publish(text, args.update)


if __name__ == "__main__":
    main()
