"""The live engine panel: which block runs, read speed, memory, tokens, timing and the block map.

It shows `PanelSnapshot`s and holds no state of its own beyond the last one shown. It redraws a few times a
second while the engine runs flat out beside it, so a redraw is cheap: only lines whose text changed are
updated, without a new layout where their height cannot change, and a hidden panel draws when it is shown.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import ProgressBar, Sparkline, Static

from bloomtui.sizes import format_size
from bloomtui.tui.run_state import PanelSnapshot, memory_ceiling
from bloomtui.tui.widgets.block_map import BlockMap
from bloomtui.tui.widgets.panel_parts import DrawnWhenShown, mark_state, seconds, state_text

QUEUED = "queued: runs when the model is open"


def _rate(mbps: float | None) -> str:
    if mbps is None:
        return "—"
    return f"{mbps / 1000:.2f} GB/s" if mbps >= 1000 else f"{mbps:.0f} MB/s"


class EnginePanel(DrawnWhenShown, VerticalScroll):
    DEFAULT_CSS = """
    EnginePanel { height: 1fr; }
    EnginePanel ProgressBar { width: 100%; }
    EnginePanel ProgressBar Bar { width: 1fr; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.snapshot = PanelSnapshot()
        self._shown: dict[str, str | Text] = {}
        """What each line shows now, so an unchanged line is not updated."""

    def compose(self) -> ComposeResult:
        yield Static(id="panel-model", markup=False)
        yield Static(id="panel-state", markup=False)
        yield Static(id="panel-block", markup=False)
        yield ProgressBar(total=1, show_eta=False, id="pass-progress")
        yield Static(id="panel-read", markup=False)
        yield Sparkline([], id="read-spark")
        yield Static(id="panel-memory", markup=False)
        yield ProgressBar(total=1, show_eta=False, id="memory-bar")
        yield Static(id="panel-tokens", markup=False)
        yield Static(id="panel-samples", markup=False)
        yield Static(id="panel-draft", markup=False)
        yield Static(id="panel-eta", markup=False)
        yield Static("Blocks", classes="panel-heading", markup=False)
        yield BlockMap(id="block-map")

    def on_mount(self) -> None:
        self.border_title = "Engine"
        self._draw_now()

    def _draw(self) -> None:
        snap = self.snapshot
        model = snap.model
        if model is None:
            self._update("#panel-model", "No model open\nctrl+o opens one, or the demo")
        else:
            self._update(
                "#panel-model",
                f"{model.name}\n{model.n_blocks} blocks · hidden {model.hidden_size} · {model.dtype}\n"
                f"budget {format_size(model.total_budget)} · {len(model.resident_blocks)} resident · "
                f"{len(model.streamed_blocks)} streamed"
                + (f"\ndraft model {model.draft} · {format_size(model.draft_bytes)}" if model.draft else ""),
            )
        state = state_text(snap.state, snap.message)
        if snap.queued:
            state.append(f"\n{QUEUED}", style="bold")
        self._update("#panel-state", state)
        mark_state(self, snap.state)
        self._show_pass(snap)
        self._show_read(snap)
        self._show_memory(snap)
        self._show_tokens(snap)
        n_blocks = model.n_blocks if model else 0
        self.query_one(BlockMap).show(n_blocks, model.resident_blocks if model else frozenset(), snap.block)

    def _update(self, selector: str, text: str | Text) -> None:
        if self._shown.get(selector) == text:
            return
        old = self._shown.get(selector)
        self._shown[selector] = text
        # A new layout only where the line's height may change: a line more or less, or one that may wrap.
        width = self.scrollable_content_region.width or 1
        plain = [str(t) for t in (text, old or "")]
        layout = plain[0].count("\n") != plain[1].count("\n") or max(map(len, plain[0].split("\n"))) >= width
        self.query_one(selector, Static).update(text, layout=layout)

    def _show_pass(self, snap: PanelSnapshot) -> None:
        bar = self.query_one("#pass-progress", ProgressBar)
        if snap.state == "loading":
            total = max(1, snap.load_total)
            self._update("#panel-block", f"reading resident weights · {format_size(snap.load_done)}")
            bar.update(total=total, progress=min(snap.load_done, total))
            return
        n_blocks = snap.model.n_blocks if snap.model else 0
        if snap.state == "running" and snap.prefill_tokens > 1 and snap.prefill_total:
            # A long prompt: the bar follows (block, row) steps of the prefill pass, not just blocks.
            pct = 100 * snap.prefill_done / snap.prefill_total
            self._update(
                "#panel-block",
                f"prefill {snap.prefill_tokens} tokens · {pct:.0f}% · block {snap.block + 1} / {n_blocks}",
            )
            bar.update(total=snap.prefill_total, progress=snap.prefill_done)
            return
        if snap.block >= 0:
            line = f"block {snap.block + 1} / {n_blocks} · {snap.phase or 'computing'}"
        elif snap.phase == "sampling":
            line = f"block {n_blocks} / {n_blocks} · sampling"
        else:
            line = f"block — / {n_blocks or '—'}"
        self._update("#panel-block", line)
        done = snap.blocks_done if snap.state == "running" else 0
        bar.update(total=max(1, n_blocks), progress=done)

    def _show_read(self, snap: PanelSnapshot) -> None:
        self._update("#panel-read", f"read   {_rate(snap.read_mbps)}  (streamed blocks)")
        spark = self.query_one("#read-spark", Sparkline)
        if tuple(spark.data or ()) != snap.read_history:
            spark.data = list(snap.read_history)

    def _show_memory(self, snap: PanelSnapshot) -> None:
        bar = self.query_one("#memory-bar", ProgressBar)
        ceiling = memory_ceiling(snap)
        if snap.rss is None or ceiling is None:
            self._update("#panel-memory", "RSS    —\n\n")
            bar.update(total=1, progress=0)
            return
        # The budget covers weights and stream buffers; Python, torch and the UI come on top, and a run adds its
        # KV cache and working memory: together, what the process should stay under.
        self._update(
            "#panel-memory",
            f"RSS    {format_size(snap.rss)} of ~{format_size(ceiling.total)}\n"
            f"       runtime {format_size(ceiling.runtime)} + budget {format_size(ceiling.budget)}\n"
            f"       + run {format_size(ceiling.run)} (KV cache, work)",
        )
        bar.update(total=ceiling.total, progress=min(snap.rss, ceiling.total))
        self.set_class(snap.rss > ceiling.total, "-over-budget")

    def _show_tokens(self, snap: PanelSnapshot) -> None:
        limit = f"/{snap.max_tokens}" if snap.max_tokens else ""
        per_token = f"{seconds(snap.seconds_per_token)}/tok"
        samples = self.query_one("#panel-samples", Static)
        samples.display = snap.sequences > 1
        if snap.sequences > 1:  # the rates are the samples line's
            self._update("#panel-tokens", f"tokens {snap.tokens}{limit} per sample · {per_token}")
            self._update("#panel-samples", samples_lines(snap))
        else:
            rate = f" · {1 / snap.seconds_per_token:.1f} tok/s" if snap.seconds_per_token else ""
            self._update("#panel-tokens", f"tokens {snap.tokens}{limit} · {per_token}{rate}")
        self._update("#panel-eta", f"ETA    pass {seconds(snap.eta_pass)} · run {seconds(snap.eta_run)}")
        draft = self.query_one("#panel-draft", Static)
        draft.display = bool(snap.draft_name)
        if snap.draft_name:
            kept = f"{snap.acceptance:.0%}" if snap.acceptance is not None else "—"
            per_pass = f"{snap.tokens_per_pass:.2f}" if snap.tokens_per_pass else "—"
            tree = (
                f"\n       {snap.nodes_per_pass:.1f} nodes/pass · last tree {snap.draft_nodes}"
                if snap.draft_nodes
                else ""
            )
            draft.update(
                f"draft  {snap.draft_name}\n       {kept} kept ({snap.draft_accepted}/{snap.draft_proposed}) · "
                f"{per_pass} tok/pass{tree}"
            )


SAMPLES_PER_LINE = 4


def samples_lines(snap: PanelSnapshot) -> str:
    """The samples' speed together, then each sample's tokens/s by its number, four to a line."""
    running = f" · {snap.samples_running} running" if snap.state == "running" else ""
    together = f"{snap.aggregate_rate:.1f}" if snap.aggregate_rate else "—"
    lines = [f"samples {snap.sequences}{running} · {together} tok/s in all"]
    each = [f"{i + 1}: {rate:.1f}" if rate else f"{i + 1}: —" for i, rate in enumerate(snap.sample_rates)]
    for start in range(0, len(each), SAMPLES_PER_LINE):
        label = "tok/s  " if start == 0 else "       "
        lines.append(label + "  ".join(each[start : start + SAMPLES_PER_LINE]))
    return "\n".join(lines)
