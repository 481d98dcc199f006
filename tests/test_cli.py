"""The CLI end to end, in a subprocess as a user runs it."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bloomtui import demo
from tests.checkpoints import Written, write_checkpoint


def bloomtui(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bloomtui", *args], capture_output=True, text=True, input=stdin, timeout=120
    )


def test_generate_json_events(tiny_model: Written) -> None:
    run = bloomtui("generate", str(tiny_model.path), "Hello there", "--max-new-tokens", "6", "--ignore-eos", "--json")
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "done" and kinds.count("token") == 6
    block = next(e for e in events if e["event"] == "block")
    assert {"index", "total", "bytes", "read_seconds", "compute_seconds", "rss"} <= block.keys()
    token = next(e for e in events if e["event"] == "token")
    assert {"id", "text", "logprob"} <= token.keys() and token["logprob"] <= 0
    done = events[-1]
    assert {"token_ids", "text", "tokens_per_second", "peak_rss", "bytes_read"} <= done.keys()
    assert done["token_ids"] == [e["id"] for e in events if e["event"] == "token"]


def test_generate_text_matches_json_and_reads_stdin(tiny_model: Written) -> None:
    args = ("--max-new-tokens", "8", "--ignore-eos")
    as_json = bloomtui("generate", str(tiny_model.path), "Hola", *args, "--json")
    text = bloomtui("generate", str(tiny_model.path), "-", *args, stdin="Hola")
    assert text.returncode == 0, text.stderr
    done = json.loads(as_json.stdout.splitlines()[-1])
    assert text.stdout == done["text"] + ("" if done["text"].endswith("\n") else "\n")
    assert "tokens/s" in text.stderr


def test_the_prompt_may_follow_options(tiny_model: Written) -> None:
    args = ("--max-new-tokens", "4", "--ignore-eos", "--json")
    before = bloomtui("generate", str(tiny_model.path), "Hola", *args)
    after = bloomtui("generate", str(tiny_model.path), *args, "Hola")
    assert after.returncode == 0, after.stderr
    ids = [json.loads(run.stdout.splitlines()[-1])["token_ids"] for run in (before, after)]
    assert ids[0] == ids[1] and len(ids[0]) == 4


def test_streamed_budget_from_cli(tiny_model: Written) -> None:
    run = bloomtui("generate", str(tiny_model.path), "Hi", "--max-new-tokens", "3", "--ram-budget", "1.2MB", "--json")
    assert run.returncode == 0, run.stderr
    blocks = [json.loads(x) for x in run.stdout.splitlines() if '"event": "block"' in x]
    assert any(b["bytes"] > 0 for b in blocks)


def test_prepare_with_an_int4_head_and_info_says_so(tmp_path: Path) -> None:
    source = write_checkpoint(tmp_path / "src", preset="tiny", dtype="float32")  # hidden 64: int4 rows fit
    out = tmp_path / "out"
    done = bloomtui("prepare", str(source.path), str(out), "--weights", "int4", "--head", "int4")
    assert done.returncode == 0, done.stderr
    info = bloomtui("info", str(out))
    assert "weights     int4, group size 64, embeddings/head int4 (prepared by bloomtui, format 2)" in info.stdout
    refused = bloomtui("prepare", str(source.path), str(tmp_path / "b"), "--weights", "bf16", "--head", "int4")
    assert refused.returncode == 2 and "--head int4 needs --weights int8 or int4" in refused.stderr
    assert not (tmp_path / "b").exists()


def test_info(tiny_model: Written) -> None:
    run = bloomtui("info", str(tiny_model.path), "--ram-budget", "1.2MB", "--json")
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    assert info["n_layer"] == 4 and info["streamed_blocks"] and info["stored_dtype"] == "float16"
    assert info["reads"] == "buffered" and "fit in free memory" in info["reads_reason"]  # fp16: read and converted
    assert info["threads_follow_load"] and info["threads"] >= 1
    human = bloomtui("info", str(tiny_model.path))
    assert "resident    4/4 blocks" in human.stdout and "\nreads " not in human.stdout  # nothing streams
    assert "fewer while other programs hold cores" in human.stdout
    assert "\ndecode      " in human.stdout and "kernels" in info["decode"]
    exact = bloomtui("info", str(tiny_model.path), "--activations", "exact", "--json")
    if "native" in info["decode"]:  # where the native kernels run, the asked way is said for int8/int4 rows
        assert "int8 rows exact (asked)" in json.loads(exact.stdout)["decode"]
    forced = bloomtui("info", str(tiny_model.path), "--ram-budget", "1.2MB", "--reads", "direct", "--threads", "1")
    assert "reads       direct I/O (O_DIRECT through a staging buffer" in forced.stdout, forced.stdout
    assert "--reads direct" in forced.stdout and "threads     1 (--threads)" in forced.stdout


def test_info_with_a_draft_plans_what_generate_would(tiny_model: Written) -> None:
    """The draft model's resident bytes come out of --ram-budget before the target is planned."""
    alone = json.loads(bloomtui("info", str(tiny_model.path), "--ram-budget", "5MB", "--json").stdout)
    run = bloomtui("info", str(tiny_model.path), "--ram-budget", "5MB", "--draft", str(tiny_model.path), "--json")
    assert run.returncode == 0, run.stderr
    drafted = json.loads(run.stdout)
    held = drafted["draft"]["resident_bytes"]
    assert held > 0 and drafted["ram_budget"] == alone["ram_budget"] - held
    assert alone["draft"] is None
    lookup = bloomtui("info", str(tiny_model.path), "--draft", "prompt-lookup")
    assert "draft       prompt-lookup (drafts from the text itself" in lookup.stdout, lookup.stderr


def test_demo_model_then_generate(tmp_path: Path) -> None:
    run = bloomtui("demo-model", str(tmp_path / "demo"), "--preset", "tiny", "--layout", "bigscience")
    assert run.returncode == 0, run.stderr
    assert "noise" in run.stdout
    gen = bloomtui("generate", str(tmp_path / "demo"), "Hello", "--max-new-tokens", "3")
    assert gen.returncode == 0, gen.stderr
    again = bloomtui("demo-model", str(tmp_path / "demo"))
    assert again.returncode == 2 and "not empty" in again.stderr
    umask = os.umask(0)
    os.umask(umask)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in (tmp_path / "demo").iterdir()}
    assert set(modes.values()) == {0o666 & ~umask}, modes  # as the user's other files (safetensors writes 0600)


def test_download_fails_at_once_when_the_hub_cannot_be_reached() -> None:
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens on the discard port
    start = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "bloomtui", "download", "bigscience/bloom-560m"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 2 and run.stderr.startswith("error: cannot reach 127.0.0.1:9"), run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert time.monotonic() - start < 20  # huggingface_hub alone retries for ~26 s


def test_perplexity_json_and_text(tiny_model: Written, tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20, encoding="utf-8")
    run = bloomtui("perplexity", str(tiny_model.path), str(text), "--context", "64", "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert set(result) == {"perplexity", "tokens", "nll", "seconds", "windows", "batch"}
    assert result["windows"] > 1 and result["perplexity"] == pytest.approx(math.exp(result["nll"]), rel=1e-9)
    human = bloomtui("perplexity", str(tiny_model.path), str(text), "--context", "64", "--ram-budget", "1.2MB")
    assert human.returncode == 0, human.stderr
    assert f"tokens      {result['tokens']} predicted" in human.stdout
    shown = float(human.stdout.split()[1])
    assert shown == pytest.approx(result["perplexity"], rel=1e-4)  # streamed = resident


def _bad_text_files(tmp_path: Path) -> dict[str, Path]:
    files = {"empty": b"", "binary": b"abc\0def" * 10, "latin1": "caf\xe9 au lait".encode("latin-1")}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return {name: tmp_path / name for name in files}


@pytest.mark.parametrize(
    "which, needle",
    [("empty", "empty"), ("binary", "binary"), ("latin1", "not UTF-8"), ("missing", "no such file"), ("dir", "folder")],
)
def test_perplexity_bad_files(tiny_model: Written, tmp_path: Path, which: str, needle: str) -> None:
    files = _bad_text_files(tmp_path)
    path = {"missing": tmp_path / "nope.txt", "dir": tmp_path}.get(which) or files[which]
    run = bloomtui("perplexity", str(tiny_model.path), str(path))
    assert run.returncode == 2 and run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], run.stderr


@pytest.mark.parametrize(
    "args, needle",
    [
        (["perplexity", "{model}", "{model}/config.json", "--context", "1"], "--context must be at least 2"),
        (["generate", "{model}", "x", "--max-new-tokens", "-3"], "--max-new-tokens"),
        (["generate", "{model}", "x", "--max-new-tokens", "abc"], "--max-new-tokens"),
        (["generate", "{model}", "x", "--temperature", "-1"], "--temperature must be > 0"),
        (["generate", "{model}", "x", "--temperature", "0"], "--temperature must be > 0 (use --greedy"),
        (["generat", "{model}", "hi"], "unknown command 'generat'; did you mean 'generate'?"),
        (["demo-model", "/proc/x"], "cannot create /proc/x"),
        (["info", "tests/no-such-model"], "tests/no-such-model: no such folder"),
        (["--demo"], "the app needs a terminal"),
        (["generate", "{model}", "x", "--top-p", "1.5"], "--top-p"),
        (["generate", "{model}", "x", "--ram-budget", "lots"], "--ram-budget"),
        (["generate", "{model}", "x", "--ram-budget", "10kB"], "RAM budget 10 kB is below"),
        (["generate", "{model}", "x", "--greedy", "--temperature", "1"], "not allowed with"),
        (["generate", "{model}/config.json", "x"], "config.json"),
        (["generate", "/does/not/exist", "x"], "/does/not/exist"),
        (["generate", "{model}", ""], "prompt is empty"),
        (["info", "no-such-org/no-such-model"], "not in the local Hugging Face cache"),
        (["generate", "{model}", "x", "--dtype", "float16"], "--dtype"),
        (["generate", "{model}"], "give a PROMPT"),
        (["generate", "{model}", "x", "--prompts", "-"], "not both"),
        (["generate", "{model}", "--max-new-tokens", "2", "x", "y"], "unrecognized arguments: x y"),
        (["info", "{model}", "--draft", "/no/such/draft"], "/no/such/draft: no such folder"),
        (["generate", "{model}", "x", "--samples", "0"], "--samples must be in 1..256"),
        (["generate", "{model}", "--prompts", "/no/such/prompts.txt"], "no such file"),
        (["generate", "{model}", "--prompts", "-"], "no prompts (one per line)"),
        (["generate", "http://127.0.0.1:9", "x", "--samples", "2"], "local models only"),
        (["perplexity", "{model}", "{model}/config.json", "--batch", "0"], "--batch must be at least 1"),
    ],
)
def test_errors_are_one_line_exit_2(tiny_model: Written, args: list[str], needle: str) -> None:
    run = bloomtui(*[a.format(model=tiny_model.path) for a in args], stdin="")  # stdin: a pipe, not a terminal
    assert run.returncode == 2
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], run.stderr
    assert "Traceback" not in run.stderr


def test_help_explains() -> None:
    run = bloomtui("--help")
    assert run.returncode == 0
    for word in ("generate", "info", "demo-model", "download"):
        assert word in run.stdout
    gen = bloomtui("generate", "--help")
    assert "--ram-budget" in gen.stdout and "--stop" in gen.stdout


def test_repo_id_resolves_from_the_local_hf_cache(tiny_model: Written, tmp_path: Path) -> None:
    import os
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--bigscience--bloom-tiny-test"
    shutil.copytree(tiny_model.path, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "bloomtui", "info", "bigscience/bloom-tiny-test", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["path"].endswith(commit)


def test_generate_with_a_draft_gives_the_same_output(tiny_model: Written) -> None:
    args = ("generate", str(tiny_model.path), "ab ab ab ab ab", "--max-new-tokens", "12", "--ignore-eos", "--json")
    plain = json.loads(bloomtui(*args).stdout.splitlines()[-1])
    assert plain["passes"] == 12 and plain["draft_proposed"] == 0
    drafts = (
        ["--draft", str(tiny_model.path)],
        ["--draft", str(tiny_model.path), "--draft-tree", "8"],
        ["--draft", "prompt-lookup", "--draft-tokens", "3"],
    )
    for draft in drafts:
        run = bloomtui(*args, *draft)
        assert run.returncode == 0, run.stderr
        events = [json.loads(line) for line in run.stdout.splitlines()]
        done = events[-1]
        assert done["token_ids"] == plain["token_ids"] and done["text"] == plain["text"]
        assert done["passes"] == 12 - done["draft_accepted"]
        verify = [e for e in events if e["event"] == "block" and e["kind"] == "verify"]
        assert all(e["rows"] > 1 for e in verify) and len(verify) <= done["draft_proposed"] * 4
        drafted = [e for e in events if e["event"] == "draft"]
        # A tree's event shows its best line and counts its nodes; a chain's shows every drafted token.
        assert sum(e["nodes"] or len(e["ids"]) for e in drafted) == done["draft_proposed"]
    # The model as its own draft: every drafted token is kept.
    text = bloomtui(*args[:-1], "--draft", str(tiny_model.path), "--ram-budget", "4MB")
    assert text.returncode == 0, text.stderr
    assert re.search(r"draft model: (\d+)/\1 accepted \(100%\), [\d.]+ tokens/pass", text.stderr), text.stderr
    # Sampling with a draft: speculative sampling, reproducible with --seed.
    for tree in ("off", "8"):
        sampling = ("--temperature", "0.8", "--seed", "5", "--draft-tree", tree)
        sampled = [bloomtui(*args, "--draft", str(tiny_model.path), *sampling) for _ in "ab"]
        assert all(r.returncode == 0 for r in sampled), sampled[0].stderr
        first, second = (json.loads(r.stdout.splitlines()[-1]) for r in sampled)
        assert first["token_ids"] == second["token_ids"] and first["draft_proposed"] > 0
        # A chain sampled from the model itself is always kept; a tree's nodes are its top tokens, kept with
        # the model's probability of each (tiny for this random model's flat distribution).
        if tree == "off":
            assert first["draft_accepted"] == first["draft_proposed"]


def test_draft_errors_are_one_line_exit_2(tiny_model: Written, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(tiny_model.path, other)
    demo.save_tokenizer(512, other)
    model = str(tiny_model.path)
    cases = [
        (["--draft", str(other)], "tokenizer differs"),
        (["--draft-tokens", "3"], "need --draft"),
        (["--draft", "prompt-lookup", "--draft-tree", "65"], "--draft-tree must be"),
        (["--draft", "prompt-lookup", "--draft-tree", "16", "--draft-tokens", "2"], "--draft-tree off only"),
        (["--draft", "prompt-lookup", "--draft-tokens", "0"], "--draft-tokens must be"),
        (["--draft", model, "--ram-budget", "2MB"], "draft model"),
    ]
    for extra, needle in cases:
        run = bloomtui("generate", model, "x", *extra)
        assert run.returncode == 2, (extra, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], run.stderr


def _token_ids(*args: str) -> list[int]:
    run = bloomtui("generate", *args, "--json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.splitlines()[-1])["token_ids"]


def test_generate_takes_the_models_generation_config_for_unset_options() -> None:
    from bloomtui import demo_models

    model, prompt = str(demo_models.path("trained")), "A dictionary maps keys to"
    default = _token_ids(model, prompt, "--ignore-eos")
    assert len(default) == 128  # the shipped generation_config.json's max_new_tokens
    explicit = _token_ids(model, prompt, "--ignore-eos", "--repetition-penalty", "1.2", "--max-new-tokens", "128")
    assert default == explicit
    plain = _token_ids(model, prompt, "--ignore-eos", "--repetition-penalty", "1", "--max-new-tokens", "128")
    assert plain != default  # the user's 1 (off) wins over the model's 1.2
    info = bloomtui("info", model)
    assert "repetition-penalty 1.2" in info.stdout and "max-new-tokens 128" in info.stdout


def _json_events(run: subprocess.CompletedProcess[str]) -> list[dict]:
    assert run.returncode == 0, run.stderr
    return [json.loads(line) for line in run.stdout.splitlines()]


def test_samples_equal_single_runs_with_seed_s_plus_i(tiny_model: Written) -> None:
    args = ("generate", str(tiny_model.path), "Hello there", "--max-new-tokens", "6", "--ignore-eos", "--json")
    sampling = ("--temperature", "1.5", "--top-k", "50")
    events = _json_events(bloomtui(*args, *sampling, "--samples", "3", "--seed", "5"))
    done = {e["sequence"]: e for e in events if e["event"] == "done"}
    assert sorted(done) == [0, 1, 2]
    for i in range(3):
        single = _json_events(bloomtui(*args, *sampling, "--seed", str(5 + i)))[-1]
        assert done[i]["token_ids"] == single["token_ids"] and done[i]["passes"] == 6
        assert [e["id"] for e in events if e["event"] == "token" and e["sequence"] == i] == single["token_ids"]
    assert len({tuple(d["token_ids"]) for d in done.values()}) > 1


def test_prompts_file_and_stdin_label_each_sequence(tiny_model: Written, tmp_path: Path) -> None:
    prompts = ["Hola", "The SQL command to extract all the users whose name starts with A is:", "ab ab ab"]
    (tmp_path / "prompts.txt").write_text("\n".join([prompts[0], "", *prompts[1:]]) + "\n")
    args = ("--max-new-tokens", "5", "--ignore-eos")
    run = bloomtui("generate", str(tiny_model.path), "--prompts", str(tmp_path / "prompts.txt"), *args)
    assert run.returncode == 0, run.stderr
    piped = bloomtui(
        "generate", str(tiny_model.path), "--prompts", "-", *args, stdin=(tmp_path / "prompts.txt").read_text()
    )
    assert piped.stdout == run.stdout
    for i, prompt in enumerate(prompts):
        single = json.loads(bloomtui("generate", str(tiny_model.path), prompt, *args, "--json").stdout.splitlines()[-1])
        label = f"── prompt {i + 1}/3: {prompt[:39]}"
        assert label in run.stdout
        after = run.stdout.split(label, 1)[1].split("\n", 1)[1]
        assert after.startswith(single["text"])
        assert f"prompt {i + 1}/3" in run.stderr
    assert "3 sequences, 15 tokens" in run.stderr and "tokens/s aggregate" in run.stderr


def test_greedy_sequences_with_a_draft_model_keep_greedy_ids(tiny_model: Written) -> None:
    args = ("generate", str(tiny_model.path), "--max-new-tokens", "8", "--ignore-eos", "--json")
    plain = _json_events(bloomtui(*args, "ab ab ab ab ab"))[-1]
    two = "ab ab ab ab ab\nab ab ab ab ab\n"  # two greedy sequences (greedy --samples is refused)
    events = _json_events(bloomtui(*args, "--prompts", "-", "--draft", str(tiny_model.path), stdin=two))
    done = [e for e in events if e["event"] == "done"]
    assert sorted(d["sequence"] for d in done) == [0, 1]
    assert all(d["token_ids"] == plain["token_ids"] and d["draft_proposed"] > 0 for d in done)


def test_perplexity_batch_gives_the_same_result(tiny_model: Written, tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("Python is an easy to learn, powerful programming language. " * 12)
    base = ("perplexity", str(tiny_model.path), str(text), "--context", "32", "--json", "--ram-budget", "1.2MB")
    one = json.loads(bloomtui(*base, "--batch", "1").stdout)
    three = json.loads(bloomtui(*base, "--batch", "3").stdout)
    assert one["batch"] == 1 and three["batch"] == 3 and one["windows"] >= 4
    assert math.isclose(one["nll"], three["nll"], rel_tol=1e-6) and one["tokens"] == three["tokens"]
