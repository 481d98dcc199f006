"""Pure pieces of the app: settings, locations, cache discovery, history, transcript, the panel's fold, handles."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from bloomtui import locations
from bloomtui.cached_models import CachedModel, find_cached_blooms
from bloomtui.engine import SamplingParams, events
from bloomtui.errors import UsageError
from bloomtui.settings import Settings, load_settings, save_settings
from bloomtui.tui.history import LIMIT, load_history, remember, save_history
from bloomtui.tui.remote_handle import RemoteHandle
from bloomtui.tui.run_state import RunTracker
from bloomtui.tui.screens.settings import draft_choices, parse_form
from bloomtui.tui.transcript import to_markdown
from bloomtui.tui.widgets.run_output import Exchange, printable
from tests.tui.fakes import ScriptedEngine, fake_info

# --- settings ---


def test_settings_round_trip(isolated_dirs: Path) -> None:
    settings = Settings(max_new_tokens=9, sample=True, temperature=0.5, seed=3, ram_budget=800_000_000, theme="nord")
    path = save_settings(settings)
    assert path == isolated_dirs / "config" / "settings.json"
    assert load_settings() == (settings, None)


def test_settings_ignore_unknown_keys_and_reject_bad_types() -> None:
    assert Settings.from_dict({"max_new_tokens": 5, "from_the_future": 1}) == Settings(max_new_tokens=5)
    assert Settings.from_dict({"ram_budget": "1.5GB"}).ram_budget == 1_500_000_000
    with pytest.raises(UsageError, match="Max new tokens: '5' is not a valid int"):
        Settings.from_dict({"max_new_tokens": "5"})
    with pytest.raises(UsageError, match="Max new tokens must be at least 1"):
        Settings.from_dict({"max_new_tokens": 0})


@pytest.mark.parametrize(
    ("content", "warning"),
    [("{oops", "not valid JSON"), ('{"top_p": 7}', "Top-p must be in (0, 1]"), ("[1, 2]", "JSON object")],
)
def test_broken_settings_file_gives_defaults_and_a_warning(content: str, warning: str) -> None:
    locations.settings_file().write_text(content)
    settings, message = load_settings()
    assert settings == Settings()
    assert message is not None and warning in message


def test_sampling_params_from_settings() -> None:
    greedy = Settings(temperature=0.7).sampling_params()
    assert greedy.temperature == 0.0  # sampling off: greedy whatever the temperature field says
    sampled = Settings(sample=True, temperature=0.7, top_k=5, top_p=0.5, seed=1).sampling_params()
    assert (sampled.temperature, sampled.top_k, sampled.top_p, sampled.seed) == (0.7, 5, 0.5, 1)
    with pytest.raises(UsageError, match="Temperature must be > 0 when sampling"):
        Settings(sample=True, temperature=0.0).validated()


def test_settings_form_parsing() -> None:
    values = {
        "max_new_tokens": "12",
        "temperature": "0.9",
        "top_k": "0",
        "top_p": "1",
        "repetition_penalty": "1.1",
        "seed": "",
        "ram_budget": "2GiB",
        "draft_tokens": "",
    }
    parsed = parse_form(values, True, Settings(theme="nord"))
    assert parsed == Settings(12, True, 0.9, 0, 1.0, 1.1, None, 2 * 1024**3, "nord")
    drafted = parse_form({**values, "draft_tokens": "3"}, True, Settings(draft="trained-draft"), "prompt-lookup")
    assert (drafted.draft, drafted.draft_tokens, drafted.draft_model) == ("prompt-lookup", 3, "")
    assert parse_form(values, True, Settings(draft="trained-draft")).draft_model == "trained-draft"
    with pytest.raises(UsageError, match="Draft tokens must be in 0..32"):
        parse_form({**values, "draft_tokens": "40"}, False, Settings())
    treed = parse_form({**values, "draft_tree": " Auto "}, True, Settings(draft="trained-draft"))
    assert treed.draft_tree == "auto" and treed.draft_spec().trees
    assert parse_form({**values, "draft_tree": "16"}, True, Settings()).draft_spec().tree == 16
    assert not parse_form({**values, "draft_tree": "off"}, True, Settings()).draft_spec().trees
    with pytest.raises(UsageError, match="Draft tree must be auto, off or a node count in 1..64, got 65"):
        parse_form({**values, "draft_tree": "65"}, False, Settings())
    with pytest.raises(UsageError, match="Draft tree must be auto, off or a node count, got 'wide'"):
        parse_form({**values, "draft_tree": "wide"}, False, Settings())
    with pytest.raises(UsageError, match="Draft tokens sets a chain's length: it goes with Draft tree off only"):
        parse_form({**values, "draft_tokens": "3", "draft_tree": "auto"}, False, Settings())
    assert parse_form({**values, "ram_budget": "auto"}, False, Settings()).ram_budget is None
    with pytest.raises(UsageError, match="Max new tokens: 'x' is not a whole number"):
        parse_form({**values, "max_new_tokens": "x"}, False, Settings())
    with pytest.raises(UsageError, match="Repetition penalty must be > 0"):
        parse_form({**values, "repetition_penalty": "0"}, False, Settings())


def test_locations_follow_environment(isolated_dirs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert locations.history_file() == isolated_dirs / "data" / "history.json"
    assert locations.transcripts_dir() == isolated_dirs / "data" / "transcripts"
    monkeypatch.setenv("BLOOMTUI_TRANSCRIPTS_DIR", str(isolated_dirs / "elsewhere"))
    assert locations.transcripts_dir().is_dir()
    assert locations.demo_model_dir("x") == isolated_dirs / "cache" / "demo-x"


# --- the Hugging Face cache ---


def test_no_hf_cache_is_not_an_error(tmp_path: Path) -> None:
    assert find_cached_blooms(tmp_path / "does-not-exist") == []


def _cached_repo(cache: Path, repo_id: str, config: dict | None) -> None:
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "blobs").mkdir()
    if config is not None:
        blob = repo / "blobs" / "cfg"
        blob.write_text(json.dumps(config))
        (snapshot / "config.json").symlink_to(blob)


def test_finds_bloom_repos_in_the_hf_cache(tmp_path: Path) -> None:
    _cached_repo(tmp_path, "bigscience/bloom-560m", {"model_type": "bloom"})
    _cached_repo(tmp_path, "someone/my-finetune", {"model_type": "bloom"})
    _cached_repo(tmp_path, "gpt2/gpt2", {"model_type": "gpt2"})
    _cached_repo(tmp_path, "bigscience/bloom-7b1", None)  # partial download: no config yet
    found = find_cached_blooms(tmp_path)
    assert [model.repo_id for model in found] == ["bigscience/bloom-560m", "someone/my-finetune"]
    assert found[0].path.name == "0123abcd"


# --- history and transcript ---


def test_history_moves_repeats_to_the_end_and_is_capped(tmp_path: Path) -> None:
    history: list[str] = []
    for prompt in ("a", "b", "a", "  "):
        remember(history, prompt)
    assert history == ["b", "a"]
    for i in range(LIMIT + 5):
        remember(history, f"p{i}")
    assert len(history) == LIMIT and history[-1] == f"p{LIMIT + 4}"
    path = tmp_path / "h" / "history.json"
    save_history(path, history)
    assert load_history(path) == history
    path.write_text("garbage")
    assert load_history(path) == []


def test_transcript_fences_survive_backticks() -> None:
    exchange = Exchange("Write code: ", "demo", ["```python\nprint(1)\n```"], "done · 3 tokens", "done")
    text = to_markdown([exchange])
    assert "````\nWrite code: \n````" in text
    assert "````\n```python\nprint(1)\n```\n````" in text
    assert "_done · 3 tokens_" in text


def test_control_characters_are_made_visible() -> None:
    assert printable("a\x06b\nc\td\x7f") == "a\u2406b\nc\td\u2421"


# --- the panel's fold of engine events ---


def _block(gen: int, index: int, token: int, *, resident: bool, read: float = 0.0) -> events.BlockDone:
    return events.BlockDone(
        gen, index=index, total=4, kind="prefill" if token == 0 else "decode", token_index=token,
        resident=resident, bytes=0 if resident else 10_000_000, read_seconds=read, wait_seconds=0.0,
        compute_seconds=0.5, rss=1000 + index,
    )  # fmt: skip


def test_tracker_folds_a_pass_and_estimates() -> None:
    tracker = RunTracker()
    tracker.opened(fake_info(4), rss=900, baseline_rss=100)
    tracker.start(1, max_tokens=10)
    tracker.feed(1, events.PhaseChanged(1, "reading", 0, 4))
    snap = tracker.snapshot()
    assert (snap.state, snap.phase, snap.block) == ("running", "reading", 0)
    tracker.feed(1, _block(1, 0, 0, resident=False, read=0.01))
    tracker.feed(1, _block(1, 1, 0, resident=True))
    snap = tracker.snapshot()
    assert snap.read_mbps == pytest.approx(1000.0) and snap.read_history == (pytest.approx(1000.0),)
    assert (snap.blocks_done, snap.rss) == (2, 1001)
    assert snap.eta_pass == pytest.approx(1.0)  # two blocks left at this pass's mean of 0.5 s
    tracker.feed(1, _block(1, 2, 0, resident=True))
    tracker.feed(1, _block(1, 3, 0, resident=True))
    tracker.feed(1, events.TokenGenerated(1, 0, 5, "x", -1.0, 2.0))
    tracker.feed(1, events.PhaseChanged(1, "computing", 0, 4))  # the next pass starts
    assert tracker.snapshot().blocks_done == 0
    tracker.feed(1, _block(1, 0, 1, resident=False, read=0.02))
    tracker.feed(1, events.TokenGenerated(1, 1, 6, "y", -1.0, 1.5))
    snap = tracker.snapshot()
    assert (snap.tokens, snap.seconds_per_token) == (2, 1.5)  # the prefill token is not a per-token cost
    assert snap.eta_run == pytest.approx(8 * 1.5)


def test_tracker_ignores_events_of_an_older_run() -> None:
    tracker = RunTracker()
    tracker.opened(fake_info(4), rss=900)
    tracker.start(1, 10)
    tracker.feed(1, events.TokenGenerated(1, 0, 5, "x", -1.0, 2.0))
    tracker.start(2, 10)
    before = tracker.snapshot()
    tracker.feed(1, events.TokenGenerated(1, 1, 5, "x", -1.0, 2.0))
    tracker.feed(1, events.Cancelled(1, (5,), "x", 1))
    assert tracker.snapshot() == before
    tracker.feed(2, events.Done(2, (1,), "a", 3, 1, 0.1, 0.0, 10.0, 1, 0, "eos"))
    assert tracker.snapshot().state == "done" and "end of text" in tracker.snapshot().message


def test_unwritable_config_dir_does_not_stop_start_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("BLOOMTUI_CONFIG_DIR", str(blocker / "sub"))
    assert load_settings()[0] == Settings()  # defaults, with a warning to show
    with pytest.raises(OSError):
        save_settings(Settings())


def test_tracker_shows_prefill_progress_until_the_first_token() -> None:
    tracker = RunTracker()
    tracker.opened(fake_info(4), rss=900)
    tracker.start(1, 10)
    tracker.feed(
        1,
        events.PrefillProgress(1, tokens=3000, done=6000, total=12000, block=1, blocks=4, seconds=5.0, eta_seconds=5.0),
    )
    snap = tracker.snapshot()
    assert (snap.prefill_tokens, snap.prefill_done, snap.prefill_total, snap.eta_pass) == (3000, 6000, 12000, 5.0)
    assert "3000 tokens" in snap.message
    tracker.feed(1, events.TokenGenerated(1, 0, 5, "x", -1.0, 10.0))
    assert tracker.snapshot().prefill_tokens == 0  # decoding: the panel is back to blocks per token


def test_draft_choices_offer_small_cached_blooms_and_keep_a_custom_value(tmp_path: Path) -> None:
    cached = [
        CachedModel("bigscience/bloom-560m", tmp_path, 1_100_000_000),
        CachedModel("bigscience/bloom", tmp_path, 360_000_000_000),  # far too big to draft
    ]
    values = [value for _label, value in draft_choices(cached, "")]
    assert values == ["", "prompt-lookup", "trained-draft", "bigscience/bloom-560m"]
    assert draft_choices(cached, "/models/my-draft")[-1] == ("/models/my-draft", "/models/my-draft")
    assert len(draft_choices([], "trained-draft")) == 3  # already offered: not repeated


def test_tracker_counts_drafted_tokens_kept_and_tokens_per_pass() -> None:
    tracker = RunTracker()
    tracker.opened(fake_info(4), rss=900)
    tracker.start(1, 10, draft_name="trained-draft")

    def block(kind: str, token: int, rows: int) -> events.BlockDone:
        return events.BlockDone(1, 0, 4, kind, token, True, 0, 0.0, 0.0, 0.01, 900, rows)  # type: ignore[arg-type]

    tracker.feed(1, block("prefill", 0, 5))
    tracker.feed(1, events.TokenGenerated(1, 0, 4, "a", -1.0, 0.1))
    tracker.feed(1, events.Drafted(1, 1, (7, 8, 9), " b c d"))
    tracker.feed(1, block("verify", 1, 4))
    # Two guesses kept, the third replaced by the model's own (the engine marks what verify kept).
    for index, token, drafted in ((1, 7, True), (2, 8, True), (3, 5, False)):
        tracker.feed(1, events.TokenGenerated(1, index, token, "x", -1.0, 0.1, drafted=drafted))
    snap = tracker.snapshot()
    assert (snap.draft_name, snap.draft_proposed, snap.draft_accepted, snap.passes) == ("trained-draft", 3, 2, 2)
    assert snap.tokens_per_pass == 2.0 and snap.acceptance == 2 / 3 and snap.draft_nodes == 0
    tracker.feed(1, events.Drafted(1, 4, (8,), " e"))
    tracker.feed(1, events.TokenGenerated(1, 4, 9, "y", -1.0, 0.1))  # a miss on the first guess
    assert tracker.snapshot().draft_accepted == 2 and tracker.snapshot().draft_proposed == 4


def test_tracker_counts_a_trees_nodes_and_the_tokens_kept_off_its_likeliest_line() -> None:
    tracker = RunTracker()
    tracker.opened(fake_info(4), rss=900)
    tracker.start(1, 10, draft_name="trained-draft · tree auto")
    for kind, token in (("prefill", 0), ("verify", 1)):
        tracker.feed(1, events.BlockDone(1, 0, 4, kind, token, True, 0, 0.0, 0.0, 0.01, 900, 1))  # type: ignore[arg-type]
        if kind == "prefill":
            tracker.feed(1, events.TokenGenerated(1, 0, 4, "a", -1.0, 0.1))
    tracker.feed(1, events.Drafted(1, 1, (7, 8), " b c", nodes=6))  # ids: the likeliest line only
    for index, token, drafted in ((1, 7, True), (2, 3, True), (3, 5, False)):  # 3: a sibling of 8, kept
        tracker.feed(1, events.TokenGenerated(1, index, token, "x", -1.0, 0.1, drafted=drafted))
    snap = tracker.snapshot()
    assert (snap.draft_proposed, snap.draft_accepted, snap.draft_nodes, snap.nodes_per_pass) == (6, 2, 6, 6.0)
    # auto drafts a chain next: the tree line keeps the last tree, and chain tokens are no nodes.
    tracker.feed(1, events.BlockDone(1, 0, 4, "verify", 4, True, 0, 0.0, 0.0, 0.01, 900, 3))  # type: ignore[arg-type]
    tracker.feed(1, events.Drafted(1, 4, (9, 9), " d d"))
    snap = tracker.snapshot()
    assert (snap.draft_proposed, snap.draft_nodes, snap.nodes_per_pass) == (8, 6, 3.0)


def test_memory_ceiling_counts_what_opening_and_a_run_add_and_is_never_below_idle_rss() -> None:
    from bloomtui.tui.run_state import RUN_ALLOWANCE, memory_ceiling

    info = fake_info(4)  # budget 1.8 GB, float32, hidden 1024
    tracker = RunTracker()
    assert memory_ceiling(tracker.snapshot()) is None  # no model
    # The demo's case: RSS right after the open is above what ran before plus the budget (the tokenizer, torch).
    baseline, opened = 250_000_000, 250_000_000 + info.total_budget + 20_000_000
    tracker.opened(info, rss=opened, baseline_rss=baseline)
    idle = memory_ceiling(tracker.snapshot())
    assert idle is not None and idle.total >= opened and idle.run == RUN_ALLOWANCE
    assert (idle.runtime, idle.budget) == (opened - info.total_budget, info.total_budget)
    tracker.start(1, 300)
    running = memory_ceiling(tracker.snapshot())
    kv = 2 * 4 * 1024 * 4  # keys and values, 4 blocks, hidden 1024, float32: per token
    assert running is not None and running.run == RUN_ALLOWANCE + 2 * kv * 300
    # Over it while running is over; the same RSS once idle is what the process holds.
    over = running.total + 1
    tracker.feed(1, events.BlockDone(1, 0, 4, "decode", 0, True, 0, 0.0, 0.0, 0.01, over))  # type: ignore[arg-type]
    assert memory_ceiling(tracker.snapshot()).total < over  # type: ignore[union-attr]
    tracker.feed(1, events.Cancelled(1, (), "", 0))
    assert memory_ceiling(tracker.snapshot()).total == over  # type: ignore[union-attr]


def test_pending_text_keeps_order_and_guesses_are_consumed_by_the_pieces_that_match() -> None:
    from bloomtui.tui.pending_text import PendingText
    from bloomtui.tui.widgets.run_output import RunOutput

    pending = PendingText()
    pending.add(1, "A")
    pending.add(1, " list is", guess=True)
    pending.add(1, " list")  # agrees with the guess: the rest stays shown
    pieces = pending.take()
    assert [p.text for p in pieces] == ["A", " list is", " list"] and pending.take() == []
    output = RunOutput(1, Exchange("p", "m"))
    output.extend(pieces)
    assert (output.exchange.text, output.guess) == ("A list", " is")
    output.extend([pieces[0].__class__(1, " was")])  # differs: the guess is gone
    assert (output.exchange.text, output.guess) == ("A list was", "")


# --- handles ---


def test_a_handle_runs_one_prompt_as_a_batch_of_one_and_one_sequence_handles_refuse_more() -> None:
    seen: list[events.Event] = []
    one = ScriptedEngine(multi_sequence=False)
    done = one.generate("p", SamplingParams(max_new_tokens=3), seen.append, threading.Event())
    assert isinstance(done, events.Done) and done.new_tokens == 3 and seen[-1] == done
    params = [SamplingParams(max_new_tokens=3)] * 2
    with pytest.raises(UsageError, match="one sequence at a time"):
        one.generate_many(["p", "q"], params, seen.append, threading.Event())
    assert one.runs == 1  # refused before it ran
    served = SimpleNamespace(url="http://server:8000/v1", model="bloom", generate=None)
    with pytest.raises(UsageError, match="a server runs one sequence at a time"):
        RemoteHandle(served).generate_many(["p", "q"], params, seen.append, threading.Event())  # type: ignore[arg-type]
