"""The benchmark harness runs end to end and stays honest. No timing is asserted: speed lives in BENCHMARKS.md."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import checkpoints
from benchmarks.common import PROMPT
from benchmarks.floors import streamed_ranges
from benchmarks.seed import seed_generate
from bloomtui import demo
from bloomtui.engine import Engine, EngineOptions, SamplingParams
from bloomtui.engine.events import Done
from bloomtui.engine.plan.residency import ResidencyPlan, minimum_budget
from bloomtui.engine.weights.checkpoint import Checkpoint
from bloomtui.openmp import DEFAULTS as OPENMP_DEFAULTS

REPO = Path(__file__).resolve().parent.parent

CONTENDER_ROWS = (
    "| transformers |",
    "| bloomtui resident |",
    "| bloomtui resident, default OpenMP env |",
    "| bloomtui stream warm |",
    "| transformers, " + " ".join(f"{k}={v}" for k, v in OPENMP_DEFAULTS.items()) + " |",
    "| bloomtui stream cold |",
    "| floor: raw read warm",
    "| floor: raw read cold",
    "| accelerate disk offload",
    "| floor: resident weights / memory bandwidth",
    "| seed method warm |",
    "| seed method cold |",
    "| bloomtui all streamed warm |",
    "| bloomtui all streamed cold |",
    "| floor: raw read all warm",
    "| floor: raw read all cold",
    # compressed weights: the scheme summary and the int8/int4 tables
    "| int8 | ",
    "| int4 | ",
    "### int8, ",
    "### int4, ",
    # long prompts
    "| bloomtui bf16, path it chooses |",
    "| bloomtui bf16, other path forced |",
    "| transformers bf16 forward |",
    "| bloomtui fp32 |",
    "| transformers fp32 forward |",
    "| bloomtui fp32, engine before chunked prefill |",
    # quality
    "| bf16 |  | ",
    # speculative decoding
    "| story | warm | trained-draft |",
    "| story | cold | trained-draft |",
    "| repeat | warm | prompt-lookup |",
    "| no-repeat | cold | prompt-lookup |",
    "| bf16 | 7 GB/s |",
    "| int4 | 7 GB/s |",
)
SECTIONS = (
    "## Compressed weights (`bloomtui prepare`)",
    "## Long prompts: prefill",
    "## Quality: perplexity and greedy agreement",
    "### int4 (`bloomtui prepare --weights int4` of the same 3 blocks)",
    "GEMM peak on this machine",
    "Cancel: `generate` of a",
    "## Speculative decoding (`--draft`)",
    "### BLOOM-176B with bloom-560m drafting, projected",
)
GOALS = (
    "compressed, fully in RAM decode: int8",
    "compressed, fully in RAM decode: int4",
    "compressed, RAM budget 1/4 of the bf16 model, warm: int4",
    "compressed, RAM budget 1/4 of the bf16 model, cold: int4",
    "compressed int8, RAM budget 1/4 of the bf16 model, cold",
    "compressed int4, RAM budget 1/4 of the bf16 model, warm",
    "**compressed weights**: seed method",
    "bloomtui s (the path bloomtui chooses)",
    "FLOPS achieved ÷ this machine's fp32 GEMM peak",
    "not slower than today",
    "cancel during a 3000-token prefill",
    "trained demo model, int8 ÷ bf16",
    "trained demo model, int4 ÷ bf16",
    "BLOOM-176B int4 projected s/token",
    "trained demo at 1/4 budget, trained-draft drafting (warm)",
    "prompt lookup, a prompt asking to repeat a passage (cold)",
    "prompt lookup, a prompt where nothing repeats (warm)",
    "verify cost, bloom-560m shape at 1/4 budget (cold)",
)


def _transformers_greedy(folder: Path, prompt_ids: list[int], n: int, dtype: torch.dtype) -> list[int]:
    from transformers import BloomForCausalLM

    model = BloomForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    ids = torch.tensor([prompt_ids])
    out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=3)
    return out[0, len(prompt_ids) :].tolist()


@pytest.mark.parametrize("untied", [True, False])
def test_seed_method_matches_transformers_greedy(tmp_path: Path, untied: bool) -> None:
    folder = demo.write_demo_model(
        tmp_path / "m", preset="small", layout="bigscience", dtype="float32", init_std=0.2, untied=untied
    )
    from transformers import AutoTokenizer

    prompt_ids = AutoTokenizer.from_pretrained(folder)(PROMPT)["input_ids"]
    got = seed_generate(folder, prompt_ids, 8, dtype=torch.float32)
    want = _transformers_greedy(folder, prompt_ids, 8, torch.float32)
    assert got == want
    if untied:
        assert len(set(want)) > 2  # varied text, so equal ids prove something


def _floor_and_run(folder: Path, budget: int, n: int) -> tuple[int, Done, ResidencyPlan]:
    """(the floor's bytes per decode token, bloomtui's run of `n` tokens under `budget`, its plan)."""
    per_token = sum(length for _, _, length in streamed_ranges(folder, budget))
    engine = Engine.open(folder, EngineOptions(ram_budget=budget))
    try:
        done = engine.generate(PROMPT, SamplingParams(max_new_tokens=n, ignore_eos=True))
        return per_token, done, engine.model_plan.plan
    finally:
        engine.close()


def test_raw_read_floor_reads_what_the_engine_streams(tmp_path: Path) -> None:
    """The floor's byte ranges are exactly the bytes bloomtui reads per decode token."""
    folder = demo.write_demo_model(tmp_path / "m", preset="small", layout="bigscience", dtype="float32")
    ckpt = Checkpoint.open(folder)
    budget = minimum_budget(ckpt, 4) + ckpt.block_nbytes()  # one resident block, the rest streamed
    n = 4
    per_token, done, plan = _floor_and_run(folder, budget, n)
    assert plan.streamed_blocks  # the floor must have something to read
    rows_from_disk = not (plan.head_resident and ckpt.tied)
    row = ckpt.embeddings.shape[1] * ckpt.embeddings.dtype.itemsize if rows_from_disk else 0
    assert done.bytes_read == n * per_token + (done.prompt_tokens - 1) * row


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_raw_read_floor_reads_what_the_engine_streams_prepared(tmp_path: Path, weights: str) -> None:
    """The same for a prepared folder: `.qweight`/`.scales` of streamed blocks, the int8 head's chunks and
    scales, the embedding row and its scale."""
    from bloomtui.engine.prepare import prepare

    source = demo.write_demo_model(tmp_path / "m", preset="tiny", layout="safetensors", dtype="float32")
    folder = prepare(source, tmp_path / weights, weights)
    ckpt = Checkpoint.open(folder)
    budget = minimum_budget(ckpt, 2)  # every block and the head streamed (tiny blocks are smaller than 2 slots)
    n = 3
    per_token, done, plan = _floor_and_run(folder, budget, n)
    assert plan.streamed_blocks and not plan.head_resident
    row = ckpt.embeddings.shape[1] * ckpt.embeddings.dtype.itemsize + ckpt.embedding_scales.dtype.itemsize
    assert done.bytes_read == n * per_token + (done.prompt_tokens - 1) * row


def test_prepared_checkpoints_are_rebuilt_when_their_source_changes(tmp_path: Path) -> None:
    source = demo.write_demo_model(tmp_path / "m", preset="tiny", layout="safetensors", dtype="float32")
    spec = checkpoints.PreparedSpec("m-int8", "m", "int8")
    said: list[str] = []
    first = checkpoints.ensure_prepared(spec, source, tmp_path / "work", said.append)
    assert checkpoints.ensure_prepared(spec, source, tmp_path / "work", said.append) == first
    assert len(said) == 1  # cached
    demo.write_demo_model(source, preset="tiny", layout="safetensors", dtype="float32", init_std=0.2, overwrite=True)
    checkpoints.ensure_prepared(spec, source, tmp_path / "work", said.append)
    assert len(said) == 2  # re-exported in place: prepared again
    assert Checkpoint.open(first).scheme.weights == "int8"


def test_wide_block_writer_gives_a_loadable_checkpoint(tmp_path: Path) -> None:
    shape = demo.DemoShape(n_layer=2, hidden_size=64, n_head=4, vocab_size=512)
    folder = checkpoints.write_wide_blocks(tmp_path / "wide", shape)
    ckpt = Checkpoint.open(folder)
    assert ckpt.n_blocks == 2 and ckpt.dtype == torch.bfloat16
    assert len(ckpt.files) == 4  # embeddings, one shard per block, ln_f
    engine = Engine.open(folder, EngineOptions(ram_budget=minimum_budget(ckpt, 2)))
    try:
        ids = engine.encode("Hello")
        done = engine.generate("Hello", SamplingParams(max_new_tokens=3, ignore_eos=True))
    finally:
        engine.close()
    assert list(done.token_ids) == _transformers_greedy(folder, ids, 3, torch.bfloat16)


def test_quick_harness_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--work", str(tmp_path / "work"), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    for row in CONTENDER_ROWS:
        assert row in text, f"no row {row!r} in the report"
    assert "## Goals" in text and "## Exact commands" in text and "## Machine" in text
    assert "Projection for BLOOM-176B" in text and "T = max(S / bw, C)" in text
    for section in SECTIONS:
        assert section in text, f"no {section!r} in the report"
    goal_rows = text.split("## Goals", 1)[1].split("\n## ", 1)[0]
    for goal in GOALS:
        assert goal in goal_rows, f"no goal {goal!r}"
    assert "missing run" not in goal_rows

    raw = json.loads((tmp_path / "benchmarks" / "results" / "quick.json").read_text())
    for job in raw["jobs"]:
        if job["args"][0] == "accelerate" and job["errors"]:
            assert "failed:" in text  # an Accelerate failure is recorded in its row, not hidden
            continue
        assert job["runs"], f"{job['name']} ({job['group']}) failed: {job['errors']}"
        for run in job["runs"]:
            assert run["peak_rss"] > 50_000_000
            for key in ("decode_s", "prefill_s", "load_s", "bandwidth"):
                if key in run:
                    assert math.isfinite(run[key]) and run[key] >= 0, (job["name"], key, run[key])
            if "token_s" in run:
                assert all(t > 0 for t in run["token_s"])
            if job["args"][0] in ("hf", "bloomtui", "seed", "accelerate"):
                assert len(run["ids"]) == len(run["token_s"]) > 0
            if job["args"][0] == "bloomtui" and "--budget" in job["args"]:
                streaming = run["resident_blocks"] < run["n_blocks"] or not run["head_resident"]
                assert streaming == (run["bytes_read"] > 0)
            kind = job["args"][0]
            if kind == "prefill":
                assert run["prompt_tokens"] > 100 and run["upcast"] in (True, False, None)
            if kind in ("prefill", "hfprefill"):
                assert len(run["runs_s"]) >= 1 and all(t > 0 for t in run["runs_s"])
            if kind == "cancel":
                assert len(run["latency_s"]) == 3 and all(math.isfinite(t) for t in run["latency_s"])
            if kind == "ppl":
                assert math.isfinite(run["perplexity"]) and run["perplexity"] > 1 and len(run["ids"]) == 64
            if kind == "gemm":
                assert run["bfloat16_gflops"] > 0 and run["float32_gflops"] > 0
    by = {(j["group"], j["name"]): j for j in raw["jobs"]}
    forced = by[("prefill 128", "bloomtui bf16, other path forced")]["runs"][0]
    chosen = by[("prefill 128", "bloomtui bf16, path it chooses")]["runs"][0]
    assert forced["upcast"] != chosen["upcast"]  # both multiply paths are measured
    hf = by[("prefill 128", "transformers bf16 forward")]["runs"][0]
    assert hf["ids"] == chosen["ids"] and hf["prompt_tokens"] == chosen["prompt_tokens"]  # the same prompt ids
    for scheme in ("int8", "int4"):
        assert by[("quality", f"trained {scheme}")]["runs"][0]["weights"] == scheme
    big = raw["big"]
    for suffix in ("", "_int4"):
        assert big["bigblock" + suffix]["runs"], big["bigblock" + suffix]["errors"]
        assert big["stream" + suffix]["runs"] or big["stream" + suffix]["errors"][0].startswith("skipped")
    assert big["bigblock_int4"]["runs"][0]["weights"] == "int4"


def test_draft_projection_arithmetic() -> None:
    from benchmarks.report_drafting import best_k, tokens_per_pass

    assert tokens_per_pass(0.0, 4) == 1 and tokens_per_pass(1.0, 4) == 5
    assert tokens_per_pass(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    # Reads dominate (a pass costs 10 s whatever its rows) and drafting is free: the longest draft wins.
    k, seconds = best_k(lambda rows: 10.0, 0.0, 0.9)
    assert k == 8 and seconds == pytest.approx(10 / tokens_per_pass(0.9, 8))
    # A draft as slow as the pass is never worth more than one token.
    assert best_k(lambda rows: 1.0, 1.0, 0.5)[0] == 1


def test_llamacpp_section_pairs_each_format_with_its_nearest() -> None:
    """The llama.cpp comparison's table from its runs (the runs need llama-cpp-python, which CI lacks)."""
    import argparse

    from benchmarks.jobs import Job
    from benchmarks.llamacpp import PAIRS, section

    def job(key: str, *values: float) -> Job:
        j = Job("x", "llamacpp", [], 1, 1, {})
        j.runs = [{key: v} for v in values]
        return j

    jobs = {f"bloomtui {ours}": job("decode_mean_s", 0.04, 0.05, 0.06) for ours, _ in PAIRS}
    jobs |= {f"llama.cpp {theirs}": job("decode_mean_s", 0.02, 0.025, 0.03) for _, theirs in PAIRS}
    jobs["bloomtui bf16 prefill"], jobs["llama.cpp f16 prefill"] = job("prefill_s", 6.0), job("prefill_s", 3.0)
    for run in jobs["bloomtui bf16"].runs:
        run["plan_bytes"] = 1.5e9
    jobs["memory read"] = job("read_bandwidth", 30e9)
    args = argparse.Namespace(tokens=32, repeats=3, prompt_tokens=1000, limited_tokens=8)
    text = section(jobs, args, 60.0)
    assert "| bf16 / f16 | 0.0500 | 0.0250 | **0.50x** |" in text and "| int4 / Q4_0 |" in text
    assert "bloomtui bf16 6.00 s, llama.cpp f16 3.00 s (bloomtui at **0.50x**" in text
    assert "= 0.0500 s; bloomtui bf16 decodes at **1.00x** of it" in text  # 1.5 GB at 30 GB/s
    assert "memory limit" not in text  # no limited runs asked for
    for ours, theirs in PAIRS:
        jobs[f"bloomtui {ours} limited"] = job("decode_mean_s", 0.5)
        jobs[f"bloomtui {ours} limited"].runs[0] |= {"peak_rss": 700e6, "budget": 256e6}
        jobs[f"llama.cpp {theirs} limited"] = job("decode_mean_s", 1.0)
    jobs["llama.cpp Q4_0 limited"].runs, jobs["llama.cpp Q4_0 limited"].errors = [], ["killed by signal 9"]
    text = section(jobs, args, 60.0, limit=880_000_000)
    assert "memory limit of 0.88 GB" in text
    assert "| bf16 / f16 | 0.500 (700 MB, budget 256 MB) | 1.000 (0 MB) | **2.00x** |" in text
    assert "| int4 / Q4_0 | 0.500 (700 MB, budget 256 MB) | failed: killed by signal 9 | n/a |" in text


def test_a_worker_peak_rss_is_its_own_not_the_harness_it_was_started_from() -> None:
    """A worker forked from a big harness process reports its own high-water mark (ru_maxrss would carry
    the harness's RSS across fork and exec: 11.3 GB in every row after the harness built a 176B block)."""
    ballast = torch.ones(64 * 1024 * 1024, dtype=torch.float32)  # 256 MB resident in this process
    code = "from benchmarks.common import peak_rss; print(peak_rss())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert int(out.stdout) < ballast.numel() * 4 / 2
