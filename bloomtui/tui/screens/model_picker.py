"""Choose what to open: a BLOOM from the local Hugging Face cache, a folder, a server, or the built-in demo."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, OptionList, Static
from textual.widgets.option_list import Option

from bloomtui.cached_models import CachedModel
from bloomtui.sizes import format_size
from bloomtui.tui.engine_handle import DEMO, ModelSpec
from bloomtui.tui.screens.hub_prepare import HubPrepareScreen

HOW_TO_GET_ONE = (
    "For a real model: 'Prepare from the hub' above, or quit and run:\n"
    "  bloomtui download bigscience/bloom-560m    (about 1.1 GB)\n"
    "  bloomtui bigscience/bloom-560m\n"
    "Any BLOOM size works, up to the 176B bigscience/bloom.\n"
    "A BLOOM served by vLLM, TGI or transformers serve: type its URL above."
)
SERVER_PROMPT = "http://"


class ModelPickerScreen(ModalScreen[ModelSpec | None]):
    BINDINGS = [Binding("escape", "dismiss_none", "Cancel")]

    def __init__(self, cached: list[CachedModel], reason: str = "", hub_endpoint: str | None = None) -> None:
        super().__init__()
        self.cached = cached
        self.reason = reason
        self.hub_endpoint = hub_endpoint

    def compose(self) -> ComposeResult:
        if self.cached:
            intro = f"Found {len(self.cached)} BLOOM model(s) in the Hugging Face cache."
        else:
            intro = "No BLOOM model was found in the local Hugging Face cache."
        with Vertical(id="picker-dialog"):
            yield Static("Open a model", id="picker-title")
            yield Static("\n".join(filter(None, [self.reason, intro])), id="picker-intro", markup=False)
            options = [
                Option(f"{model.repo_id}  ·  {format_size(model.size_on_disk)}", id=f"repo:{model.repo_id}")
                for model in self.cached
            ]
            options.append(Option("Built-in demo model  ·  small, trained on the Python docs", id="demo"))
            options.append(Option("Connect to a server  ·  vLLM, TGI or transformers serve (URL below)", id="connect"))
            options.append(Option("Prepare from the hub  ·  fetch and compress a BLOOM", id="hub"))
            yield OptionList(*options, id="picker-options")
            yield Input(
                placeholder="…or type a model folder, cached repo id or server URL (http://host:8000), then enter",
                id="picker-path",
                select_on_focus=False,  # typing after "http://" must add to it, not replace it
            )
            yield Static(HOW_TO_GET_ONE, id="picker-help", markup=False)
            with Horizontal(id="picker-buttons"):
                yield Button("Open", variant="primary", id="open")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        options.highlighted = 0
        options.focus()

    def _chosen(self) -> ModelSpec | None:
        path = self.query_one("#picker-path", Input).value.strip()
        if path and path != SERVER_PROMPT:
            return ModelSpec(path)
        options = self.query_one(OptionList)
        if options.highlighted is None:
            return None
        option_id = options.get_option_at_index(options.highlighted).id or ""
        if option_id == "connect":
            self._ask_for_url()
            return None
        if option_id == "hub":
            self.app.push_screen(HubPrepareScreen(self.hub_endpoint), self._prepared)
            return None
        return DEMO if option_id == "demo" else ModelSpec(option_id.removeprefix("repo:"))

    def _ask_for_url(self) -> None:
        """The server choice needs a URL: start one in the input and move there."""
        field = self.query_one("#picker-path", Input)
        if not field.value.strip():
            field.value = SERVER_PROMPT
        field.cursor_position = len(field.value)
        field.focus()

    @on(OptionList.OptionSelected)
    @on(Input.Submitted)
    @on(Button.Pressed, "#open")
    def action_open(self) -> None:
        chosen = self._chosen()
        if chosen is not None:
            self.dismiss(chosen)

    def _prepared(self, spec: ModelSpec | None) -> None:
        if spec is not None:
            self.dismiss(spec)

    @on(Button.Pressed, "#cancel")
    def action_dismiss_none(self) -> None:
        self.dismiss(None)
