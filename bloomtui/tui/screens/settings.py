"""The settings dialog: generation settings and the RAM budget, checked before they are saved."""

from __future__ import annotations

from dataclasses import replace

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static, Switch

from bloomtui.errors import UsageError
from bloomtui.settings import LABELS, Settings
from bloomtui.sizes import parse_size

# field -> (input type, hint shown as the placeholder)
FIELDS: dict[str, tuple[str, str]] = {
    "max_new_tokens": ("integer", "tokens per run, e.g. 64"),
    "temperature": ("number", "> 0, e.g. 0.8"),
    "top_k": ("integer", "0 = off"),
    "top_p": ("number", "(0, 1], 1 = off"),
    "repetition_penalty": ("number", "1 = off, e.g. 1.2"),
    "seed": ("integer", "blank = random each run"),
    "ram_budget": ("text", "auto, or e.g. 800MB, 12GiB"),
}


def _text(settings: Settings, name: str) -> str:
    if name == "ram_budget":
        return "" if settings.ram_budget is None else settings.ram_budget_text.replace(" ", "")
    value = getattr(settings, name)
    return "" if value is None else str(value)


def parse_form(values: dict[str, str], sample: bool, base: Settings) -> Settings:
    """Settings from the dialog's texts; UsageError names the first field that is wrong."""
    parsed: dict[str, object] = {"sample": sample}
    for name, (kind, _hint) in FIELDS.items():
        text = values[name].strip()
        label = LABELS[name]
        if name == "seed" and not text:
            parsed[name] = None
        elif name == "ram_budget":
            parsed[name] = None if text.lower() in ("", "auto") else parse_size(text, label)
        elif kind == "integer":
            try:
                parsed[name] = int(text)
            except ValueError:
                raise UsageError(f"{label}: {text!r} is not a whole number") from None
        else:
            try:
                parsed[name] = float(text)
            except ValueError:
                raise UsageError(f"{label}: {text!r} is not a number") from None
    return replace(base, **parsed).validated()  # type: ignore[arg-type]


class SettingsScreen(ModalScreen[Settings | None]):
    BINDINGS = [
        Binding("escape", "dismiss_none", "Cancel"),
        Binding("ctrl+s", "save", "Save"),
    ]

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings

    def compose(self) -> ComposeResult:
        with Vertical(id="settings-dialog"):
            yield Static("Settings", id="settings-title")
            with Grid(id="settings-grid"):
                yield Label("Greedy / sample")
                with Horizontal(classes="switch-row"):
                    yield Switch(self.settings.sample, id="sample")
                    yield Label("sampling" if self.settings.sample else "greedy", id="sample-label")
                for name, (kind, hint) in FIELDS.items():
                    yield Label(LABELS[name])
                    yield Input(_text(self.settings, name), placeholder=hint, type=kind, id=name)  # type: ignore[arg-type]
            yield Static("", id="settings-error", markup=False)
            yield Static(
                "Temperature, top-k and top-p apply when sampling. Changing the RAM budget reopens the model.",
                id="settings-help",
                markup=False,
            )
            with Horizontal(id="settings-buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self._sync_sampling()
        self.query_one("#max_new_tokens", Input).focus()

    @on(Switch.Changed, "#sample")
    def _sync_sampling(self) -> None:
        sample = self.query_one("#sample", Switch).value
        self.query_one("#sample-label", Label).update("sampling" if sample else "greedy")
        for name in ("temperature", "top_k", "top_p"):
            self.query_one(f"#{name}", Input).disabled = not sample

    def _values(self) -> dict[str, str]:
        return {name: self.query_one(f"#{name}", Input).value for name in FIELDS}

    @on(Button.Pressed, "#save")
    @on(Input.Submitted)
    def action_save(self) -> None:
        try:
            settings = parse_form(self._values(), self.query_one("#sample", Switch).value, self.settings)
        except UsageError as exc:
            self.query_one("#settings-error", Static).update(exc.message)
            self.app.bell()
            return
        self.dismiss(settings)

    @on(Button.Pressed, "#cancel")
    def action_dismiss_none(self) -> None:
        self.dismiss(None)
