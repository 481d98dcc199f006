"""bloomtui against llama.cpp on the same checkpoint, wholly in RAM, paired in one run.

    pip install -e '.[bench]'     # llama-cpp-python, built from source once (a few minutes)
    python -m benchmarks.llamacpp [--tokens 32] [--repeats 3] [--prompt-tokens 1000] [--family avx2]
                                  [--update BENCHMARKS.md]

The bloom-560m-shaped bf16 checkpoint (random weights, benchmarks/checkpoints.py) and its `bloomtui prepare`
int8/int4 copies, against GGUF files made from the same checkpoint by the converter llama.cpp ships
(convert_hf_to_gguf.py, from the llama-cpp-python sdist of the installed version, fetched once) as f16 and
quantised by llama.cpp to Q8_0 and Q4_0. Decode: greedy, the same prompt, seconds per token over `--tokens`
tokens after the prompt; prefill: one pass over a `--prompt-tokens` prompt. Both on all cores (torch's and
llama.cpp's default thread counts: one per core), every pair of rows alternating so a shared machine's drift
hits both alike.

`--family avx2` measures the pair an AVX2-only desktop runs, on a machine with more: bloomtui with its AVX2
kernels (BLOOMTUI_NATIVE=avx2) and torch's, oneDNN's and MKL's held to AVX2 (FAMILY_ENV, with their own
measurement cache), against a llama-cpp-python built for AVX2 only (the section quotes its system info):
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF
      -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF
      -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" pip install --force-reinstall llama-cpp-python
It writes its own section (llamacpp-avx2).

On this project's AMX-capable Xeon VM, llama.cpp built for the native CPU crashed (SIGSEGV in
ggml_backend_amx_mul_mat) on the first Q8_0 pass; built without its AMX kernels it runs:
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON
      -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF
      -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" pip install --force-reinstall llama-cpp-python
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import statistics
import subprocess
import sys
import tarfile
import time
from importlib import metadata
from pathlib import Path

from benchmarks.checkpoints import PreparedSpec, ensure, ensure_prepared, full_specs
from benchmarks.common import (
    BIG_BUDGET,
    PROMPT,
    RESULT_TAG,
    Section,
    commit_stamp,
    cpu_summary,
    evict,
    long_prompt,
    peak_rss,
    say,
    weight_files,
)
from benchmarks.jobs import BLOOMTUI_ENV, DEFAULT_WORK, Job, env_label, limited, run_job
from benchmarks.memlimit import unavailable

SECTION = Section("llamacpp")
SECTIONS = {"native": SECTION, "avx2": Section("llamacpp-avx2")}
FAMILY_ENV = {
    "avx2": {
        "BLOOMTUI_NATIVE": "avx2",
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    }
}
"""What holds bloomtui (its kernels, torch's, oneDNN's and MKL's) to a CPU family's instructions."""
INT4_HEAD = "int4, int4 head"
PAIRS = (("bf16", "f16"), ("int8", "Q8_0"), ("int4", "Q4_0"), (INT4_HEAD, "Q4_0"))
"""bloomtui's weights against llama.cpp's nearest format. llama.cpp's Q4_0 keeps BLOOM's tied embeddings/head in
Q6_K (6.6 bits a weight); bloomtui's int4 keeps them in int8 unless prepared with --head int4 (5 bits)."""
_FTYPES = {"Q8_0": 7, "Q4_0": 2}
"""llama.cpp's LLAMA_FTYPE_MOSTLY_* numbers."""
CONVERT = """
import runpy, sys
src, model, out = sys.argv[1:4]
sys.path[:0] = [src, src + "/gguf-py"]
from conversion import base
# Test checkpoints carry a tokenizer built offline, whose pre-tokenizer hash the converter does not know;
# it is BLOOM's own byte-level BPE.
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "bloom"
sys.argv = ["convert_hf_to_gguf.py", model, "--outtype", "f16", "--outfile", out]
runpy.run_path(src + "/convert_hf_to_gguf.py", run_name="__main__")
"""


def converter(work: Path) -> Path:
    """The llama.cpp sources (converter and gguf-py) of the installed llama-cpp-python, fetched once."""
    version = metadata.version("llama_cpp_python")
    src = work / f"llama.cpp-{version}"
    if (src / "convert_hf_to_gguf.py").is_file():
        return src
    say(f"fetching llama-cpp-python {version}'s sources for its GGUF converter ...")
    sdist = work / "sdist"
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(sdist)]
    subprocess.run([*pip, f"llama-cpp-python=={version}"], check=True, capture_output=True)
    archive = next(sdist.glob(f"llama_cpp_python-{version}.tar.gz"))
    with tarfile.open(archive) as tar:
        root = f"llama_cpp_python-{version}/vendor/llama.cpp/"
        wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
        members = [m for m in tar.getmembers() if m.name.startswith(tuple(root + w for w in wanted))]
        for m in members:
            m.name = m.name[len(root) :]
        tar.extractall(src, members=members, filter="data")
    return src


def ensure_gguf(model: Path, kind: str, work: Path) -> Path:
    out = work / "gguf" / f"{model.name}-{kind}.gguf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    if kind == "f16":
        say(f"converting {model.name} to GGUF f16 ...")
        src = converter(work)
        run = subprocess.run(
            [sys.executable, "-c", CONVERT, str(src), str(model), str(out)], capture_output=True, text=True
        )
        if run.returncode != 0:
            raise RuntimeError(f"convert_hf_to_gguf failed:\n{run.stderr[-2000:]}")
        return out
    import llama_cpp

    f16 = ensure_gguf(model, "f16", work)
    say(f"quantising {f16.name} to {kind} ...")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _FTYPES[kind]
    if llama_cpp.llama_model_quantize(str(f16).encode(), str(out).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama.cpp could not quantise {f16} to {kind}")
    return out


def worker(args: argparse.Namespace) -> None:
    """One llama.cpp run in this process: decode `--tokens` greedy tokens after PROMPT, or one prefill."""
    import os

    import llama_cpp
    import numpy as np
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    cores = os.cpu_count() or 1  # llama-cpp-python's own default is half the cores; torch takes them all
    llm = Llama(
        model_path=str(args.gguf), n_ctx=1024, n_batch=1024, n_threads=cores, n_threads_batch=cores, verbose=False
    )
    if args.prompt_tokens:
        tokenizer = AutoTokenizer.from_pretrained(str(args.model))
        ids = tokenizer(long_prompt(tokenizer, args.prompt_tokens))["input_ids"]
        llm.eval(ids[:64])  # warm-up
        seconds = []
        for _ in range(args.reps):
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(ids)
            seconds.append(time.perf_counter() - t0)
        print(RESULT_TAG + json.dumps({"prefill_s": statistics.median(seconds), "prompt_tokens": len(ids)}))
        return
    ids = llm.tokenize(PROMPT.encode(), add_bos=False, special=False)
    t0 = time.perf_counter()
    llm.eval(ids)
    token_s = [time.perf_counter() - t0]
    out = []
    for _ in range(args.tokens):
        row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),))
        token = int(np.argmax(row))
        out.append(token)
        t0 = time.perf_counter()
        llm.eval([token])
        token_s.append(time.perf_counter() - t0)
    decode = token_s[1:]
    peak = peak_rss()
    result = {"decode_mean_s": sum(decode) / len(decode), "prefill_s": token_s[0], "ids": out, "peak_rss": peak}
    print(RESULT_TAG + json.dumps(result))


def _llama_job(name: str, gguf: Path, model: Path, extra: list[str]) -> Job:
    """A run of this module's worker (Job.args are its arguments)."""
    return Job(name, "llamacpp", ["--gguf", str(gguf), "--model", str(model), *extra], 1, 900, {})


def run_llama(job: Job) -> None:
    try:
        with limited(job) as join:
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.llamacpp", "worker", *job.args], capture_output=True, text=True,
                timeout=job.timeout, preexec_fn=join,
            )  # fmt: skip
    except subprocess.TimeoutExpired:
        job.errors.append(f"timed out after {job.timeout:.0f} s")
        return
    if proc.returncode < 0:
        oom = " (out of memory?)" if proc.returncode == -9 else ""
        job.errors.append(f"killed by signal {-proc.returncode}{oom}")
        return
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith(RESULT_TAG)), None)
    if proc.returncode != 0 or line is None:
        job.errors.append(((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[-1][:300])
        return
    job.runs.append(json.loads(line[len(RESULT_TAG) :]))


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _med(job: Job, key: str) -> float:
    values = [r[key] for r in job.runs if key in r]
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = Section.parser(__doc__)
    sub = parser.add_subparsers(dest="command")
    w = sub.add_parser("worker")
    w.add_argument("--gguf", type=Path, required=True)
    w.add_argument("--model", type=Path, required=True)
    w.add_argument("--tokens", type=int, default=32)
    w.add_argument("--prompt-tokens", type=int, default=0)
    w.add_argument("--reps", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--note", default="", help="a sentence for the section, e.g. how llama.cpp was built")
    parser.add_argument(
        "--family", choices=sorted(SECTIONS), default="native",
        help="avx2: bloomtui held to AVX2 (pair it with a llama.cpp built for AVX2 only); its own section",
    )  # fmt: skip
    parser.add_argument(
        "--limited-tokens", type=int, default=8,
        help="tokens per run under a memory limit (1/4 of the bf16 model + 600 MB, cold; 0 skips those rows)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.command == "worker":
        worker(args)
        return
    bf16 = ensure(full_specs()["bf16"], args.work, say)
    models = {"bf16": bf16}
    for weights in ("int8", "int4"):
        models[weights] = ensure_prepared(PreparedSpec(f"{bf16.name}-{weights}", "bf16", weights), bf16, args.work, say)
    head4 = PreparedSpec(f"{bf16.name}-int4-head-int4", "bf16", "int4", head="int4")
    models[INT4_HEAD] = ensure_prepared(head4, bf16, args.work, say)
    ggufs = {kind: ensure_gguf(bf16, kind, args.work) for _, kind in PAIRS}
    n, budget = ["--tokens", str(args.tokens)], ["--budget", str(BIG_BUDGET)]
    pre = ["--prompt-tokens", str(args.prompt_tokens), "--reps", "2"]
    env = dict(BLOOMTUI_ENV)
    if args.family in FAMILY_ENV:  # measured afresh under the family's limits, not read from this CPU's cache
        env |= FAMILY_ENV[args.family] | {"BLOOMTUI_CACHE_DIR": str(args.work / f"cache-{args.family}")}
    jobs: dict[str, Job] = {}
    for ours, theirs in PAIRS:
        model = ["--model", str(models[ours])]
        jobs[f"bloomtui {ours}"] = Job(ours, "llamacpp", ["bloomtui", *model, *budget, *n], 1, 900, dict(env))
        jobs[f"llama.cpp {theirs}"] = _llama_job(theirs, ggufs[theirs], bf16, n)
    jobs["bloomtui bf16 prefill"] = Job("prefill", "llamacpp", ["prefill", "--model", str(bf16), *pre], 1, 900,
                                        dict(env))  # fmt: skip
    jobs["llama.cpp f16 prefill"] = _llama_job("f16 prefill", ggufs["f16"], bf16, pre)
    jobs["memory read"] = Job("floor", "membw", ["membw", "--bytes", str(2**30)], 1, 300, {})
    limit = limited_jobs(jobs, models, ggufs, bf16, args, env) if args.limited_tokens else 0
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        for name, job in jobs.items():
            if job.memory_limit:  # cold: the files' pages must be read, and charged, inside the limit
                evict([path for model in models.values() for path in weight_files(model)] + list(ggufs.values()))
            (run_llama if name.startswith("llama.cpp") else run_job)(job)
            say(f"{name}: {job.runs[-1] if job.runs else job.errors}")
    SECTIONS[args.family].publish(section(jobs, args, time.perf_counter() - t0, limit), args.update)


def limited_jobs(
    jobs: dict[str, Job], models: dict, ggufs: dict, bf16: Path, args: argparse.Namespace, env: dict[str, str]
) -> int:
    """Add each pair's runs under one memory limit (1/4 of the bf16 model + 600 MB): bloomtui on its default
    budget, which reads the limit; llama.cpp mapping its GGUF as it does by default. Returns the limit."""
    why = unavailable()
    if why:
        say(f"no runs under a memory limit: {why}")
        return 0
    limit = sum(p.stat().st_size for p in weight_files(bf16)) // 4 + 600 * 1000**2
    n = ["--tokens", str(args.limited_tokens)]
    for ours, theirs in PAIRS:
        model = ["--model", str(models[ours])]
        jobs[f"bloomtui {ours} limited"] = Job(
            ours, "llamacpp", ["bloomtui", *model, "--budget", "auto", *n], 1, 1800, dict(env), limit
        )
        job = _llama_job(theirs, ggufs[theirs], bf16, n)
        job.memory_limit, job.timeout = limit, 1800
        jobs[f"llama.cpp {theirs} limited"] = job
    return limit


def section(jobs: dict[str, Job], args: argparse.Namespace, seconds: float, limit: int = 0) -> str:
    try:
        version = metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        version = "(not installed)"
    family = getattr(args, "family", "native")
    held = ""
    if family in FAMILY_ENV:
        import llama_cpp

        system = llama_cpp.llama_print_system_info().decode().strip().rstrip("|").strip()
        held = (
            f" **Both held to {family.upper()}**: bloomtui with `{env_label(FAMILY_ENV[family])}`, llama.cpp built "
            f"with GGML_NATIVE=OFF and AVX-512/AMX off (its system info: `{system}`)."
        )
    out = [
        "## bloomtui against llama.cpp, in RAM" + (f", {family.upper()} on both sides" if held else ""),
        "",
        f"`python -m benchmarks.llamacpp --tokens {args.tokens} --repeats {args.repeats} --prompt-tokens "
        f"{args.prompt_tokens}{' --family ' + family if held else ''}` ({commit_stamp()}, {cpu_summary()}; "
        f"llama-cpp-python {version}, built from "
        f"source here; {seconds / 60:.0f} min). bloom-560m's shape, random weights, wholly in RAM, greedy; "
        "GGUF from llama.cpp's own converter, quantised by llama.cpp. Medians of the runs, alternating; "
        "same greedy ids: how many of the first tokens the two wrote alike (random weights: a near-tie decided the "
        "other way by f16 against bf16 rounding changes all that follow)." + held + " " + getattr(args, "note", ""),
        "",
        "| weights | bloomtui s/token | llama.cpp s/token | bloomtui ÷ llama.cpp tokens/s | same greedy ids |",
        "|---|---|---|---|---|",
    ]
    for ours, theirs in PAIRS:
        mine, theirs_job = jobs[f"bloomtui {ours}"], jobs[f"llama.cpp {theirs}"]
        a, b = _med(mine, "decode_mean_s"), _med(theirs_job, "decode_mean_s")
        ids = [run.get("ids") for run in (mine.runs[:1] + theirs_job.runs[:1])]
        same = "n/a" if len(ids) < 2 or None in ids else f"first {_common(*ids)} of {len(ids[0])}"
        failed = f" ({theirs_job.errors[0]})" if theirs_job.errors and not theirs_job.runs else ""
        out.append(f"| {ours} / {theirs} | {a:.4f} | {b:.4f}{failed} | **{b / a:.2f}x** | {same} |")
    a, b = _med(jobs["bloomtui bf16 prefill"], "prefill_s"), _med(jobs["llama.cpp f16 prefill"], "prefill_s")
    bf16 = jobs["bloomtui bf16"]
    weights = bf16.runs[0]["plan_bytes"] if bf16.runs else 0
    read = _med(jobs["memory read"], "read_bandwidth")
    floor = weights / read
    out += [
        "",
        f"Prefill of a {args.prompt_tokens}-token prompt: bloomtui bf16 {a:.2f} s, llama.cpp f16 {b:.2f} s "
        f"(bloomtui at **{b / a:.2f}x** llama.cpp's speed). Goal (issue 16): bloomtui >= 1.0x in every row.",
        "",
        f"Memory floor of bf16 decode: its {weights / 1e9:.2f} GB of weights read once per token at this "
        f"machine's read speed ({read / 1e9:.1f} GB/s, a sum over 1 GB) = {floor:.4f} s; bloomtui bf16 decodes "
        f"at **{floor / _med(bf16, 'decode_mean_s'):.2f}x** of it (goal: >= 0.7x).",
        *limited_section(jobs, args, limit),
        "",
    ]
    return SECTIONS[family].text(out)


def limited_section(jobs: dict[str, Job], args: argparse.Namespace, limit: int) -> list[str]:
    if not limit:
        return []
    out = [
        "",
        f"Under a memory limit of {limit / 1e9:.2f} GB (a memory cgroup: 1/4 of the bf16 model + 600 MB; page cache "
        f"counts), each run from a cold page cache, {args.limited_tokens} tokens: bloomtui on its default budget "
        "(which reads the limit), llama.cpp mapping its GGUF as it does by default.",
        "",
        "| weights | bloomtui s/token (peak RSS) | llama.cpp s/token (peak RSS) | bloomtui ÷ llama.cpp tokens/s |",
        "|---|---|---|---|",
    ]
    for ours, theirs in PAIRS:
        cells = []
        for job in (jobs[f"bloomtui {ours} limited"], jobs[f"llama.cpp {theirs} limited"]):
            if job.runs:
                rss = statistics.median(r.get("peak_rss", 0) for r in job.runs)
                budget = f", budget {job.runs[0]['budget'] / 1e6:.0f} MB" if "budget" in job.runs[0] else ""
                cells.append(
                    (_med(job, "decode_mean_s"), f"{_med(job, 'decode_mean_s'):.3f} ({rss / 1e6:.0f} MB{budget})")
                )
            else:
                cells.append((float("nan"), f"failed: {job.errors[0] if job.errors else 'no run'}"))
        ratio = cells[1][0] / cells[0][0]
        shown = "n/a" if math.isnan(ratio) else f"**{ratio:.2f}x**"
        out.append(f"| {ours} / {theirs} | {cells[0][1]} | {cells[1][1]} | {shown} |")
    return out


if __name__ == "__main__":
    main()
