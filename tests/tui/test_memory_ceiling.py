"""The panel's RSS ceiling counts what a run holds: every sample's KV caches, the draft model's beside them, a
pass's logits row by row, and the prompt's prefill."""

from __future__ import annotations

from dataclasses import replace

from bloomtui.engine import events
from bloomtui.tui import memory_ceiling
from bloomtui.tui.run_state import RUN_ALLOWANCE, MemoryCeiling, ModelInfo, RunTracker
from bloomtui.tui.run_state import memory_ceiling as ceiling_of
from tests.tui.fakes import fake_info

VOCAB = 250_880
"""Every released BLOOM's."""


def _ceiling(info: ModelInfo, samples: int, prompt: int = 0, max_tokens: int = 300, draft: str = "") -> MemoryCeiling:
    tracker = RunTracker()
    tracker.opened(info, rss=info.total_budget + 250_000_000, baseline_rss=250_000_000)
    tracker.start(1, max_tokens, draft_name=draft, sequences=samples)
    if prompt:  # a long prompt's prefill reports its length
        tracker.feed(1, events.PrefillProgress(1, prompt, 1, 4 * prompt, 0, 4, 0.1, 1.0))
    ceiling = ceiling_of(tracker.snapshot())
    assert ceiling is not None
    return ceiling


def test_each_sample_adds_its_caches_and_its_row_of_logits() -> None:
    info = replace(fake_info(4), vocab_size=VOCAB)
    kv = info.kv_bytes_per_token
    one, four = _ceiling(info, 1), _ceiling(info, 4)
    assert four.run - one.run == 3 * (2 * kv * 300 + 4 * VOCAB)  # caches up to twice 300 positions; fp32 logits
    assert one.run >= RUN_ALLOWANCE + 2 * kv * 300 + 4 * VOCAB * (1 + memory_ceiling.SAMPLER_ROWS)


def test_a_draft_model_adds_its_caches_and_its_logits_per_sample() -> None:
    plain = replace(fake_info(4), vocab_size=VOCAB)
    drafted = replace(plain, draft="bloom-560m", draft_bytes=1_000_000_000, draft_kv_bytes_per_token=20_000)
    without, withal = _ceiling(plain, 4), _ceiling(drafted, 4, draft="bloom-560m")
    assert withal.budget == without.budget + 1_000_000_000
    rows = 4 * (1 + memory_ceiling.MAX_DRAFT_TOKENS)  # each sample's token and what it drafted
    assert withal.run - without.run == 4 * 2 * 20_000 * 300 + 4 * VOCAB * (2 * rows - 4)
    unknown = replace(drafted, draft_kv_bytes_per_token=0)  # taken as large as the model's own
    assert _ceiling(unknown, 4, draft="x").run - withal.run == 4 * 2 * (plain.kv_bytes_per_token - 20_000) * 300


def test_a_long_prompt_counts_its_positions_and_its_prefill_work() -> None:
    info = replace(fake_info(4), vocab_size=VOCAB, dtype="bfloat16")
    short, long = _ceiling(info, 2), _ceiling(info, 2, prompt=2000)
    kv = 2 * info.kv_bytes_per_token * 2000 * 2
    work = memory_ceiling.prefill_bytes(info, 2000)
    assert long.run - short.run == kv + work
    # A 1024-row chunk's activations, scores and mask at their bound, an upcast tile: over 200 MB at hidden 1024.
    assert work > 4 * 1024 * 20 * 1024 + 2 * memory_ceiling.SCORE_BYTES + 16 * 1024**2


def test_the_engine_sizes_copied_for_the_estimate_match_the_engine() -> None:
    from bloomtui.engine.compute import matmul, model
    from bloomtui.engine.stream import passes

    assert memory_ceiling.PREFILL_ROWS == passes.PREFILL_ROWS
    assert memory_ceiling.SCORE_BYTES == model.SCORE_BYTES
    assert memory_ceiling.TILE_BYTES == matmul.TILE_BYTES
