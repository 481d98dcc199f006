"""How long a new process takes before it is useful: `python -m benchmarks.startup [--before DIR] [--runs N]`.

Each figure is a whole cold process, as a user's shell starts it: `bloomtui --version`, `bloomtui generate --help`,
and the demo's time to first token (`generate` on the shipped `trained` folder in float32, from exec until the
first byte of text on stdout) and to exit. With --before DIR (a checkout of another version, e.g. made by
`git worktree add /tmp/before HEAD~5`), that version runs the same commands, interleaved with this one's so that
a noisy machine slows both alike; each version imports its own package (cwd and PYTHONPATH). Prints a
Markdown section of medians (min-max); --update FILE writes it into BENCHMARKS.md.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import REPO, Section, commit_stamp, cpu_summary, table_head

SECTION = Section("startup")
PROMPT = "The most important thing to remember about lists is that"
DEMO = ["generate", str(REPO / "bloomtui/demo_models/trained"), PROMPT, "--max-new-tokens", "8", "--dtype", "float32"]
CASES = {"--version": ["--version"], "generate --help": ["generate", "--help"], "demo generate": DEMO}


def timed(args: list[str], checkout: Path) -> tuple[float, float]:
    """(seconds to the first byte of stdout, seconds to exit) of `python -m bloomtui ARGS` from `checkout`."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}  # cwd too: `python -m` puts it first on the path
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bloomtui", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=checkout,
    )
    assert proc.stdout is not None
    proc.stdout.read(1)
    first = time.perf_counter() - start
    proc.stdout.read()
    if proc.wait() != 0:
        raise SystemExit(f"bloomtui {' '.join(args)} failed in {checkout}")
    return first, time.perf_counter() - start


def _commit(checkout: Path) -> str:
    run = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True, text=True)
    return run.stdout.strip() or "unknown"


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def section(rows: dict[tuple[str, str, str], list[float]], versions: dict[str, Path], runs: int) -> str:
    before = f" --before {versions['before']}" if "before" in versions else ""
    what = f"; before: commit {_commit(versions['before'])}" if "before" in versions else ""
    lines = [
        "## Start-up: cold processes",
        "",
        f"`python -m benchmarks.startup{before} --runs {runs}` ({commit_stamp()}{what}; {cpu_summary()}): whole "
        "processes "
        "as a shell starts them, versions interleaved; seconds, median (min-max). `demo generate` is `generate` on "
        "the shipped `trained` folder in float32, 8 new tokens: first token is exec to the first byte of text.",
        "",
        *table_head("command", "until", *(f"{name}, s" for name in versions)),
    ]
    for case in CASES:
        for what in ("first", "exit"):
            label = "exit" if what == "exit" else "first token" if case == "demo generate" else "first output"
            cells = " | ".join(_cell(rows[(case, name, what)]) for name in versions)
            lines.append(f"| `{case}` | {label} | {cells} |")
    return SECTION.text(lines)


def main() -> None:
    parser = Section.parser(__doc__)
    parser.add_argument("--before", type=Path, help="a checkout of the version to compare with")
    parser.add_argument("--runs", type=int, default=7, help="runs of each command and version (default 7)")
    args = parser.parse_args()
    versions = {"now": REPO} | ({"before": args.before.resolve()} if args.before else {})
    rows: dict[tuple[str, str, str], list[float]] = {}
    for case, argv in CASES.items():
        timed(argv, REPO)  # one unmeasured run: torch's files and the demo's are read from the page cache after
        for _ in range(args.runs):
            for name, checkout in versions.items():
                first, total = timed(argv, checkout)
                rows.setdefault((case, name, "first"), []).append(first)
                rows.setdefault((case, name, "exit"), []).append(total)
    SECTION.publish(section(rows, versions, args.runs), args.update)


if __name__ == "__main__":
    main()
