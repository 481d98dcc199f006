"""`bloomtui measure-openmp`: time OpenMP's wait policies on this machine and keep the best (bloomtui/openmp.py).

Each policy runs a decode-like workload in a fresh process (the policy is read when torch loads): per token,
24 blocks of bloom-560m's four bf16 matrix-vector products, a layer norm and a GELU, on torch's threads;
once on a quiet machine and once beside a process that keeps half a core busy in bursts of a few ms. The
best has the smallest sum of its quiet and busy times, each over the best of its kind. Measured on this
project's 2-core VM: short spin 26.5 / 52.8 ms per token, libgomp's default 25.4 / 68.3, passive 38.5 / 50.1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from bloomtui.errors import UsageError
from bloomtui.openmp import OWN, POLICIES, Choice, save, users_own

WORKLOAD = """
import json, sys, time
import torch
import torch.nn.functional as F

seconds = float(sys.argv[1])
torch.manual_seed(0)
shapes = [(3072, 1024), (1024, 1024), (4096, 1024), (1024, 4096)]
sets = [[torch.randn(o, i, dtype=torch.bfloat16) for o, i in shapes] for _ in range(4)]
x = torch.randn(1, 1024, dtype=torch.bfloat16)

def token():
    h = x
    for b in range(24):
        w = sets[b % 4]
        F.linear(h, w[0])
        h = F.layer_norm(h + F.linear(h, w[1]), (1024,))
        h = h + F.linear(F.gelu(F.linear(h, w[2])), w[3])

for _ in range(3):
    token()
times, t_end = [], time.perf_counter() + seconds
while time.perf_counter() < t_end or len(times) < 3:
    t0 = time.perf_counter()
    token()
    times.append(time.perf_counter() - t0)
print(json.dumps(times))
"""
HALF_BUSY = """
import time
while True:
    t = time.perf_counter()
    while time.perf_counter() - t < 0.004:
        pass
    time.sleep(0.004)
"""
"""Half a core, taken and given back every few ms: as streamed reads or an app's UI take it. (A program that
holds a whole core the engine leaves alone by sizing its team to the cores left; see engine/compute/cpu_share.py.
Half a core it cannot leave: there, how the team's threads wait at each barrier decides.)"""
BUSY_THRESHOLD = 0.3
"""Cores other programs may hold while the quiet runs are measured."""


def add_parser(sub) -> None:  # noqa: ANN001 - argparse's subparsers action
    p = sub.add_parser(
        "measure-openmp",
        help="time OpenMP's wait policies on this machine (about 30 s) and keep the best for later runs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seconds", type=float, default=2.0, help="timed work per run (default 2)")
    p.add_argument("--even-if-busy", action="store_true", help="measure even while other programs hold cores (noisier)")


def measure_openmp(args: argparse.Namespace) -> int:
    from bloomtui.engine.compute.cpu_share import others_over  # the engine loads torch: not at parser build time

    if args.seconds <= 0:
        raise UsageError(f"--seconds must be positive, got {args.seconds}")
    if users_own():
        print("note: OMP_WAIT_POLICY or GOMP_SPINCOUNT is set here; bloomtui keeps to it whatever this finds")
    other = others_over(0.5)
    if other is not None and other > BUSY_THRESHOLD and not args.even_if_busy:
        raise UsageError(
            f"other programs hold {other:.1f} cores now: a measurement would say more about them than about "
            "this machine; try again when it is quiet (or --even-if-busy)"
        )
    quiet: dict[str, float] = {}
    busy: dict[str, float] = {}
    for name in POLICIES:
        print(f"{name}: quiet ...", end="", flush=True)
        quiet[name] = run_policy(name, args.seconds)
        print(f" {quiet[name] * 1e3:.1f} ms/token; beside half a busy core ...", end="", flush=True)
        busy[name] = run_policy(name, args.seconds, busy=True)
        print(f" {busy[name] * 1e3:.1f} ms/token")
    choice = pick(quiet, busy)
    save(choice)
    print(f"kept: {choice.describe()}")
    return 0


def pick(quiet: dict[str, float], busy: dict[str, float]) -> Choice:
    """The policy with the smallest quiet/best-quiet + busy/best-busy."""
    fastest_quiet, fastest_busy = min(quiet.values()), min(busy.values())
    score = {name: quiet[name] / fastest_quiet + busy[name] / fastest_busy for name in quiet}
    best = min(score, key=score.__getitem__)
    detail = ", ".join(f"{n} {quiet[n] * 1e3:.1f} / {busy[n] * 1e3:.1f}" for n in quiet)
    return Choice(best, True, f"ms/token quiet / beside half a busy core: {detail}")


def run_policy(name: str, seconds: float, busy: bool = False) -> float:
    """Median seconds per token of the workload in a fresh process under policy `name`."""
    env = {k: v for k, v in os.environ.items() if k not in OWN} | POLICIES[name]
    spinner = subprocess.Popen([sys.executable, "-c", HALF_BUSY]) if busy else None
    try:
        if spinner is not None:
            time.sleep(0.3)
        run = subprocess.run(
            [sys.executable, "-c", WORKLOAD, str(seconds)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120 + 20 * seconds,
        )
    except subprocess.TimeoutExpired:
        raise UsageError(f"the {name} run took over {120 + 20 * seconds:.0f} s: is the machine swapping?") from None
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    if run.returncode != 0:
        last = (run.stderr.strip().splitlines() or [f"exit status {run.returncode}"])[-1]
        raise UsageError(f"the {name} run failed: {last}")
    return statistics.median(json.loads(run.stdout.strip().splitlines()[-1]))
