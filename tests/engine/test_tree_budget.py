"""The tree budget's rule: the tree that maximises expected tokens per second, from measured costs and
acceptance (pure arithmetic: no model)."""

from __future__ import annotations

import itertools

import pytest

from bloomtui.engine.decode.tree_budget import _PROBE, _PROBE_EVERY, BRANCH, Choice, TreeBudget


def measured(p_first: float, pass_a: float, pass_b: float, draft_round: float, fixed: int | None = None) -> TreeBudget:
    """A budget that has seen passes costing pass_a + pass_b * rows, draft rounds of `draft_round` s, and a
    draft whose first choice the target keeps with probability p_first (later choices: rarely)."""
    budget = TreeBudget(fixed, draft_costs=True)
    for rows in (1, 9, 33, 1, 17):
        budget.record_pass(rows, pass_a + pass_b * rows)
    for _ in range(4):
        budget.record_draft(3, 3 * draft_round)
    visits = 1000
    kept_first = int(p_first * visits)
    budget.record_visits([(1, 0)] * kept_first + [(2, 1)] * ((visits - kept_first) // 10))
    budget.record_visits([(BRANCH, None)] * ((visits - kept_first) - (visits - kept_first) // 10))
    return budget


def test_the_pass_cost_fit_recovers_a_line() -> None:
    budget = measured(0.7, 0.2, 0.003, 0.0)
    for rows in (1, 8, 64):
        assert budget.pass_seconds(rows) == pytest.approx(0.2 + 0.003 * rows)
    assert TreeBudget(None, True).pass_seconds(1) is None  # nothing timed yet


def test_best_tree_takes_the_most_valuable_nodes_within_its_depth() -> None:
    budget = measured(0.7, 0.2, 0.0, 0.0)
    p = budget.acceptance()
    for n, depth in itertools.product((1, 2, 5, 16, 64), (1, 3, 10)):
        choice = budget.best_tree(n, depth)
        assert sum(choice.levels) == choice.nodes <= n and len(choice.levels) <= depth
        assert all(count > 0 for count in choice.levels)
    # Depth 1: the root's children, worth p0, (1 - p0) p1, ...: the expected tokens are 1 plus their sum.
    star = budget.best_tree(3, 1)
    assert star.levels == (3,)
    assert star.expected_tokens == pytest.approx(1 + p[0] + (1 - p[0]) * p[1] + (1 - p[0]) * (1 - p[1]) * p[2])
    # A chain of 2: the first child and its first child.
    assert budget.best_tree(2, 2).expected_tokens == pytest.approx(1 + p[0] + p[0] * p[0])
    sizes = [budget.best_tree(n).expected_tokens for n in (1, 2, 4, 8, 16, 32, 64)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert budget.best_tree(0) == Choice(0)


def test_auto_grows_the_tree_when_a_pass_costs_the_same_for_many_rows() -> None:
    """Streamed: a pass is its reads, rows are nearly free, drafting is cheap against it."""
    choice = measured(0.8, 1.0, 0.0001, 0.005).choose()
    assert choice.nodes >= 16 and choice.expected_tokens > 3


def test_auto_keeps_the_tree_shallow_and_wide_when_draft_rounds_are_dear() -> None:
    """Each level costs the draft a round: dear rounds buy width (rows cost nothing here), not depth."""
    cheap = measured(0.8, 1.0, 0.0001, 0.001).choose()
    dear = measured(0.8, 1.0, 0.0001, 0.3).choose()
    assert 0 < len(dear.levels) <= 3 < len(cheap.levels)
    assert dear.nodes >= 4 * len(dear.levels)  # not the chain the deepest tree of few nodes would be


def test_auto_drafts_nothing_when_it_does_not_pay_but_probes_now_and_then() -> None:
    """Resident rows cost compute and the draft keeps little: plain passes, with a small probe tree every
    _PROBE_EVERY passes so the figures stay current."""
    budget = measured(0.05, 0.01, 0.01, 0.01)
    chosen = [budget.choose().nodes for _ in range(2 * _PROBE_EVERY)]
    assert chosen.count(0) == 2 * _PROBE_EVERY - 2
    assert chosen[_PROBE_EVERY - 1] == chosen[-1] == _PROBE


def test_a_fixed_budget_ignores_the_costs_and_room_caps_it() -> None:
    budget = measured(0.05, 0.01, 0.01, 0.01, fixed=16)
    assert budget.choose().nodes == 16
    assert budget.choose(room=5).nodes == 5
    assert budget.choose(room=0).nodes == 0


def test_auto_runs_chains_and_trees_by_turns_and_keeps_the_faster() -> None:
    from bloomtui.engine.decode.draft_mode import EXPLORE, PROBE, REVISIT, ChainOrTree

    modes = ChainOrTree()
    speed = {"chain": 100.0, "tree": 150.0}  # tokens per second each mode makes

    def run(passes: int) -> str:
        seen = ""
        for _ in range(passes):
            mode = modes.choose()
            seen += mode[0]
            modes.record(mode, 3, 3 / speed[mode])
        return seen

    seen = run(2 * EXPLORE + 3 * (REVISIT + PROBE))
    assert seen.startswith("c" * EXPLORE + "t" * EXPLORE)
    rest = seen[2 * EXPLORE :]
    # The faster keeps the run; the other is probed for PROBE passes after every REVISIT of it.
    assert "t" * REVISIT in rest and "t" + "c" * PROBE + "t" in rest and "c" * (PROBE + 1) not in rest
    assert modes.share("tree") == pytest.approx(seen.count("t") / len(seen))
    # The text changes: chains turn faster, and from the next probe on the run stays with them.
    speed["chain"] = 300.0
    later = run(REVISIT + 2 * PROBE + REVISIT // 2)
    assert "c" * (REVISIT // 2) in later
