"""Speculative decoding: a draft model or prompt lookup proposes, the target verifies; ids equal plain greedy."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bloomtui import demo
from bloomtui.engine import Engine, EngineOptions, SamplingParams
from bloomtui.engine import events as ev
from bloomtui.engine.decode.draft_spec import DraftSpec
from bloomtui.engine.decode.drafting import PromptLookup, open_draft
from bloomtui.engine.decode.speculative import Proposal
from bloomtui.engine.plan.residency import minimum_budget
from bloomtui.engine.weights.checkpoint import Checkpoint
from bloomtui.errors import UsageError
from tests.checkpoints import Written, oracle, reference_greedy, write_checkpoint

PROMPT = "The Spanish translation of thank you for your help is: "
REPEAT = "one two three four five six seven. one two three four five six seven. one two three"
GREEDY = SamplingParams(max_new_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Written:
    return write_checkpoint(tmp_path_factory.mktemp("target") / "m", preset="small", dtype="float32")


@pytest.fixture(scope="module")
def noisy_draft(target: Written, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The target's weights plus noise: it agrees often but not always, so rejections and rollbacks happen."""
    gen = torch.Generator().manual_seed(7)
    state = {k: v + 0.02 * torch.randn(v.shape, generator=gen) for k, v in target.state_dict.items()}
    path = tmp_path_factory.mktemp("noisy") / "m"
    demo.save_checkpoint(state, target.config, path, layout="safetensors")
    demo.save_tokenizer(demo.PRESETS["small"].vocab_size, path)
    return path


@pytest.fixture(scope="module")
def random_draft(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smaller random model with the same tokenizer (same preset vocabulary): it is rarely right."""
    return write_checkpoint(tmp_path_factory.mktemp("rand") / "m", preset="tiny", dtype="float32", seed=3).path


@pytest.fixture(scope="module", params=["resident", "streamed-read", "streamed-mapped"])
def engine(
    request: pytest.FixtureRequest, target: Written, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """The target resident, or every block streamed: fp16 .bin shards read and converted, or mapped in place."""
    path = target.path
    if request.param == "streamed-read":
        path = tmp_path_factory.mktemp("fp16") / "m"
        half = {k: v.half() for k, v in target.state_dict.items()}
        demo.save_checkpoint(half, {**target.config, "torch_dtype": "float16"}, path, layout="bin-sharded")
        demo.save_tokenizer(demo.PRESETS["small"].vocab_size, path)
        eng = Engine.open(path, EngineOptions(ram_budget=minimum_budget(Checkpoint.open(path), 4)))
        assert not eng.store.zero_copy
    elif request.param == "streamed-mapped":
        eng = Engine.open(path, EngineOptions(ram_budget=minimum_budget(Checkpoint.open(path), 4)))
    else:
        eng = Engine.open(path)
    assert eng.model_plan.plan.streams == (request.param != "resident")
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def drafts(engine: Engine, noisy_draft: Path, random_draft: Path) -> Iterator[dict[str, Engine]]:
    """The target as its own draft (same folder, so same weights), a noisy copy, and a random small model."""
    engines = {"self": open_draft(engine.model_plan.path, EngineOptions())}
    engines["noisy"] = open_draft(noisy_draft, EngineOptions())
    engines["random"] = open_draft(random_draft, EngineOptions())
    yield engines
    for eng in engines.values():
        eng.close()


_PLAIN: dict[tuple[int, str, SamplingParams], tuple[ev.Done, list]] = {}


def run(engine: Engine, prompt: str, params: SamplingParams, draft: DraftSpec | None = None) -> tuple[ev.Done, list]:
    """A run's result and events; plain runs are remembered (they are the reference of many tests)."""
    key = (id(engine), prompt, params)
    if draft is None and key in _PLAIN:
        return _PLAIN[key]
    seen: list[ev.Event] = []
    result = engine.generate(prompt, params, on_event=seen.append, draft=draft)
    assert isinstance(result, ev.Done)
    if draft is None:
        _PLAIN[key] = result, seen
    return result, seen


@pytest.mark.parametrize("which", ["self", "noisy", "random", "lookup"])
@pytest.mark.parametrize(("tree", "tokens"), [("auto", None), (16, None), (None, None), ("off", 3)])
def test_greedy_ids_equal_without_draft(
    engine: Engine, drafts: dict[str, Engine], which: str, tree: int | str | None, tokens: int | None
) -> None:
    """Chains (adaptive or fixed K) and token trees (auto or a fixed budget) give plain greedy's ids."""
    spec = DraftSpec(None if which == "lookup" else drafts[which], tokens=tokens, tree=tree)
    for prompt in (PROMPT, REPEAT):
        plain, plain_seen = run(engine, prompt, GREEDY)
        drafted, seen = run(engine, prompt, GREEDY, spec)
        assert drafted.token_ids == plain.token_ids and drafted.text == plain.text
        toks = [e for e in seen if isinstance(e, ev.TokenGenerated)]
        assert [t.index for t in toks] == list(range(len(plain.token_ids)))
        plain_logprobs = [e.logprob for e in plain_seen if isinstance(e, ev.TokenGenerated)]
        assert [t.logprob for t in toks] == pytest.approx(plain_logprobs, abs=1e-4)
        blocks = [e for e in seen if isinstance(e, ev.BlockDone)]
        assert len(blocks) == drafted.passes * engine.config.n_layer  # the draft's own passes are not reported
        # The prefill yields one token, every later pass one plus the drafts it kept.
        assert drafted.passes == drafted.new_tokens - drafted.draft_accepted
        verify = [b for b in blocks if b.kind == "verify" and b.index == 0]
        assert sum(b.rows - 1 for b in verify) == drafted.draft_proposed
        # The events alone add up to the engine's counts (the app's panel counts them as they come).
        assert sum(t.drafted for t in toks) == drafted.draft_accepted
        guesses = [e for e in seen if isinstance(e, ev.Drafted)]
        assert sum(g.nodes or len(g.ids) for g in guesses) == drafted.draft_proposed
        if tree in (None, "off"):
            assert not any(g.nodes for g in guesses)
        elif tree != "auto":  # auto drafts chains and trees by turns
            assert all(g.nodes for g in guesses)
    if which == "self":
        assert drafted.draft_accepted == drafted.draft_proposed > 0
    if which == "noisy":
        assert 0 < drafted.draft_accepted < drafted.draft_proposed


def test_auto_switching_between_chains_and_trees_keeps_greedy_ids(
    engine: Engine, drafts: dict[str, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """auto's turns between chains and trees (draft_mode.py) every pass or two: the draft's caches follow both
    (rollback after a chain, compaction after a tree), and the ids stay plain greedy's."""
    from bloomtui.engine.decode import draft_mode
    from bloomtui.engine.decode.tree_budget import TreeBudget

    for name, value in (("EXPLORE", 1), ("REVISIT", 2), ("PROBE", 1)):
        monkeypatch.setattr(draft_mode, name, value)
    monkeypatch.setattr(TreeBudget, "_choose", lambda self, other, room: self.best_tree(min(8, room)))
    params = SamplingParams(max_new_tokens=40, ignore_eos=True)
    plain, _ = run(engine, PROMPT, params)
    drafted, seen = run(engine, PROMPT, params, DraftSpec(drafts["noisy"], tree="auto"))
    assert drafted.token_ids == plain.token_ids
    guesses = [e for e in seen if isinstance(e, ev.Drafted)]
    assert any(g.nodes for g in guesses) and any(not g.nodes for g in guesses)  # trees and chains both ran
    assert "chains" in drafted.draft_tree


def test_own_draft_fixed_k_takes_k_plus_one_tokens_a_pass(engine: Engine, drafts: dict[str, Engine]) -> None:
    result, seen = run(engine, PROMPT, GREEDY, DraftSpec(drafts["self"], tokens=3))
    # Prefill gives token 0; then 23 tokens at 4 a pass: 4+4+4+4+4+3 (the last pass drafts only what is left).
    assert result.passes == 7 and result.draft_accepted == result.draft_proposed == 23 - 6
    rows = [b.rows for b in seen if isinstance(b, ev.BlockDone) and b.index == 0]
    assert rows[1:] == [4, 4, 4, 4, 4, 3]


def test_prompt_lookup_on_repeating_text_saves_passes(engine: Engine) -> None:
    params = SamplingParams(max_new_tokens=48, ignore_eos=True)
    plain, _ = run(engine, REPEAT, params)
    looked, _ = run(engine, REPEAT, params, DraftSpec())
    assert looked.token_ids == plain.token_ids
    assert looked.draft_accepted > 0 and looked.passes < looked.new_tokens


def test_prompt_lookup_proposals() -> None:
    lookup = PromptLookup()
    assert lookup.propose([1, 2, 3, 9, 1, 2, 3, 7, 5, 1, 2, 3], 2).tokens == [7, 5]  # latest 1 2 3
    assert lookup.propose([4, 5, 6], 3).tokens == []
    assert lookup.propose([4, 5, 4], 3) == Proposal([5, 4], None)  # deterministic: no distribution


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13])
def test_max_new_tokens_exact(engine: Engine, drafts: dict[str, Engine], n: int) -> None:
    params = SamplingParams(max_new_tokens=n, ignore_eos=True)
    plain, _ = run(engine, PROMPT, params)
    for spec in (DraftSpec(drafts["self"]), DraftSpec(drafts["noisy"], tokens=8), DraftSpec()):
        drafted, seen = run(engine, PROMPT, params, spec)
        assert drafted.token_ids == plain.token_ids and len(drafted.token_ids) == n
        assert drafted.text == plain.text and drafted.stop_reason == "length"
        assert sum(isinstance(e, ev.TokenGenerated) for e in seen) == n


def test_stop_string_exact(engine: Engine, drafts: dict[str, Engine]) -> None:
    full, _ = run(engine, PROMPT, GREEDY)
    stop = full.text[7:10]
    params = SamplingParams(max_new_tokens=24, ignore_eos=True, stop=(stop,))
    plain, plain_seen = run(engine, PROMPT, params)
    assert plain.stop_reason == "stop"
    for spec in (DraftSpec(drafts["self"], tokens=8), DraftSpec(drafts["noisy"])):
        drafted, seen = run(engine, PROMPT, params, spec)
        assert drafted.token_ids == plain.token_ids and drafted.text == plain.text
        pieces = [(e.id, e.text) for e in seen if isinstance(e, ev.TokenGenerated)]
        assert pieces == [(e.id, e.text) for e in plain_seen if isinstance(e, ev.TokenGenerated)]


def test_eos_exact(target: Written, drafts: dict[str, Engine], tmp_path: Path) -> None:
    free = Engine.open(target.path)
    try:
        ids = run(free, PROMPT, GREEDY)[0].token_ids
    finally:
        free.close()
    # The same model with its 7th greedy token declared end-of-text: plain decoding stops there.
    path = tmp_path / "eos"
    shutil.copytree(target.path, path)
    config = json.loads((path / "config.json").read_text())
    config["eos_token_id"] = ids[6]
    (path / "config.json").write_text(json.dumps(config))
    eng = Engine.open(path)
    try:
        params = SamplingParams(max_new_tokens=24)
        plain, _ = run(eng, PROMPT, params)
        assert plain.stop_reason == "eos" and plain.token_ids[-1] == ids[6] and len(plain.token_ids) <= 7
        for spec in (DraftSpec(drafts["self"], tokens=8), DraftSpec(drafts["noisy"]), DraftSpec()):
            drafted, _ = run(eng, PROMPT, params, spec)
            assert (drafted.token_ids, drafted.text, drafted.stop_reason) == (plain.token_ids, plain.text, "eos")
    finally:
        eng.close()


def test_matches_transformers_greedy(target: Written, drafts: dict[str, Engine]) -> None:
    eng = Engine.open(target.path)
    try:
        prompt_ids = eng.encode(PROMPT)
        expected, _ = reference_greedy(oracle(target), prompt_ids, 20)
        params = SamplingParams(max_new_tokens=20, ignore_eos=True)
        for spec in (DraftSpec(drafts["self"]), DraftSpec(drafts["noisy"], tokens=4), DraftSpec()):
            assert list(run(eng, PROMPT, params, spec)[0].token_ids) == expected
    finally:
        eng.close()


def test_tokenizer_mismatch_refused(engine: Engine, target: Written, tmp_path: Path) -> None:
    path = tmp_path / "other"
    shutil.copytree(target.path, path)
    demo.save_tokenizer(512, path)  # a smaller vocabulary: other ids, other merges
    other = open_draft(path, EngineOptions())
    try:
        errors: list[ev.Event] = []
        with pytest.raises(UsageError, match="tokenizer differs.*vocabulary"):
            engine.generate(PROMPT, GREEDY, on_event=errors.append, draft=DraftSpec(other))
        assert isinstance(errors[-1], ev.Error)
    finally:
        other.close()
    assert run(engine, PROMPT, GREEDY)[0].new_tokens == 24  # still usable


def test_bad_draft_tokens() -> None:
    with pytest.raises(UsageError, match="--draft-tokens"):
        DraftSpec(tokens=0)


def test_cancel_mid_verification_then_reuse(engine: Engine, drafts: dict[str, Engine]) -> None:
    cancel = threading.Event()
    blocks: list[ev.BlockDone] = []

    def on_event(event: ev.Event) -> None:
        if isinstance(event, ev.BlockDone):
            blocks.append(event)
            if event.kind == "verify" and event.index == 1:
                cancel.set()

    spec = DraftSpec(drafts["self"], tokens=3)
    result = engine.generate(PROMPT, GREEDY, on_event=on_event, cancel=cancel, draft=spec)
    assert isinstance(result, ev.Cancelled)
    assert result.new_tokens == 1  # only the prefill's token: the verify pass never finished
    assert (blocks[-1].kind, blocks[-1].index) == ("verify", 1), "cancel must land within one block"
    plain, _ = run(engine, PROMPT, GREEDY)
    again, _ = run(engine, PROMPT, GREEDY, spec)
    assert again.token_ids == plain.token_ids and plain.token_ids[:1] == result.token_ids


def test_cancel_while_the_draft_proposes(engine: Engine, drafts: dict[str, Engine]) -> None:
    cancel = threading.Event()

    def on_event(event: ev.Event) -> None:
        if isinstance(event, ev.TokenGenerated):
            cancel.set()  # the next thing to run is the draft's proposal

    spec = DraftSpec(drafts["noisy"])
    result = engine.generate(PROMPT, GREEDY, on_event=on_event, cancel=cancel, draft=spec)
    assert isinstance(result, ev.Cancelled) and result.new_tokens == 1
    assert run(engine, PROMPT, GREEDY, spec)[0].token_ids == run(engine, PROMPT, GREEDY)[0].token_ids


@pytest.mark.parametrize("upcast", [False, True])
def test_bfloat16_verification_multiplies_like_decoding(
    upcast: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bf16 many-row passes may upcast to fp32 tiles (CPUs with slow bf16 GEMM); verify rows must not, or a
    near-tie could pick another token than one-row decoding."""
    monkeypatch.setattr(Engine, "upcast", property(lambda _self: upcast))
    path = write_checkpoint(tmp_path / "bf16", preset="small", dtype="bfloat16").path
    eng = Engine.open(path)
    own = open_draft(path, EngineOptions())
    try:
        params = SamplingParams(max_new_tokens=40, ignore_eos=True)
        plain, plain_seen = run(eng, REPEAT, params)
        expected = [e.logprob for e in plain_seen if isinstance(e, ev.TokenGenerated)]
        for spec in (DraftSpec(own), DraftSpec(own, tokens=6), DraftSpec()):
            drafted, seen = run(eng, REPEAT, params, spec)
            assert drafted.token_ids == plain.token_ids
            # Same arithmetic as decoding: identical logprobs (an fp32-upcast verify pass is ~1e-2 off here).
            assert [e.logprob for e in seen if isinstance(e, ev.TokenGenerated)] == expected
            assert drafted.draft_accepted > 0 or spec.model is None
    finally:
        own.close()
        eng.close()
