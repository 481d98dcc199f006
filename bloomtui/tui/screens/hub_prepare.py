"""Prepare a BLOOM from the hub inside the app: a repo id, a folder and a scheme; the shards are fetched and
compressed one at a time on a worker thread (engine.prepare.from_hub), with the plan and a progress bar here;
escape stops it (a later start with the same repo and folder resumes), and the prepared model opens when done."""

from __future__ import annotations

import threading
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, ProgressBar, Select, Static

from bloomtui.tui.engine_handle import ModelSpec

DEFAULT_REPO = "bigscience/bloom-560m"
MODELS_HOME = Path("~/bloomtui-models")
SCHEMES = (
    ("int4: a quarter of bf16's bytes, the fastest to stream", "int4"),
    ("int8: half of bf16's bytes, closest to the original", "int8"),
    ("bf16: uncompressed, one file per block", "bf16"),
)
ABOUT = (
    "The repo's shards are fetched in order and each is compressed as it lands, then deleted: the original never "
    "lies whole on disk (BLOOM-176B in int4 needs about 108 GB free, not 450). Escape stops; starting again with "
    "the same repo and folder resumes where it stopped. A repo already in the local cache is prepared from there."
)


def default_out(repo_id: str, weights: str) -> Path:
    return MODELS_HOME / f"{repo_id.rstrip('/').rsplit('/', 1)[-1]}-{weights}"


class HubPrepareScreen(ModalScreen[ModelSpec | None]):
    BINDINGS = [Binding("escape", "stop_or_close", "Stop / close")]

    def __init__(self, endpoint: str | None = None) -> None:
        super().__init__()
        self.endpoint = endpoint
        """The hub's address; None: HF_ENDPOINT or huggingface.co."""
        self.cancel = threading.Event()
        self.running = False

    def compose(self) -> ComposeResult:
        with Vertical(id="hub-dialog"):
            yield Static("Prepare a model from the hub", id="hub-title")
            yield Static(ABOUT, id="hub-about", markup=False)
            yield Input(value=DEFAULT_REPO, placeholder="repo id, e.g. bigscience/bloom", id="hub-repo")
            yield Select(SCHEMES, value="int4", allow_blank=False, id="hub-weights")
            yield Input(placeholder=f"output folder (default {default_out(DEFAULT_REPO, 'int4')})", id="hub-out")
            yield Static("", id="hub-status", markup=False)
            yield ProgressBar(id="hub-bar", show_eta=False)
            with Horizontal(id="hub-buttons"):
                yield Button("Start", variant="primary", id="hub-start")
                yield Button("Close", id="hub-close")

    def on_mount(self) -> None:
        self.query_one("#hub-repo", Input).focus()

    def _choice(self) -> tuple[str, str, Path]:
        repo = self.query_one("#hub-repo", Input).value.strip()
        weights = str(self.query_one("#hub-weights", Select).value)
        typed = self.query_one("#hub-out", Input).value.strip()
        return repo, weights, Path(typed or default_out(repo, weights)).expanduser()

    def on_input_submitted(self) -> None:
        self.start()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "hub-start":
            self.start()
        else:
            self.action_stop_or_close()

    def start(self) -> None:
        if self.running:
            return
        repo, weights, out = self._choice()
        if not repo:
            self._say("Type a repo id first, e.g. bigscience/bloom-560m.")
            return
        self.running = True
        self.cancel.clear()
        for widget in self.query("#hub-dialog Input, #hub-dialog Select, #hub-start"):
            widget.disabled = True
        self.query_one("#hub-close", Button).label = "Stop"
        self._say(f"Asking the hub about {repo} ...")
        self.run_worker(lambda: self._prepare(repo, weights, out), thread=True, exclusive=True, group="hub-prepare")

    def _prepare(self, repo: str, weights: str, out: Path) -> None:
        """On the worker thread: the whole prepare; every update goes back to the UI thread."""
        from bloomtui.errors import BloomtuiError, CancelRequested

        call = self.app.call_from_thread
        try:
            self._run(repo, weights, out, call)
        except CancelRequested:
            kept = Path(f"{out}.partial").is_dir()  # from the hub: kept to resume; a local prepare starts over
            call(
                self._ended,
                f"Stopped. {out}.partial keeps what is done: Start again to resume." if kept else "Stopped.",
            )
        except BloomtuiError as exc:
            call(self._ended, f"Error: {exc.message}")
        except OSError as exc:  # the disk filled, a permission, ...
            call(self._ended, f"Error: {exc}")
        else:
            call(self.dismiss, ModelSpec(str(out)))

    def _run(self, repo: str, weights: str, out: Path, call) -> None:  # noqa: ANN001 - App.call_from_thread
        from bloomtui.engine.weights.hub import find_local
        from bloomtui.progress import hub_text

        source = find_local(repo)
        if source is not None:
            from bloomtui.engine.prepare import prepare

            def local_progress(p) -> None:  # noqa: ANN001 - a PrepareProgress
                call(self._progress, p.done, p.total, f"From the local cache: {p.done}/{p.total} files written")

            prepare(source, out, weights, on_progress=local_progress, should_stop=self.cancel.is_set)
            return
        from bloomtui.engine.prepare.from_hub import prepare_from_hub

        def hub_progress(p) -> None:  # noqa: ANN001 - a HubProgress
            call(self._progress, p.fetched, max(1, p.to_fetch), hub_text(p))

        prepare_from_hub(
            repo, out, weights, on_progress=hub_progress, should_stop=self.cancel.is_set,
            on_plan=lambda text: call(self._say, text), endpoint=self.endpoint,
        )  # fmt: skip

    def _progress(self, done: float, total: float, text: str) -> None:
        self.query_one("#hub-bar", ProgressBar).update(total=total, progress=done)
        self._say(text)

    def _say(self, text: str) -> None:
        self.query_one("#hub-status", Static).update(text)

    def _ended(self, text: str) -> None:
        self.running = False
        for widget in self.query("#hub-dialog Input, #hub-dialog Select, #hub-start"):
            widget.disabled = False
        self.query_one("#hub-close", Button).label = "Close"
        self._say(text)

    def action_stop_or_close(self) -> None:
        if self.running:
            self.cancel.set()
            self._say("Stopping ...")
        else:
            self.dismiss(None)
