"""The app's tokens/s against the CLI's on the same job, both in a real terminal (tmux), paired.

    python -m benchmarks.app_speed [--repeats 3] [--tokens 300] [--budget 14.7MB] [--update BENCHMARKS.md]

The job: the trained demo model in float32 under a RAM budget that streams part of it, greedy with repetition
penalty 1.2, the same prompt. The CLI (`bloomtui generate`, its text streaming into the terminal) and the app
(`bloomtui --demo`, the prompt typed and run with ctrl+j) alternate, so a shared machine's drift hits both
alike. Each reports the engine's own decode tokens/s (the CLI's summary line, the app's "done · ... tok/s").
Both stop at --tokens or at the end of text, on the same tokens. `--update` writes the Markdown section into
that file between its markers (the harness keeps it when it rewrites the rest).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Section, commit_stamp
from bloomtui import demo_models

PROMPT = "The most important thing to remember about lists is that"
SIZE = (140, 45)
SECTION = Section("app-speed")
RATE = re.compile(r"([0-9.]+) tok(?:ens)?/s")


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def _session(name: str, command: str, env: dict[str, str]) -> None:
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    _tmux("new-session", "-d", "-s", name, "-x", str(SIZE[0]), "-y", str(SIZE[1]), f"env {exports} {command}")


def _wait_for(name: str, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        screen = _tmux("capture-pane", "-p", "-t", name, "-J")
        if match := pattern.search(screen):
            return match
        time.sleep(0.2)
    raise TimeoutError(f"no {pattern.pattern!r} on screen after {timeout:.0f} s:\n{screen}")


def cli_rate(args: argparse.Namespace, home: Path) -> float:
    log = home / "cli.stderr"
    model = shlex.quote(str(demo_models.path("trained")))
    command = (
        f"sh -c {shlex.quote(f'{sys.executable} -m bloomtui generate {model} {shlex.quote(PROMPT)} ' + _common(args))}"
        f" 2>{shlex.quote(str(log))}"
    )
    _session("bench-cli", command, {})
    try:
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and "tokens/s" not in (log.read_text() if log.exists() else ""):
            time.sleep(0.2)
        text = log.read_text()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", "bench-cli"], capture_output=True)
    match = RATE.search(text.splitlines()[-1] if text.strip() else "")
    if not match:
        raise RuntimeError(f"the CLI printed no summary: {text[-500:]}")
    return float(match.group(1))


def app_rate(args: argparse.Namespace, home: Path) -> float:
    env = {f"BLOOMTUI_{d}_DIR": str(home / d.lower()) for d in ("CONFIG", "DATA", "CACHE", "STATE")}
    (home / "config").mkdir(parents=True, exist_ok=True)
    settings = {"max_new_tokens": args.tokens, "repetition_penalty": 1.2, "sample": False}
    (home / "config" / "settings.json").write_text(json.dumps(settings))
    command = f"{sys.executable} -m bloomtui --demo --dtype float32 --ram-budget {args.budget}"
    _session("bench-app", command, {**env, "TERM": "xterm-256color"})
    try:
        _wait_for("bench-app", re.compile(r"Type a prompt below"), args.timeout)
        _tmux("send-keys", "-t", "bench-app", "-l", PROMPT)
        time.sleep(0.5)
        _tmux("send-keys", "-t", "bench-app", "C-j")
        match = _wait_for("bench-app", re.compile(r"done ·[^\n]*?([0-9.]+) tok/s"), args.timeout)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", "bench-app"], capture_output=True)
    return float(match.group(1))


def _common(args: argparse.Namespace) -> str:
    return (
        f"--max-new-tokens {args.tokens} --repetition-penalty 1.2 --greedy --dtype float32 --ram-budget {args.budget}"
    )


def section(cli: list[float], app: list[float], args: argparse.Namespace) -> str:
    c, a = statistics.median(cli), statistics.median(app)
    runs = lambda xs: ", ".join(f"{x:.1f}" for x in xs)  # noqa: E731
    return SECTION.text(
        [
            "## The app against the CLI, same job, real terminal",
            "",
            f"`python -m benchmarks.app_speed --repeats {args.repeats} --tokens {args.tokens} --budget {args.budget}` "
            f"({commit_stamp()}): the trained demo model, float32, RAM budget "
            f"{args.budget} (part of it streamed), greedy with repetition penalty 1.2, up to {args.tokens} tokens, "
            f"each in tmux at {SIZE[0]}x{SIZE[1]}, alternating. Decode tokens/s as each reports it.",
            "",
            "| | tokens/s (median) | runs | vs CLI |",
            "|---|---|---|---|",
            f"| `bloomtui generate` (text streaming into the terminal) | {c:.1f} | {runs(cli)} | 1.00x |",
            f"| the app (`bloomtui --demo`, prompt typed, ctrl+j) | {a:.1f} | {runs(app)} | **{a / c:.2f}x** |",
            "",
            f"Goal (issue 20): the app within 0.9x of the CLI: **{'met' if a / c >= 0.9 else 'not met'}**.",
        ]
    )


def main() -> None:
    parser = Section.parser(__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--budget", default="14.7MB")
    parser.add_argument("--timeout", type=float, default=180)
    args = parser.parse_args()
    if shutil.which("tmux") is None:
        sys.exit("needs tmux (apt-get install tmux)")
    cli: list[float] = []
    app: list[float] = []
    # ignore_cleanup_errors: a killed app may still be writing its state as the folder goes
    with tempfile.TemporaryDirectory(prefix="bloomtui-app-speed-", ignore_cleanup_errors=True) as tmp:
        for i in range(args.repeats):
            cli.append(cli_rate(args, Path(tmp)))
            app.append(app_rate(args, Path(tmp) / f"app{i}"))
            print(f"run {i + 1}: CLI {cli[-1]:.1f} tokens/s, app {app[-1]:.1f} tokens/s", file=sys.stderr)
    text = section(cli, app, args)
    SECTION.publish(text, args.update)


if __name__ == "__main__":
    main()
