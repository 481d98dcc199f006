"""What a new user meets first: quick help, one demo wherever it is opened, samples that sample, long prompts
that warn. In a subprocess, as a user runs the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bloomtui import demo_models
from bloomtui.engine.weights.config import TRAINING_CONTEXT, BloomConfig
from bloomtui.errors import ConfigError
from tests.checkpoints import Written
from tests.test_cli import _json_events, bloomtui

README = Path(__file__).resolve().parents[1] / "README.md"
LISTS = "The most important thing to remember about lists is that"
HEAVY = ("torch", "transformers", "textual", "numpy")


def test_help_and_version_import_nothing_heavy() -> None:
    """--version and every --help answer before torch, transformers or textual would load (seconds)."""
    script = """
import sys
from bloomtui.cli import COMMANDS, main
for argv in (["--version"], ["--help"], *[[c, "--help"] for c in COMMANDS]):
    try:
        main(argv)
    except SystemExit:
        pass
print("imported:", ",".join(m for m in HEAVY if m in sys.modules))
""".replace("HEAVY", repr(HEAVY))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "imported: "


def test_generate_demo_is_the_demo_in_its_own_dtype_and_what_the_readme_quotes() -> None:
    args = (LISTS, "--max-new-tokens", "12", "--json")
    demo = _json_events(bloomtui("generate", "--demo", *args))[-1]
    by_name = _json_events(bloomtui("generate", "trained", *args))[-1]
    fp32 = _json_events(bloomtui("generate", str(demo_models.path("trained")), *args, "--dtype", "float32"))[-1]
    assert demo["token_ids"] == by_name["token_ids"] == fp32["token_ids"]
    for extra, dtype in (((), "float32"), (("--dtype", "bfloat16"), "bfloat16")):  # --dtype still wins
        info = json.loads(bloomtui("info", "--demo", "--json", *extra).stdout)
        assert info["compute_dtype"] == dtype and info["recommended_dtype"] == "float32"
    first_line = demo["text"].strip().splitlines()[0]
    assert first_line[:60] in README.read_text(encoding="utf-8").replace("\n", " ")


def test_the_demo_config_asks_for_float32_and_names_its_context() -> None:
    config = BloomConfig.from_file(demo_models.path("trained") / "config.json")
    assert config.recommended_dtype == "float32" and config.training_context == 256
    base = {"model_type": "bloom", "hidden_size": 64, "n_head": 4, "n_layer": 2, "vocab_size": 100}
    assert BloomConfig.from_dict(base).training_context == TRAINING_CONTEXT
    assert BloomConfig.from_dict(base).recommended_dtype is None
    with pytest.raises(ConfigError, match="compute_dtype"):
        BloomConfig.from_dict({**base, "bloomtui": {"compute_dtype": "float16"}})


def test_samples_sample_where_the_model_is_greedy(tiny_model: Written) -> None:
    """The model (no generation_config.json) decodes greedily; --samples 2 must not write one text twice."""
    args = ("generate", str(tiny_model.path), "Hello", "--max-new-tokens", "8", "--ignore-eos", "--json")
    done = [e for e in _json_events(bloomtui(*args, "--samples", "2", "--seed", "1")) if e["event"] == "done"]
    assert len(done) == 2 and done[0]["token_ids"] != done[1]["token_ids"]


def test_a_filter_alone_samples(tiny_model: Written) -> None:
    args = ("generate", str(tiny_model.path), "Hello", "--max-new-tokens", "8", "--ignore-eos", "--json")
    greedy = _json_events(bloomtui(*args))[-1]["token_ids"]
    assert _json_events(bloomtui(*args, "--greedy"))[-1]["token_ids"] == greedy
    seeds = [_json_events(bloomtui(*args, "--top-p", "0.99", "--seed", str(s)))[-1]["token_ids"] for s in (1, 2)]
    assert seeds[0] != seeds[1]


def test_a_prompt_past_the_training_context_warns_and_runs() -> None:
    words = "the list " * 200  # ~400 tokens; the demo learned 256
    run = bloomtui("generate", "--demo", "-", "--max-new-tokens", "2", stdin=words)
    assert run.returncode == 0, run.stderr
    warning = [line for line in run.stderr.splitlines() if line.startswith("warning: the prompt is")]
    assert len(warning) == 1 and "256-token context" in warning[0]
    as_json = bloomtui("generate", "--demo", "-", "--max-new-tokens", "2", "--json", stdin=words)
    events = [json.loads(line) for line in as_json.stdout.splitlines()]
    long = [e for e in events if e["event"] == "long_prompt"]
    assert len(long) == 1 and long[0]["context"] == 256 and long[0]["tokens"] > 256
    short = bloomtui("generate", "--demo", "A list is", "--max-new-tokens", "2")
    assert "warning" not in short.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["generate", "{model}", "x", "--samples", "3", "--greedy"], "--samples 3 with --greedy"),
        (["generate", "{model}", "x", "--greedy", "--top-p", "0.9"], "--top-p applies only when sampling"),
        (["generate"], "give a MODEL"),
        (["generate", "{model}", "x", "--demo"], "give a MODEL or --demo, not both"),
        (["generate", "{model}", "--demo"], "give a MODEL or --demo, not both"),  # not a prompt "{model}"
        (["info"], "give a MODEL"),
        (["perplexity", "--demo"], "give the FILE"),
        (["demo-model", "{model}"], "--force"),
    ],
)
def test_first_hour_errors_are_one_line(tiny_model: Written, args: list[str], needle: str) -> None:
    run = bloomtui(*[a.format(model=tiny_model.path) for a in args], stdin="")
    assert run.returncode == 2 and run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], run.stderr


def test_demo_model_says_wrote_once(tmp_path: Path) -> None:
    run = bloomtui("demo-model", str(tmp_path / "m"))
    assert run.returncode == 0, run.stderr
    said = (run.stdout + run.stderr).splitlines()
    assert sum(line.startswith("wrote") for line in said) == 1, said


def test_only_a_filter_that_filters_asks_for_sampling() -> None:
    from bloomtui.cli import build_parser
    from bloomtui.commands.generate import sampling_params

    def params(*options: str):  # noqa: ANN202
        return sampling_params(build_parser().parse_args(["generate", "m", "x", *options]))

    assert params("--top-k", "0").greedy and params("--top-p", "1").greedy  # the documented "off" values
    assert params("--greedy", "--top-k", "0").greedy
    assert not params("--top-k", "5").greedy and not params("--top-p", "0.9").greedy
