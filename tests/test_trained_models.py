"""The shipped trained demo models: their held-out quality, what they write, and what they cost to ship."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bloomtui import demo_models
from bloomtui.engine import Engine, EngineOptions, SamplingParams
from bloomtui.engine.weights.checkpoint import Checkpoint

SAMPLE = Path(__file__).resolve().parent.parent / "training" / "heldout-sample.txt"
# Held-out perplexity bounds, about 10% above what the shipped models score on the sample (context 1024, fp32
# as the demo runs: trained 51.5, trained-draft 80.6 since it was distilled from trained, 150.7 before): a
# retrained or damaged model that writes worse fails.
BOUNDS = {"trained": 57.0, "trained-draft": 89.0}


@pytest.mark.parametrize("name", demo_models.NAMES)
def test_heldout_perplexity_is_below_its_bound(name: str) -> None:
    engine = Engine.open(demo_models.path(name), EngineOptions(dtype="float32"))
    try:
        result = engine.perplexity(SAMPLE.read_text(encoding="utf-8"), context=1024)
    finally:
        engine.close()
    assert result.tokens > 15_000  # the whole sample was scored
    assert result.perplexity < BOUNDS[name]


def test_the_demo_writes_english() -> None:
    engine = Engine.open(demo_models.path("trained"), EngineOptions(dtype="float32"))
    try:
        prompt = "The most important thing to remember about lists is that"
        params = SamplingParams(max_new_tokens=60, repetition_penalty=1.2, ignore_eos=True)
        text = engine.generate(prompt, params).text
    finally:
        engine.close()
    assert "\ufffd" not in text
    words = text.split()
    wordlike = [w for w in words if re.fullmatch(r"[\"'(]*[A-Za-z][A-Za-z'-]*[.,:;!?\")]*", w)]
    assert len(words) >= 25 and len(wordlike) >= 0.8 * len(words), text


def test_shipping_sizes_and_shared_tokenizer() -> None:
    trained, draft = (demo_models.path(name) for name in demo_models.NAMES)
    sizes = {p: sum(f.stat().st_size for f in p.iterdir()) for p in (trained, draft)}
    assert sum(sizes.values()) <= 30 * 1024**2
    weights = {p: Checkpoint.open(p).total_file_bytes for p in (trained, draft)}
    assert weights[draft] <= weights[trained] / 4
    assert Checkpoint.open(trained).n_blocks >= 8
    assert (trained / "tokenizer.json").read_bytes() == (draft / "tokenizer.json").read_bytes()
    for folder in (trained, draft):
        card = (folder / "README.md").read_text()
        assert "Held-out perplexity" in card and "nan" not in card
