"""One benchmark job: a worker command (`python -m benchmarks.worker ...`) with its environment, memory limit
and timeout, run in its own process, its `BENCH_RESULT` kept. The harness (run.py) and every other benchmark
plan jobs and run them through here."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import REPO, RESULT_TAG
from benchmarks.memlimit import memory_limit
from bloomtui.openmp import DEFAULTS as OPENMP_DEFAULTS

DEFAULT_WORK = Path("/tmp/bloomtui-bench")
# The bloomtui CLI and app set these before torch loads (bloomtui/openmp.py: a short OpenMP spin, which on a
# busy 2-core machine is worth several x); the engine API alone does not, so bloomtui's runs get them here as
# its users do. transformers runs once without them (as its users run it) and once with them.
BLOOMTUI_ENV = dict(OPENMP_DEFAULTS)


def env_label(env: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in env.items())


@dataclass
class Job:
    name: str
    group: str
    args: list[str]
    repeats: int
    timeout: float
    env: dict[str, str] = field(default_factory=dict)
    memory_limit: int | None = None
    """Bytes: the process runs under a memory cgroup of this limit (memlimit.py)."""
    runs: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def command(self) -> str:
        env = [f"{k}={shlex.quote(v)}" for k, v in self.env.items()]
        return " ".join([*env, *(shlex.quote(a) for a in [sys.executable, "-m", "benchmarks.worker", *self.args])])


def limited(job: Job):  # noqa: ANN201 - a context manager yielding a preexec_fn or None
    """The memory cgroup a job runs in, if it asks for one."""
    return memory_limit(job.memory_limit) if job.memory_limit else nullcontext(None)


def run_job(job: Job) -> None:
    t0 = time.perf_counter()
    try:
        with limited(job) as join:
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.worker", *job.args],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=job.timeout,
                env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **job.env},
                preexec_fn=join,
            )
    except subprocess.TimeoutExpired:
        job.errors.append(f"timed out after {job.timeout:.0f} s")
        return
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith(RESULT_TAG)), None)
    if proc.returncode != 0 or line is None:
        tail = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        job.errors.append(tail[-1][:300] if tail else f"exit status {proc.returncode}")
        return
    result = json.loads(line[len(RESULT_TAG) :])
    result["wall_s"] = time.perf_counter() - t0
    job.runs.append(result)
