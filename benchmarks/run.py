"""The benchmark harness: `python -m benchmarks.run [--quick] [--out BENCHMARKS.md] [--work DIR]`.

Builds (and caches) the demo checkpoints, runs every contender in its own subprocess, repeats the whole
set round-robin (so slow drift of a shared machine hits every contender alike), takes medians, and writes
a Markdown report with the machine, the exact commands, medians, ratios and the goals met or not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from benchmarks import checkpoints
from benchmarks.common import (
    BIG_BUDGET,
    HELDOUT,
    REPO,
    cpu_family,
    evict,
    full_bytes,
    minimum_bytes,
    quarter_bytes,
    weight_files,
)
from benchmarks.jobs import BLOOMTUI_ENV, DEFAULT_WORK, Job, env_label, run_job
from bloomtui import demo_models

# Quick mode runs two contenders at once; one thread each keeps them from fighting over the 2 cores.
QUICK_ENV = {"OMP_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Settings:
    quick: bool
    repeats: int
    tokens: int
    cold_tokens: int
    read_tokens: int
    seed_tokens: int
    accelerate_tokens: int
    big_tokens: int
    timeout: float
    membw_bytes: int
    skip_big: bool
    parallel: int
    prompt_lengths: tuple[int, ...] = (1000, 3000)
    """Long-prompt section: prompt tokens per prefill measurement."""
    prefill_reps: tuple[int, ...] = (2, 1)
    """In-process repeats per prompt length (a 3000-token prefill is tens of seconds on 2 cores)."""
    cancel_tokens: int = 3000
    cancel_after: float = 2.0
    gemm_size: int = 3072
    quality_context: int = 1024
    quality_chars: int = 0
    """Characters of the held-out sample scored (0: all of it)."""
    draft_tokens: int = 96
    """New tokens per speculative-decoding run (several passes' worth at up to 9 tokens a pass)."""
    verify_reps: int = 5
    """In-process pairs of 1-row and 5-row passes per verify-cost run."""


def job_env(s: Settings, env: dict[str, str]) -> dict[str, str]:
    """A job's environment, with quick mode's one thread per process."""
    return {**env, **QUICK_ENV} if s.quick else dict(env)


def plan_jobs(models: dict[str, Path], s: Settings, work: Path) -> tuple[list[Job], dict]:
    bf16, fp32, seed = models["bf16"], models["fp32"], models["seed"]
    offload = work / "accelerate-offload"
    quarter = quarter_bytes(bf16)
    budgets = {"quarter_bf16": quarter, "full_bf16": full_bytes(bf16), "full_fp32": full_bytes(fp32)}
    budgets["min_seed"] = minimum_bytes(seed)
    n, cold, reads = str(s.tokens), str(s.cold_tokens), str(s.read_tokens)

    def job(name: str, group: str, args: list[str], tokens: str | None = n, env: dict | None = None) -> Job:
        argv = [*args, *(["--tokens", tokens] if tokens else [])]
        if env is None:  # bloomtui runs as its CLI and app run it (see BLOOMTUI_ENV)
            env = BLOOMTUI_ENV if args[0] in ("bloomtui", "bigblock", "verify") else {}
        return Job(name, group, argv, s.repeats, s.timeout, job_env(s, env))

    b16 = ["--model", str(bf16)]
    f32 = ["--model", str(fp32)]
    quart = ["--model", str(bf16), "--budget", str(quarter)]
    least = ["--model", str(seed), "--budget", "min"]
    seed_args = ["--model", str(seed), "--dtype", "bfloat16"]
    offload_args = ["--budget", str(quarter), "--offload-folder", str(offload)]
    passive = f"transformers, {env_label(BLOOMTUI_ENV)}"
    jobs = [
        job("transformers", "bf16", ["hf", *b16, "--dtype", "bfloat16"]),
        job(passive, "bf16", ["hf", *b16, "--dtype", "bfloat16"], env=BLOOMTUI_ENV),
        job("bloomtui resident", "bf16", ["bloomtui", *b16, "--budget", str(BIG_BUDGET)]),
        job("bloomtui resident, default OpenMP env", "bf16", ["bloomtui", *b16, "--budget", str(BIG_BUDGET)], env={}),
        job("bloomtui stream warm", "bf16", ["bloomtui", *quart]),
        job("bloomtui stream cold", "bf16", ["bloomtui", *quart, "--cold"], cold),
        job("raw read warm", "bf16", ["rawread", *quart], reads),
        job("raw read cold", "bf16", ["rawread", *quart, "--cold"], reads),
        job(
            "accelerate disk offload",
            "bf16",
            ["accelerate", *b16, "--dtype", "bfloat16", *offload_args],
            str(s.accelerate_tokens),
        ),
        job("transformers", "fp32", ["hf", *f32, "--dtype", "float32"]),
        job(passive, "fp32", ["hf", *f32, "--dtype", "float32"], env=BLOOMTUI_ENV),
        job("bloomtui resident", "fp32", ["bloomtui", *f32, "--budget", str(BIG_BUDGET)]),
        job("bloomtui resident, default OpenMP env", "fp32", ["bloomtui", *f32, "--budget", str(BIG_BUDGET)], env={}),
        job("seed method warm", "seed", ["seed", *seed_args], str(s.seed_tokens)),
        job("seed method cold", "seed", ["seed", *seed_args, "--cold"], str(s.seed_tokens)),
        job("bloomtui all streamed warm", "seed", ["bloomtui", *least]),
        job("bloomtui all streamed cold", "seed", ["bloomtui", *least, "--cold"], cold),
        job("raw read all warm", "seed", ["rawread", *least], reads),
        job("raw read all cold", "seed", ["rawread", *least, "--cold"], reads),
        job("memory bandwidth", "floor", ["membw", "--bytes", str(s.membw_bytes)], None),
    ]
    jobs += compressed_jobs(models, s, quarter, job)
    jobs += long_prompt_jobs(models, s, work)
    jobs += quality_jobs(models, s)
    budgets["min_int4"] = minimum_bytes(models["bf16_int4"])
    budgets["quarter_trained"] = quarter_bytes(models["trained"])
    jobs += draft_jobs(models, s, budgets, job)
    return jobs, budgets


def compressed_jobs(models: dict[str, Path], s: Settings, quarter: int, job) -> list[Job]:  # noqa: ANN001
    """int8/int4 copies of the bf16 model: resident, the bf16 model's 1/4 budget warm and cold with their raw
    read floors, and (int4) every block streamed, as the seed comparison runs bf16. bf16's own rows are the
    bf16 group's, from the same run."""
    n, cold, reads = str(s.tokens), str(s.cold_tokens), str(s.read_tokens)
    jobs = []
    for scheme in ("int8", "int4"):
        model = ["--model", str(models[f"bf16_{scheme}"])]
        quart = [*model, "--budget", str(quarter)]
        jobs += [
            job("bloomtui resident", scheme, ["bloomtui", *model, "--budget", str(BIG_BUDGET)], n),
            job("bloomtui stream warm", scheme, ["bloomtui", *quart], n),
            job("bloomtui stream cold", scheme, ["bloomtui", *quart, "--cold"], cold),
            job("raw read warm", scheme, ["rawread", *quart], reads),
            job("raw read cold", scheme, ["rawread", *quart, "--cold"], reads),
        ]
    least = ["--model", str(models["bf16_int4"]), "--budget", "min"]
    jobs += [
        job("bloomtui all streamed warm", "int4", ["bloomtui", *least], n),
        job("bloomtui all streamed cold", "int4", ["bloomtui", *least, "--cold"], cold),
        job("raw read all warm", "int4", ["rawread", *least], reads),
        job("raw read all cold", "int4", ["rawread", *least, "--cold"], reads),
    ]
    return jobs


def long_prompt_jobs(models: dict[str, Path], s: Settings, work: Path) -> list[Job]:
    """Prefill of long prompts, fully resident, one job per contender and length (run once: each repeats
    in-process), the GEMM peak, and cancel latency during a long prefill."""
    env, hf_env = job_env(s, BLOOMTUI_ENV), job_env(s, {})
    old = _engine_before_chunked_prefill(work)
    jobs = [Job("GEMM peak", "prefill", ["gemm", "--size", str(s.gemm_size)], 1, s.timeout, hf_env)]
    for tokens, reps in zip(s.prompt_lengths, s.prefill_reps, strict=True):
        group = f"prefill {tokens}"
        common = ["--prompt-tokens", str(tokens), "--reps", str(reps)]
        b16, f32 = ["--model", str(models["bf16"]), *common], ["--model", str(models["fp32"]), *common]
        jobs += [
            Job("bloomtui bf16, path it chooses", group, ["prefill", *b16], 1, s.timeout, env),
            Job("bloomtui bf16, other path forced", group, ["prefill", *b16, "--path", "other"], 1, s.timeout, env),
            Job("transformers bf16 forward", group, ["hfprefill", *b16, "--dtype", "bfloat16"], 1, s.timeout, hf_env),
            Job("bloomtui fp32", group, ["prefill", *f32], 1, s.timeout, env),
            Job("transformers fp32 forward", group, ["hfprefill", *f32, "--dtype", "float32"], 1, s.timeout, hf_env),
        ]
        if old is not None:
            old_args = ["prefill", *f32, "--engine-root", str(old)]
            jobs.append(Job("bloomtui fp32, engine before chunked prefill", group, old_args, 1, s.timeout, env))
    cancel = ["--model", str(models["bf16"]), "--prompt-tokens", str(s.cancel_tokens), "--reps", "3"]
    cancel += ["--after", str(s.cancel_after)]
    jobs.append(Job("cancel during a long prefill", "prefill", ["cancel", *cancel], 1, s.timeout, env))
    return jobs


ENGINE_BEFORE = "e1aad3d^"  # the commit before many-row passes ran in row chunks (e1aad3d)


def _engine_before_chunked_prefill(work: Path) -> Path | None:
    """bloomtui's package as of ENGINE_BEFORE, extracted (git archive, read-only on the repo) into the work
    dir: the "today" that fp32 prefill must not be slower than. None without git history."""
    import tarfile
    from io import BytesIO

    try:
        rev = subprocess.run(["git", "rev-parse", ENGINE_BEFORE], cwd=REPO, capture_output=True, text=True, check=True)
        target = work / f"engine-{rev.stdout.strip()[:12]}"
        if not (target / "bloomtui" / "__init__.py").is_file():
            tar = subprocess.run(
                ["git", "archive", rev.stdout.strip(), "bloomtui"], cwd=REPO, capture_output=True, check=True
            )
            staging = work / f".engine-{os.getpid()}"
            staging.mkdir(parents=True, exist_ok=True)
            with tarfile.open(fileobj=BytesIO(tar.stdout)) as archive:
                archive.extractall(staging, filter="data")
            os.rename(staging, target)
        return target
    except (OSError, subprocess.CalledProcessError):
        return None


DRAFT_CASES = (
    ("story", ("plain", "trained-draft", "prompt-lookup"), ("plain", "trained-draft")),
    ("repeat", ("plain", "trained-draft", "prompt-lookup"), ("plain", "prompt-lookup")),
    ("no-repeat", ("plain", "prompt-lookup"), ("plain", "prompt-lookup")),
)
"""(prompt, drafts run warm, drafts run cold): the trained demo streamed under 1/4 of its size (issue 9)."""


def draft_jobs(models: dict[str, Path], s: Settings, budgets: dict, job) -> list[Job]:  # noqa: ANN001
    """Speculative decoding on the trained demo at a 1/4 budget, warm and cold, with its shipped draft and with
    prompt lookup; and the price of verifying: one pass of 5 rows vs 1 row, bloom-560m shape at 1/4 budget."""
    tokens = str(s.draft_tokens)
    target = ["--model", str(models["trained"]), "--budget", str(budgets["quarter_trained"])]
    jobs = []
    for prompt, warm, cold in DRAFT_CASES:
        for state, drafts in (("warm", warm), ("cold", cold)):
            for draft in drafts:
                source = str(demo_models.path(draft)) if draft == "trained-draft" else draft
                extra = [] if draft == "plain" else ["--draft", source]
                extra += ["--cold"] if state == "cold" else []
                argv = ["bloomtui", *target, "--prompt", prompt, *extra]
                jobs.append(job(f"{prompt} {state} {draft}", "draft", argv, tokens))
    quart = ["--model", str(models["bf16"]), "--budget", str(budgets["quarter_bf16"]), "--reps", str(s.verify_reps)]
    jobs += [
        job("verify 5 rows warm", "draft", ["verify", *quart], None),
        job("verify 5 rows cold", "draft", ["verify", *quart, "--cold"], None),
    ]
    return jobs


def quality_jobs(models: dict[str, Path], s: Settings) -> list[Job]:
    """Perplexity of the held-out sample and a greedy continuation on the trained demo model, per scheme."""
    env = job_env(s, BLOOMTUI_ENV)
    args = [
        "--text",
        str(HELDOUT),
        "--context",
        str(s.quality_context),
        "--tokens",
        "64",
        "--chars",
        str(s.quality_chars),
    ]
    return [
        Job(f"trained {name}", "quality", ["ppl", "--model", str(models[key]), *args], 1, s.timeout, env)
        for name, key in (("bf16 (as shipped)", "trained"), ("int8", "trained_int8"), ("int4", "trained_int4"))
    ]


def machine_info(work: Path) -> dict:
    import platform

    import torch
    import transformers

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import accelerate

        accelerate_version = accelerate.__version__
    except ImportError:
        accelerate_version = "not installed"
    disk = "unknown"
    try:
        dev = os.stat(work).st_dev
        name = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve().name
        rotational = Path(f"/sys/block/{name}/queue/rotational").read_text().strip()
        usage = psutil.disk_usage(str(work))
        kind = "virtual disk" if name.startswith("vd") else ("rotational" if rotational == "1" else "SSD")
        disk = f"/dev/{name} ({kind}, {usage.total / 1e9:.0f} GB, {usage.free / 1e9:.0f} GB free)"
    except (OSError, ValueError):
        pass
    return {
        "cpu": cpu,
        "cpu_family": cpu_family(),
        "cores": os.cpu_count(),
        "ram": psutil.virtual_memory().total,
        "disk": disk,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "accelerate": accelerate_version,
        "load_start": os.getloadavg(),
    }


def big_section(models: dict[str, Path], s: Settings) -> dict:
    """Full-width blocks, bf16 and int4: cold per-block read + 1-token compute, then bloomtui streaming every
    block cold."""
    out: dict = {"model": str(models["wide"]), "model_int4": str(models.get("wide_int4", ""))}
    env = job_env(s, BLOOMTUI_ENV)
    parts = [("", models["wide"])] + ([("_int4", models["wide_int4"])] if "wide_int4" in models else [])
    for suffix, model in parts:
        label = "176B-width" + (" int4" if suffix else "")
        block = Job(f"{label} block read + compute", "big", ["bigblock", "--model", str(model)], 1, s.timeout * 2, env)
        run_job(block)
        out["bigblock" + suffix] = asdict(block) | {"command": block.command}
        need = 2 * (block.runs[0]["block_bytes"] if block.runs else 0) + 2_000_000_000
        available = psutil.virtual_memory().available
        stream = Job(
            f"bloomtui every {label} block streamed, cold",
            "big",
            ["bloomtui", "--model", str(model), "--budget", "min", "--cold", "--tokens", str(s.big_tokens)],
            1,
            s.timeout * 2,
            env,
        )
        if available < need:
            stream.errors.append(f"skipped: needs ~{need / 1e9:.1f} GB free RAM, {available / 1e9:.1f} GB available")
        else:
            run_job(stream)
        out["stream" + suffix] = asdict(stream) | {"command": stream.command}
        evict(weight_files(model))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny checkpoints, 1 repeat (< 60 s)")
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md", help="Markdown report to write")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="checkpoint cache (default %(default)s)")
    parser.add_argument("--repeats", type=int, help="runs per contender (default 3, quick 1)")
    parser.add_argument("--tokens", type=int, help="new tokens per run (default 32, cold 16; quick 4)")
    parser.add_argument("--skip-big", action="store_true", help="skip the BLOOM-176B-width blocks")
    parser.add_argument("--parallel", type=int, help="contenders run at once (default 1; quick 2)")
    parser.add_argument("--no-chart", action="store_true", help="do not draw the PNG chart")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only rewrite --out from a saved results file")
    args = parser.parse_args(argv)
    if args.render:
        return _render(json.loads(args.render.read_text()), args.out.expanduser().resolve(), not args.no_chart)
    q = args.quick
    s = Settings(
        quick=q,
        repeats=args.repeats or (1 if q else 3),
        tokens=args.tokens or (4 if q else 32),
        cold_tokens=args.tokens or (4 if q else 16),
        read_tokens=3 if q else 8,
        seed_tokens=2 if q else 5,
        accelerate_tokens=3 if q else 8,
        big_tokens=2 if q else 3,
        timeout=60 if q else 420,
        membw_bytes=(64 if q else 1024) << 20,
        skip_big=args.skip_big,
        parallel=args.parallel or (2 if q else 1),
        prompt_lengths=(128, 384) if q else (1000, 3000),
        prefill_reps=(1, 1) if q else (2, 1),
        cancel_tokens=3000,
        cancel_after=0.3 if q else 2.0,  # the quick model's prefill of 3000 tokens lasts about a second
        gemm_size=512 if q else 3072,
        quality_context=1024,
        quality_chars=8000 if q else 0,
        draft_tokens=24 if q else 96,
        verify_reps=2 if q else 5,
    )
    started = time.time()
    work = args.work.expanduser().resolve()
    specs = checkpoints.quick_specs() if q else checkpoints.full_specs()
    if s.skip_big:
        specs.pop("wide")

    def say(text: str) -> None:
        print(f"[{time.time() - started:6.1f} s] {text}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    models = {key: checkpoints.ensure(spec, work, say) for key, spec in specs.items()}
    models["trained"] = demo_models.path("trained")
    for key, prep in checkpoints.prepared_specs(q).items():
        if prep.source in models or Path(prep.source).is_dir():
            models[key] = checkpoints.ensure_prepared(prep, models.get(prep.source) or Path(prep.source), work, say)
    build_s = time.perf_counter() - t0
    machine = machine_info(work)
    jobs, budgets = plan_jobs(models, s, work)

    def one(job: Job, rep: int) -> None:
        if rep >= job.repeats:  # jobs that repeat in-process run once
            return
        say(f"repeat {rep + 1}/{s.repeats}: {job.name} ({job.group})")
        errors = len(job.errors)
        run_job(job)
        if len(job.errors) > errors:
            say(f"  failed {job.name}: {job.errors[-1]}")

    big: dict | None = None
    big_pool = ThreadPoolExecutor(1)
    big_future = None
    if not s.skip_big and s.parallel > 1:  # quick mode: beside the contenders; else after them, alone
        say("BLOOM-176B-width blocks")
        big_future = big_pool.submit(big_section, models, s)
    for rep in range(s.repeats):
        if s.parallel > 1:  # quick mode only: timings there mean little, wall time matters
            with ThreadPoolExecutor(s.parallel) as pool:
                list(pool.map(one, jobs, [rep] * len(jobs)))
        else:
            for job in jobs:
                one(job, rep)
    if big_future is not None:
        big = big_future.result()
    elif not s.skip_big:
        say("BLOOM-176B-width blocks")
        big = big_section(models, s)
    big_pool.shutdown()
    machine["load_end"] = os.getloadavg()
    raw = {
        "settings": asdict(s),
        "machine": machine,
        "budgets": budgets,
        "models": {k: str(v) for k, v in models.items()},
        "build_s": build_s,
        "jobs": [asdict(j) | {"command": j.command} for j in jobs],
        "big": big,
        "argv": ["python", "-m", "benchmarks.run", *(argv if argv is not None else sys.argv[1:])],
        "total_s": time.time() - started,
    }
    out = args.out.expanduser().resolve()
    _render(raw, out, not args.no_chart)
    say(f"wrote {out} in {time.time() - started:.0f} s")
    return 0


def _render(raw: dict, out: Path, draw: bool) -> int:
    """Write the results JSON, the chart (if matplotlib is there) and the Markdown report."""
    from benchmarks import (
        activations,
        app_speed,
        batch,
        busy,
        draft_speed,
        hub_prepare,
        llamacpp,
        reads,
        report,
        serving,
        startup,
        tree_cost,
    )

    artifacts = out.parent / "benchmarks" / "results"
    artifacts.mkdir(parents=True, exist_ok=True)
    stem = "quick" if raw["settings"]["quick"] else "full"
    (artifacts / f"{stem}.json").write_text(json.dumps(raw, indent=1) + "\n")
    chart = report.chart(raw, artifacts / f"{stem}.png") if draw else None
    old_text = out.read_text() if out.exists() else ""
    out.write_text(report.markdown(raw, chart.relative_to(out.parent) if chart else None))
    # Sections measured by their own commands keep their place and stamp.
    own = (app_speed, reads, busy, batch, serving, draft_speed, tree_cost, startup, activations, hub_prepare)
    for section in [m.SECTION for m in own] + list(llamacpp.SECTIONS.values()):
        section.update(out, section.kept(old_text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
