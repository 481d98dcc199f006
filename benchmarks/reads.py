"""Streamed reads against compute: direct I/O, the page cache and the raw read floors, paired in one run.

    python -m benchmarks.reads [--quick] [--tokens 6] [--repeats 2] [--skip-wide | --only-wide] [--work DIR]
                               [--update FILE]

For each model (bloom-560m's shape; 4 blocks of bloom-7b1's width, hidden 4096; 3 blocks of BLOOM-176B's
width, hidden 14336; bf16, and for the first two the int8/int4 copies `bloomtui prepare` makes), with every
block and the LM head streamed (the engine's minimum budget), one after another:
- resident: the model wholly in RAM, the block compute of a pass alone;
- direct: `--reads direct`, what `auto` picks for a model bigger than free memory (always from the disk);
- cached cold: `--reads cached` with each block evicted after use: a model bigger than memory read through
  the page cache, as every cold run was before direct I/O;
- cached warm: `--reads cached`, the model in the page cache;
- the floors: the best plain reader of the same byte ranges with O_DIRECT (aligned spans, 32 MiB reads, 4 in
  flight) and with pread (32 MiB chunks, cache dropped first), with the CPU time each reader spent.
`--update` writes the Markdown section into that file between its markers (the harness keeps it).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.checkpoints import ModelSpec, PreparedSpec, ensure, ensure_prepared, full_specs, quick_specs
from benchmarks.common import BIG_BUDGET, Section, commit_stamp, cpu_summary, evict, say, weight_files
from benchmarks.jobs import BLOOMTUI_ENV, DEFAULT_WORK, Job, run_job
from bloomtui import demo
from bloomtui.sizes import format_size

SECTION = Section("reads")


@dataclass(frozen=True)
class Case:
    label: str
    model: Path
    cold_only: bool = False
    """Too big to hold resident and in the page cache at once here: no warm row."""


def models(args: argparse.Namespace) -> list[Case]:
    work = args.work
    specs = quick_specs() if args.quick else full_specs()
    shape = demo.DemoShape(3, 384, 6, 1024) if args.quick else demo.DemoShape(4, 4096, 32, 1024)
    width7 = ModelSpec(
        f"{'quick' if args.quick else 'bloom-7b1'}-width-blocks-bf16", None, "safetensors-underscore", "bfloat16", shape
    )
    cases = []
    for label, spec in (("bloom-560m shape", specs["bf16"]), ("bloom-7b1 width, 4 blocks", width7)):
        if args.only_wide:
            break
        source = ensure(spec, work, say)
        cases.append(Case(f"{label}, bf16", source))
        for scheme in ("int8", "int4"):
            prepared = ensure_prepared(PreparedSpec(f"{spec.name}-{scheme}", spec.name, scheme), source, work, say)
            cases.append(Case(f"{label}, {scheme}", prepared))
    if not args.skip_wide:
        cases.append(Case("BLOOM-176B width, 3 blocks, bf16", ensure(specs["wide"], work, say), cold_only=True))
    return cases


def jobs_for(case: Case, tokens: int, timeout: float) -> dict[str, Job]:
    model = ["--model", str(case.model)]
    least = [*model, "--budget", "min"]
    n = ["--tokens", str(tokens)]
    env = dict(BLOOMTUI_ENV)
    out = {
        "resident": Job("resident", case.label, ["bloomtui", *model, "--budget", str(BIG_BUDGET), *n], 1, timeout, env),
        "direct": Job("direct", case.label, ["bloomtui", *least, "--reads", "direct", *n], 1, timeout, env),
        "cached cold": Job(
            "cached cold", case.label, ["bloomtui", *least, "--reads", "cached", "--cold", *n], 1, timeout, env
        ),
        "floor direct": Job("floor direct", case.label, ["rawread", *least, "--direct", *n], 1, timeout),
        "floor pread": Job("floor pread", case.label, ["rawread", *least, "--cold", *n], 1, timeout),
    }
    if not case.cold_only:
        out["cached warm"] = Job(
            "cached warm", case.label, ["bloomtui", *least, "--reads", "cached", *n], 1, timeout, env
        )
    return out


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def _compute(job: Job) -> float:
    """Block compute of a decode pass (all blocks), seconds: the median over runs of each run's median."""
    return _med([_med([b["compute"] for b in r["blocks"][1:]]) for r in job.runs])


def _decode(job: Job) -> float:
    return _med([r["decode_s"] for r in job.runs])


def _floor(job: Job) -> tuple[float, float, int]:
    """(seconds per pass's reads, CPU seconds of them, bytes) of a raw reader, medians over runs."""
    if not job.runs:
        return math.nan, math.nan, 0
    return (
        _med([_med(r["token_s"]) for r in job.runs]),
        _med([_med(r["cpu_s"]) for r in job.runs]),
        job.runs[0]["bytes"],
    )


def _x(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}x"


def _s(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def section(results: list[tuple[Case, dict[str, Job]]], args: argparse.Namespace) -> str:
    lines = [
        "## Streamed reads against compute: direct I/O and the page cache",
        "",
        f"`python -m benchmarks.reads{' --quick' if args.quick else ''} --tokens {args.tokens} --repeats "
        f"{args.repeats}` ({commit_stamp()}, {cpu_summary()}): every block and the LM "
        "head streamed "
        "(the minimum budget), greedy, decode medians over the runs; each model's jobs interleaved in one run. "
        "Block compute is a decode pass's "
        "`BlockDone.compute_seconds` summed over its blocks; 'alone' is the same model wholly resident.",
        "",
        "| model | read/pass | resident s/token | direct s/token | compute while streaming ÷ alone: direct "
        "| cached cold | cached warm | direct ÷ cold floor | warm ÷ resident |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    floors = []
    for case, jobs in results:
        alone = _compute(jobs["resident"])
        resident_s = _decode(jobs["resident"])
        fd, fd_cpu, nbytes = _floor(jobs["floor direct"])
        fp, fp_cpu, _ = _floor(jobs["floor pread"])
        best = min(fd, fp)
        direct_s = _decode(jobs["direct"])
        warm = jobs.get("cached warm")
        errors = "; ".join(f"{name}: {e}" for name, job in jobs.items() for e in job.errors)
        lines.append(
            f"| {case.label} | {format_size(nbytes)} | {_s(resident_s)} | {_s(direct_s)} "
            f"| **{_x(_compute(jobs['direct']) / alone)}** | {_x(_compute(jobs['cached cold']) / alone)} "
            f"| {_x(_compute(warm) / alone) if warm else 'not run (too big)'} "
            f"| {_x(direct_s / max(best, resident_s))} "
            f"| {_x(_decode(warm) / resident_s) if warm else 'n/a'} |" + (f" {errors}" if errors else "")
        )
        floors.append((case, nbytes, fd, fd_cpu, fp, fp_cpu, _decode(jobs["cached cold"])))
    lines += [
        "",
        "Raw read floors of the same byte ranges (no compute), per pass:",
        "",
        "| model | O_DIRECT s (GB/s, CPU s) | pread after a cache drop s (GB/s, CPU s) "
        "| bloomtui cached cold s/token |",
        "|---|---|---|---|",
    ]
    for case, nbytes, fd, fd_cpu, fp, fp_cpu, cold_s in floors:
        lines.append(
            f"| {case.label} | {_s(fd)} ({nbytes / fd / 1e9:.2f}, {_s(fd_cpu)}) "
            f"| {_s(fp)} ({nbytes / fp / 1e9:.2f}, {_s(fp_cpu)}) | {_s(cold_s)} |"
        )
    lines += [
        "",
        "Goals (issue 16): compute while streaming <= 1.25x alone; a cold pass <= 1.15x max(streamed bytes / the "
        "best plain cold reader, resident pass); a warm pass <= 1.25x the resident pass.",
    ]
    return SECTION.text(lines)


def main() -> None:
    parser = Section.parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="small checkpoints (a test of the benchmark)")
    parser.add_argument("--tokens", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each job, interleaved (176B width: 1)")
    parser.add_argument("--skip-wide", action="store_true", help="leave out the 176B-width blocks (15 GB)")
    parser.add_argument("--only-wide", action="store_true", help="only the 176B-width blocks")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    results = []
    for case in models(args):
        jobs = jobs_for(case, 3 if case.cold_only else args.tokens, args.timeout)
        for _ in range(1 if case.cold_only else args.repeats):  # a shared disk drifts: interleave the repeats
            for name, job in jobs.items():
                if name != "cached warm":
                    evict(weight_files(case.model))
                t0 = time.perf_counter()
                run_job(job)
                say(f"{case.label} / {name}: {time.perf_counter() - t0:.0f} s {job.errors or ''}")
        results.append((case, jobs))
        evict(weight_files(case.model))
    SECTION.publish(section(results, args), args.update)


if __name__ == "__main__":
    main()
