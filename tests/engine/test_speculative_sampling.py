"""Speculative sampling keeps the target's distribution: the verify step exactly, whole runs statistically.

A run with a draft consumes random numbers differently from one without, so its samples differ seed by seed;
what must not differ is their distribution. The end-to-end check compares the frequencies of the first
tokens over many seeds with the exact probabilities from transformers' BloomForCausalLM, by a chi-square
test whose threshold follows from the number of samples (fixed seeds: the test is deterministic).
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

import pytest
import torch
from transformers import BloomForCausalLM

from bloomtui import demo_models
from bloomtui.engine import Engine, EngineOptions, SamplingParams
from bloomtui.engine import events as ev
from bloomtui.engine.decode import speculative
from bloomtui.engine.decode import tree as tree_module
from bloomtui.engine.decode.draft_spec import DraftSpec
from bloomtui.engine.decode.drafting import ModelDrafter, open_draft
from bloomtui.engine.decode.sampling import Sampler
from bloomtui.engine.decode.speculative import Proposal, residual, verify

PROMPT = "Repeat after me: the list is sorted in place. Repeat after me: the list is"
TOKENS = 4
SAMPLES = 1000
"""The fewest seeds that still fail a biased verifier with a margin (measured): at 1000 the classic slip
(redrawing from p, not max(0, p - q)) scores 186-194 against a threshold of 80 and the right sampler 42-67; the
slip goes unnoticed below ~600. A chance failure of a right sampler is the threshold's 5e-4."""
BATCH = 40
# Narrow enough (top-3) that the 81 possible sequences can be counted; the penalty makes each token's
# distribution depend on the tokens before it, drafted or not.
PARAMS = SamplingParams(max_new_tokens=TOKENS, temperature=1.0, top_k=3, repetition_penalty=1.1, ignore_eos=True)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    """The trained demo model (real text, so prompt lookup's guesses are sometimes right), in fp32."""
    eng = Engine.open(demo_models.path("trained"), EngineOptions(dtype="float32"))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def draft() -> Iterator[Engine]:
    """Its shipped draft: right about a third of the time, so both acceptance and rejection are exercised."""
    eng = open_draft(demo_models.path("trained-draft"), EngineOptions(dtype="float32"))
    yield eng
    eng.close()


def exact_distribution(prompt_ids: list[int], params: SamplingParams) -> dict[tuple, float]:
    """P(first len tokens) under transformers' model with the sampler's processing, by enumeration."""
    model = BloomForCausalLM.from_pretrained(demo_models.path("trained"), torch_dtype=torch.float32).eval()
    processing = Sampler(params)
    out: dict[tuple, float] = {}

    def walk(prefix: tuple[int, ...], prob: float) -> None:
        if len(prefix) == params.max_new_tokens:
            out[prefix] = prob
            return
        ids = prompt_ids + list(prefix)
        with torch.inference_mode():
            logits = model(torch.tensor([ids])).logits[0, -1].float()
        p = processing.probs(logits, torch.tensor(ids))
        for token in torch.nonzero(p).flatten().tolist():
            walk((*prefix, token), prob * float(p[token]))

    walk((), 1.0)
    return out


def chi_square(counts: Counter, probs: dict[tuple, float], n: int) -> tuple[float, float]:
    """(statistic, threshold at significance ~5e-4) over cells with expected count >= 5, the rest pooled."""
    cells = [(counts.get(k, 0), p * n) for k, p in probs.items()]
    big = [(o, e) for o, e in cells if e >= 5]
    small = [(o, e) for o, e in cells if e < 5]
    if small:
        big.append((sum(o for o, _ in small), sum(e for _, e in small)))
    stat = sum((o - e) ** 2 / e for o, e in big)
    df = len(big) - 1
    z = 3.29  # one-sided normal quantile for 5e-4; Wilson-Hilferty turns it into a chi-square quantile
    threshold = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    return stat, threshold


def sample_runs(engine: Engine, spec: DraftSpec, n: int = SAMPLES) -> tuple[Counter, int, int]:
    """N runs, seeds 0..N-1, BATCH sequences to a generate_many: each sequence samples with its own seed and
    drafter as it would alone, and the per-pass work is shared (the runs took ~4x longer one by one)."""
    counts: Counter = Counter()
    proposed = accepted = 0
    for start in range(0, n, BATCH):
        params = [replace(PARAMS, seed=seed) for seed in range(start, min(n, start + BATCH))]
        for result in engine.generate_many([PROMPT] * len(params), params, draft=spec):
            assert isinstance(result, ev.Done)
            counts[result.token_ids] += 1
            proposed += result.draft_proposed
            accepted += result.draft_accepted
    return counts, proposed, accepted


@pytest.fixture(scope="module")
def expected(engine: Engine) -> dict[tuple, float]:
    probs = exact_distribution(engine.encode(PROMPT), PARAMS)
    assert len(probs) == 3**TOKENS and sum(probs.values()) == pytest.approx(1.0)
    return probs


@pytest.mark.parametrize(("which", "tree"), [("model", "off"), ("lookup", "off"), ("model", 8), ("lookup", 8)])
def test_sampled_sequences_follow_the_target_distribution(
    engine: Engine, draft: Engine, expected: dict[tuple, float], which: str, tree: int | str
) -> None:
    """Chains (speculative sampling) and token trees (siblings tried in turn) keep the target's distribution."""
    spec = DraftSpec(draft if which == "model" else None, tree=tree)
    counts, proposed, accepted = sample_runs(engine, spec)
    # The draft must be in play, right sometimes and wrong sometimes, or the test checks nothing.
    assert 0 < accepted < proposed and proposed > SAMPLES // 2
    stat, threshold = chi_square(counts, expected, SAMPLES)
    assert stat < threshold, f"chi-square {stat:.1f} >= {threshold:.1f}"


def test_the_statistical_check_catches_a_biased_verifier(
    engine: Engine, draft: Engine, expected: dict[tuple, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A classic slip (redrawing a rejected token from p instead of max(0, p - q)) fails the same check."""
    monkeypatch.setattr(speculative, "residual", lambda p, _q, _x: p)
    counts, _, _ = sample_runs(engine, DraftSpec(draft, tree="off"))
    stat, threshold = chi_square(counts, expected, SAMPLES)
    assert stat > threshold


def test_the_statistical_check_catches_a_biased_tree_verifier(
    engine: Engine, draft: Engine, expected: dict[tuple, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tree's slip: a rejected sibling left in the distribution the next sibling and the fallback use."""
    monkeypatch.setattr(tree_module, "residual", lambda p, _x: p)
    counts, _, _ = sample_runs(engine, DraftSpec(draft, tree=8))
    stat, threshold = chi_square(counts, expected, SAMPLES)
    assert stat > threshold


def _verify_step_distribution(p: torch.Tensor, q: torch.Tensor | None, drafted: int) -> torch.Tensor:
    """P(first token verify() yields) in closed form: keep x w.p. min(1, p/q), else draw from the residual."""
    q_full = torch.zeros_like(p) if q is None else q
    if q is None:
        q_full[drafted] = 1.0
    keep = torch.minimum(q_full, p)  # q(x) * min(1, p(x)/q(x)) for x drawn from q
    rest = residual(p, q, drafted)
    return keep + (1 - keep.sum()) * rest / rest.sum()


def test_verify_step_is_exact_in_closed_form() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        p = torch.softmax(torch.randn(7, generator=gen) * 2, 0)
        q = torch.softmax(torch.randn(7, generator=gen) * 2, 0)
        for x in range(7):
            assert torch.allclose(_verify_step_distribution(p, None, x), p, atol=1e-6)
        mix = sum(q[x] * _verify_step_distribution(p, q, x) for x in range(7))
        assert torch.allclose(mix, p, atol=1e-6)


@pytest.mark.parametrize("deterministic", [True, False])
def test_verify_step_draws_match_the_target(deterministic: bool) -> None:
    """The real verify() on fixed logits, 20000 seeds: the first token's frequencies are p's."""
    gen = torch.Generator().manual_seed(1)
    target_logits = torch.randn(2, 6, generator=gen) * 1.5
    draft_logits = torch.randn(6, generator=gen) * 1.5
    p = torch.softmax(target_logits[0], 0)
    n = 20_000
    counts = torch.zeros(6)
    for seed in range(n):
        sampler = Sampler(SamplingParams(temperature=1.0, seed=seed))
        q = torch.softmax(draft_logits, 0)
        if deterministic:
            proposal = Proposal([2])
        else:
            proposal = Proposal([sampler.draw(q)], [q])
        counts[verify(sampler, target_logits, proposal, [])[0][0]] += 1
    assert Sampler(SamplingParams(temperature=1.0)).probs(target_logits[0], torch.tensor([])).allclose(p)
    sd = torch.sqrt(p * (1 - p) / n)
    assert torch.all((counts / n - p).abs() < 4.5 * sd), (counts / n, p)


def test_same_seed_same_output_with_a_draft(engine: Engine, draft: Engine) -> None:
    params = SamplingParams(max_new_tokens=24, temperature=0.9, top_p=0.9, repetition_penalty=1.05, seed=11)
    for spec in (DraftSpec(draft), DraftSpec(None), DraftSpec(draft, tokens=5)):
        first, second = (engine.generate(PROMPT, params, draft=spec) for _ in range(2))
        assert first.token_ids == second.token_ids and first.draft_proposed > 0


@pytest.mark.parametrize("n", [1, 2, 5, 9])
def test_sampled_runs_stop_at_max_new_tokens(engine: Engine, draft: Engine, n: int) -> None:
    for seed, spec in itertools.product(range(3), (DraftSpec(draft, tokens=8), DraftSpec(None))):
        params = SamplingParams(max_new_tokens=n, temperature=1.0, seed=seed, ignore_eos=True)
        result = engine.generate(PROMPT, params, draft=spec)
        assert len(result.token_ids) == n and result.stop_reason == "length"


def test_sampled_runs_stop_exactly_at_a_stop_string(engine: Engine, draft: Engine) -> None:
    """The stop string ends with the last token: no token after it was kept, even one verified in the same
    pass (drafts of 8 make passes that yield several tokens likely)."""
    stops = 0
    for seed in range(12):
        params = SamplingParams(max_new_tokens=32, temperature=1.2, seed=seed, stop=("e",), ignore_eos=True)
        result = engine.generate(PROMPT, params, draft=DraftSpec(draft, tokens=8))
        assert "e" not in result.text
        if result.stop_reason == "stop":
            stops += 1
            ids = list(result.token_ids)
            assert "e" in engine.decode(ids) and "e" not in engine.decode(ids[:-1])
    assert stops > 0


def test_a_draft_with_a_smaller_vocabulary_never_proposes_unknown_ids(draft: Engine) -> None:
    """Logits of ids one model lacks are -inf for the draft: padding must not become a proposal."""
    n = draft.config.vocab_size
    drafter = ModelDrafter(draft, 1, threading.Event(), 64, n + 100)
    try:
        padded = drafter._on_target_vocab(torch.zeros(n))
        assert padded.shape[0] == n + 100 and torch.isinf(padded[-100:]).all()
        assert drafter._on_target_vocab(torch.zeros(n))[:n].eq(0).all()
        assert ModelDrafter(draft, 1, threading.Event(), 64, n - 8)._on_target_vocab(torch.zeros(n)).shape[0] == n - 8
    finally:
        drafter.close()
