"""Decoding beside a busy program: a fixed team of threads against one sized to the cores left, paired.

    python -m benchmarks.busy [--repeats 2] [--tokens 16] [--work DIR] [--update BENCHMARKS.md]

bloom-560m's shape in bf16 and its int4 copy, wholly resident, greedy. Quiet: nothing else runs. Busy: one
other process spins on a core (`python -c "while True: pass"`) while bloomtui decodes, with the team fixed at
the machine's core count (`--threads N`, as before issue 16) and sized by the engine (cpu_share.py). Rows
alternate, so a shared machine's drift hits all alike. `--update` writes the section into that file.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.checkpoints import PreparedSpec, ensure, ensure_prepared, full_specs
from benchmarks.common import BIG_BUDGET, Section, commit_stamp, cpu_summary, say
from benchmarks.jobs import BLOOMTUI_ENV, DEFAULT_WORK, Job, run_job

SECTION = Section("busy")
SETUPS = ("quiet", "busy, fixed team", "busy, sized team")


def _decode(model: Path, tokens: int, threads: int | None, busy: bool) -> float:
    args = ["bloomtui", "--model", str(model), "--budget", str(BIG_BUDGET), "--tokens", str(tokens)]
    job = Job("decode", "busy", args + (["--threads", str(threads)] if threads else []), 1, 600, dict(BLOOMTUI_ENV))
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        if spinner:
            time.sleep(0.5)
        run_job(job)
    finally:
        if spinner:
            spinner.kill()
            spinner.wait()
    if not job.runs:
        raise RuntimeError(f"{job.command}: {job.errors}")
    return job.runs[0]["decode_s"]


def section(times: dict[tuple[str, str], list[float]], args: argparse.Namespace) -> str:
    lines = [
        "## Beside a busy program",
        "",
        f"`python -m benchmarks.busy --repeats {args.repeats} --tokens {args.tokens}` ({commit_stamp()}, "
        f"{cpu_summary()}): bloom-560m's shape wholly resident, greedy, decode s/token "
        "(median of the runs); busy = one other process spinning on a core.",
        "",
        "| weights | quiet | busy, team fixed at the core count | busy, team sized by the engine | sized ÷ quiet |",
        "|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(name for name, _ in times):
        q, f, s = (statistics.median(times[(name, setup)]) for setup in SETUPS)
        lines.append(f"| {name} | {q:.3f} | {f:.3f} ({f / q:.2f}x) | {s:.3f} ({s / q:.2f}x) | **{s / q:.2f}x** |")
    return SECTION.text([*lines, "", "Goal (issue 16): busy <= 2.2x quiet (a fair share of two cores)."])


def main() -> None:
    parser = Section.parser(__doc__)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = parser.parse_args()
    spec = full_specs()["bf16"]
    source = ensure(spec, args.work)
    models = {
        "bf16": source,
        "int4": ensure_prepared(PreparedSpec(f"{spec.name}-int4", "bf16", "int4"), source, args.work),
    }
    cores = os.cpu_count() or 1
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for name, model in models.items():
            for setup in SETUPS:
                fixed = cores if setup == "busy, fixed team" else None
                seconds = _decode(model, args.tokens, fixed, setup != "quiet")
                times.setdefault((name, setup), []).append(seconds)
                say(f"{name} {setup}: {seconds:.3f} s/token")
    SECTION.publish(section(times, args), args.update)


if __name__ == "__main__":
    main()
