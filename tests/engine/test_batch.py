"""Several sequences per pass: each gets what it gets alone, and transformers' greedy ids."""

from __future__ import annotations

import threading

import pytest
import torch

from bloomtui.engine import Engine, EngineOptions, SamplingParams
from bloomtui.engine import events as ev
from bloomtui.engine.decode.draft_spec import DraftSpec
from bloomtui.engine.plan.residency import minimum_budget
from bloomtui.engine.sampling_params import sample_params
from bloomtui.engine.weights.checkpoint import Checkpoint
from tests.checkpoints import Written, oracle, reference_greedy, write_checkpoint

SHORT = "Hi"
MIDDLE = "The SQL command to extract all the users whose name starts with A is: "
# Past PREFILL_ROWS (1024): the long prompt's rows span two chunks of the batch's rows.
LONG = " ".join(f"word{i % 97} and {i % 13}" for i in range(420))
PROMPTS = [MIDDLE, SHORT, LONG]
N = 12


def greedy(n: int = N, **kw: object) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, ignore_eos=True, **kw)  # type: ignore[arg-type]


def tokens_of(events: list[ev.Event], sequence: int) -> list[ev.TokenGenerated]:
    return [e for e in events if isinstance(e, ev.TokenGenerated) and e.sequence == sequence]


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory: pytest.TempPathFactory) -> Written:
    return write_checkpoint(tmp_path_factory.mktemp("batch") / "m", preset="small", dtype="float32")


@pytest.mark.parametrize("layout", ["safetensors-sharded", "bin", "bigscience"])
@pytest.mark.parametrize("streamed", [False, True])
def test_batched_greedy_equals_alone_and_transformers(tmp_path, layout: str, streamed: bool) -> None:  # noqa: ANN001
    untied = layout != "bigscience"
    written = write_checkpoint(tmp_path / layout, preset="small", layout=layout, dtype="float16", untied=untied)
    budget = minimum_budget(Checkpoint.open(written.path), 4) if streamed else None
    engine = Engine.open(written.path, EngineOptions(ram_budget=budget))
    try:
        assert bool(engine.model_plan.plan.streamed_blocks) == streamed
        seen: list[ev.Event] = []
        results = engine.generate_many(PROMPTS, [greedy()] * 3, on_event=seen.append)
        alone = [engine.generate(p, greedy()) for p in PROMPTS]
        ids = [engine.encode(p) for p in PROMPTS]
    finally:
        engine.close()
    assert len(ids[2]) > 1024 and len(ids[1]) < 4
    model = oracle(written)
    for i, (got, one) in enumerate(zip(results, alone, strict=True)):
        assert isinstance(got, ev.Done) and got.sequence == i
        want_ids, want_lp = reference_greedy(model, ids[i], N)
        assert list(got.token_ids) == list(one.token_ids) == want_ids
        got_lp = [t.logprob for t in tokens_of(seen, i)]
        assert max(abs(a - b) for a, b in zip(got_lp, want_lp, strict=True)) < 1e-3
        assert got.passes == N and got.text == "".join(t.text for t in tokens_of(seen, i))
    # One prefill pass for all three prompts, then one decode pass per further token.
    blocks = [e for e in seen if isinstance(e, ev.BlockDone) and e.index == 0]
    assert len(blocks) == N and blocks[0].kind == "prefill" and blocks[0].rows == sum(map(len, ids))
    assert {b.rows for b in blocks[1:]} == {3}


def test_logprobs_of_a_batch_within_1e4_of_alone(fp32_model: Written) -> None:
    engine = Engine.open(fp32_model.path)
    try:
        seen: list[ev.Event] = []
        engine.generate_many(PROMPTS, [greedy()] * 3, on_event=seen.append)
        for i, prompt in enumerate(PROMPTS):
            one: list[ev.Event] = []
            engine.generate(prompt, greedy(), on_event=one.append)
            a, b = tokens_of(seen, i), tokens_of(one, 0)
            assert [t.id for t in a] == [t.id for t in b]
            assert max(abs(x.logprob - y.logprob) for x, y in zip(a, b, strict=True)) < 1e-4
    finally:
        engine.close()


def test_sequences_end_independently_by_eos_stop_and_length(fp32_model: Written) -> None:
    engine = Engine.open(fp32_model.path)
    try:
        plain = [engine.generate(MIDDLE, greedy(16)), engine.generate(SHORT, greedy(16))]
        eos = plain[0].token_ids[3]
        stop = plain[1].text[len(plain[1].text) // 3 :][:3]
        object.__setattr__(engine.config, "eos_token_id", eos)
        try:
            params = [
                SamplingParams(max_new_tokens=16),  # ends by EOS at step 3 (or earlier if eos came before)
                greedy(16, stop=(stop,)),  # ends at the stop string
                greedy(16),  # runs to its length while the others have left
            ]
            seen: list[ev.Event] = []
            done = engine.generate_many([MIDDLE, SHORT, LONG], params, on_event=seen.append)
            alone = [engine.generate(p, q) for p, q in zip([MIDDLE, SHORT, LONG], params, strict=True)]
        finally:
            object.__setattr__(engine.config, "eos_token_id", 2)
    finally:
        engine.close()
    assert [d.stop_reason for d in done] == ["eos", "stop", "length"]
    for got, one in zip(done, alone, strict=True):
        assert got.token_ids == one.token_ids and got.text == one.text and got.passes == one.passes
    assert max(done[0].passes, done[1].passes) < done[2].passes == 16
    # Each sequence's Done comes right after its last token, while the third one goes on.
    last_of_third = max(k for k, e in enumerate(seen) if isinstance(e, ev.TokenGenerated) and e.sequence == 2)
    assert all(k < last_of_third for k, e in enumerate(seen) if isinstance(e, ev.Done) and e.sequence < 2)
    rows = [e.rows for e in seen if isinstance(e, ev.BlockDone) and e.index == 0]
    assert rows[1] == 3 and rows[-1] == 1, "the pass shrinks as sequences end"


def test_samples_equal_single_runs_with_seed_s_plus_i(fp32_model: Written) -> None:
    engine = Engine.open(fp32_model.path)
    base = SamplingParams(max_new_tokens=10, temperature=1.2, top_k=40, seed=11, ignore_eos=True)
    try:
        seen: list[ev.Event] = []
        samples = engine.generate_many([MIDDLE] * 4, sample_params(base, 4), on_event=seen.append)
        singles = [engine.generate(MIDDLE, SamplingParams(**{**base.__dict__, "seed": 11 + i})) for i in range(4)]
    finally:
        engine.close()
    assert [s.token_ids for s in samples] == [s.token_ids for s in singles]
    assert len({s.token_ids for s in samples}) > 1, "the samples must differ, or equality proves little"
    # The shared prompt was prefilled once: the first pass carried its rows once, not four times.
    first = next(e for e in seen if isinstance(e, ev.BlockDone))
    assert first.kind == "prefill" and first.rows == len(engine.encode(MIDDLE))


def test_cancel_mid_pass_ends_every_sequence_then_reuse(fp32_model: Written) -> None:
    engine = Engine.open(fp32_model.path, EngineOptions(ram_budget=minimum_budget(Checkpoint.open(fp32_model.path), 4)))
    cancel = threading.Event()

    def on_event(e: ev.Event) -> None:
        if isinstance(e, ev.BlockDone) and e.token_index == 2 and e.index == 1:
            cancel.set()

    try:
        results = engine.generate_many(PROMPTS, [greedy(50)] * 3, on_event=on_event, cancel=cancel)
        assert [type(r) for r in results] == [ev.Cancelled] * 3
        assert [r.sequence for r in results] == [0, 1, 2] and all(r.new_tokens == 2 for r in results)
        again = engine.generate_many(PROMPTS[:2], [greedy(4)] * 2)
        assert [a.token_ids for a in again] == [engine.generate(p, greedy(4)).token_ids for p in PROMPTS[:2]]
    finally:
        engine.close()


def test_one_sequence_cancelled_mid_pass_leaves_the_others_alone(fp32_model: Written) -> None:
    engine = Engine.open(fp32_model.path, EngineOptions(ram_budget=minimum_budget(Checkpoint.open(fp32_model.path), 4)))
    own = [threading.Event() for _ in PROMPTS]
    rows_after: list[int] = []

    def on_event(e: ev.Event) -> None:
        if isinstance(e, ev.BlockDone):
            if own[1].is_set():
                rows_after.append(e.rows)
            if e.token_index == 3 and e.index == 0:
                own[1].set()

    try:
        results = engine.generate_many(PROMPTS, [greedy()] * 3, on_event=on_event, sequence_cancels=own)
        alone = [engine.generate(p, greedy()) for p in (PROMPTS[0], PROMPTS[2])]
    finally:
        engine.close()
    assert isinstance(results[1], ev.Cancelled) and results[1].new_tokens == 3
    assert [r.token_ids for r in (results[0], results[2])] == [a.token_ids for a in alone]
    assert rows_after[0] == 2, "its rows left the pass after the block it was cancelled in"


def test_prompt_lookup_drafts_per_sequence_with_the_same_greedy_ids(fp32_model: Written) -> None:
    engine = Engine.open(fp32_model.path)
    repeating = "one two three four five six one two three four five six one two three"
    try:
        drafted = engine.generate_many([repeating, MIDDLE], [greedy(16)] * 2, draft=DraftSpec())
        plain = [engine.generate(p, greedy(16)) for p in (repeating, MIDDLE)]
    finally:
        engine.close()
    assert [d.token_ids for d in drafted] == [p.token_ids for p in plain]
    assert sum(d.draft_proposed for d in drafted) > 0


def test_an_empty_prompt_in_a_batch_is_named(fp32_model: Written) -> None:
    from bloomtui.errors import UsageError

    engine = Engine.open(fp32_model.path)
    try:
        with pytest.raises(UsageError, match="prompt 2 is empty"):
            engine.generate_many([MIDDLE, ""], [greedy()] * 2)
        assert engine.generate(SHORT, greedy(2)).new_tokens == 2
    finally:
        engine.close()


def test_bfloat16_batch_close_to_alone(tmp_path) -> None:  # noqa: ANN001
    """bf16 rows multiplied together round differently from one at a time; how far is measured here."""
    written = write_checkpoint(tmp_path / "m", preset="small", dtype="bfloat16")
    engine = Engine.open(written.path)
    try:
        seen: list[ev.Event] = []
        engine.generate_many(PROMPTS[:2], [greedy(6)] * 2, on_event=seen.append)
        for i, prompt in enumerate(PROMPTS[:2]):
            one: list[ev.Event] = []
            engine.generate(prompt, greedy(6), on_event=one.append)
            a, b = tokens_of(seen, i), tokens_of(one, 0)
            # The first token comes from the same prefill rows; later ones from a 2-row decode pass.
            assert a[0].id == b[0].id and abs(a[0].logprob - b[0].logprob) < 0.05
    finally:
        engine.close()
    assert torch.bfloat16 == engine.dtype


def test_samples_cancelled_during_their_shared_prefill_all_end(fp32_model: Written) -> None:
    engine = Engine.open(fp32_model.path, EngineOptions(ram_budget=minimum_budget(Checkpoint.open(fp32_model.path), 4)))
    cancel = threading.Event()

    def on_event(e: ev.Event) -> None:
        if isinstance(e, ev.BlockDone) and e.kind == "prefill" and e.index == 1:
            cancel.set()

    base = SamplingParams(max_new_tokens=8, temperature=1.0, seed=1, ignore_eos=True)
    try:
        results = engine.generate_many([MIDDLE] * 3, sample_params(base, 3), on_event=on_event, cancel=cancel)
    finally:
        engine.close()
    assert [(type(r), r.sequence) for r in results] == [(ev.Cancelled, i) for i in range(3)]


def test_a_cancelled_leader_leaves_its_samples_to_go_on(fp32_model: Written) -> None:
    """The first sample prefills the shared prompt; cancelled mid-prefill, the others prefill it again."""
    engine = Engine.open(fp32_model.path, EngineOptions(ram_budget=minimum_budget(Checkpoint.open(fp32_model.path), 4)))
    own = [threading.Event() for _ in range(3)]

    def on_event(e: ev.Event) -> None:
        if isinstance(e, ev.BlockDone) and e.kind == "prefill" and e.index == 1:
            own[0].set()

    base = SamplingParams(max_new_tokens=6, temperature=1.0, seed=1, ignore_eos=True)
    per = sample_params(base, 3)
    try:
        seen: list[ev.Event] = []
        results = engine.generate_many(
            [MIDDLE] * 3, per, on_event=lambda e: (seen.append(e), on_event(e)), sequence_cancels=own
        )
        alone = [engine.generate(MIDDLE, p) for p in per[1:]]
    finally:
        engine.close()
    assert isinstance(results[0], ev.Cancelled) and results[0].new_tokens == 0
    assert [r.token_ids for r in results[1:]] == [a.token_ids for a in alone]
    assert sum(1 for e in seen if isinstance(e, ev.BlockDone) and e.kind == "prefill" and e.index == 0) == 2


@pytest.mark.parametrize("tokens", [1, 4])
def test_a_sample_whose_leader_left_prefills_later_beside_the_others(fp32_model: Written, tokens: int) -> None:
    """Its leader cancelled mid-prefill while another prompt rides on, a sample prefills one pass later:
    the streamed blocks are read for that extra pass too (with 1 token, after the reader had finished)."""
    engine = Engine.open(fp32_model.path, EngineOptions(ram_budget=minimum_budget(Checkpoint.open(fp32_model.path), 4)))
    own = [threading.Event() for _ in range(3)]

    def on_event(e: ev.Event) -> None:
        if isinstance(e, ev.BlockDone) and e.kind == "prefill" and e.index == 1:
            own[0].set()

    per = sample_params(SamplingParams(max_new_tokens=tokens, temperature=1.0, seed=1, ignore_eos=True), 2)
    params = [*per, greedy(tokens)]
    try:
        results = engine.generate_many([MIDDLE, MIDDLE, SHORT], params, on_event=on_event, sequence_cancels=own)
        alone = [engine.generate(p, q) for p, q in ((MIDDLE, params[1]), (SHORT, params[2]))]
    finally:
        engine.close()
    assert isinstance(results[0], ev.Cancelled)
    assert [r.token_ids for r in results[1:]] == [a.token_ids for a in alone]
    assert results[1].passes == tokens and results[2].passes == tokens
