"""The settings dialog: generation settings, samples, the RAM budget and the draft, checked before they are saved.

Samples above 1 need sampling: typing such a number turns the Greedy / sample switch on (where it was off), and
saving it with the switch turned back to greedy is refused with the reason."""

from __future__ import annotations

from dataclasses import replace

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static, Switch

from bloomtui.cached_models import CachedModel
from bloomtui.engine.drafting import PROMPT_LOOKUP
from bloomtui.engine.generation_config import GenerationDefaults
from bloomtui.errors import UsageError
from bloomtui.settings import LABELS, MAX_SAMPLES, Settings
from bloomtui.sizes import format_size, parse_size

# field -> (input type, hint shown as the placeholder)
FIELDS: dict[str, tuple[str, str]] = {
    "max_new_tokens": ("integer", "tokens per run, e.g. 64"),
    "temperature": ("number", "> 0, e.g. 0.8"),
    "top_k": ("integer", "0 = off"),
    "top_p": ("number", "(0, 1], 1 = off"),
    "repetition_penalty": ("number", "1 = off, e.g. 1.2"),
    "seed": ("integer", "blank = random each run"),
    "samples": ("integer", f"1..{MAX_SAMPLES}"),
    "ram_budget": ("text", "auto, or e.g. 800MB, 12GiB"),
    "draft_tokens": ("integer", "0 = adapts"),
    "draft_tree": ("text", "off · auto · 1..64"),
}


def blank_is_a_value(name: str) -> bool:
    """Whether a blank field is a documented value rather than a mistake (so it must not show red): draft
    tokens (0, adaptive), samples (1), and every setting whose unset value is None (no seed, the automatic
    budget, and whatever else `Settings` leaves to a default)."""
    field = Settings.__dataclass_fields__.get(name)
    return name in BLANK_DEFAULTS or (field is not None and field.default is None)


BLANK_DEFAULTS = {"draft_tokens": 0, "draft_tree": "", "samples": 1}
"""Fields whose blank means their default, not None."""


SMALL_DRAFT_BYTES = 8 * 1024**3
"""Cached BLOOMs up to this size on disk are offered as drafts (bloom-560m to bloom-3b)."""


def draft_choices(cached: list[CachedModel], current: str) -> list[tuple[str, str]]:
    """(label, setting value) for the draft picker: off, prompt lookup, the shipped draft, small cached BLOOMs,
    and the current value when it is none of those (a folder given with --draft or in settings.json)."""
    choices = [
        ("Off", ""),
        ("Prompt lookup · n-grams of the text so far", PROMPT_LOOKUP),
        ("trained-draft · shipped, drafts for the demo model", "trained-draft"),
    ]
    choices += [
        (f"{model.repo_id} · {format_size(model.size_on_disk)}", model.repo_id)
        for model in cached
        if model.size_on_disk <= SMALL_DRAFT_BYTES
    ]
    if current not in {value for _label, value in choices}:
        choices.append((current, current))
    return choices


def _text(settings: Settings, name: str) -> str:
    if name == "ram_budget":
        return "" if settings.ram_budget is None else settings.ram_budget_text.replace(" ", "")
    value = getattr(settings, name)
    return "" if value is None else str(value)


def switch_shown(settings: Settings) -> bool:
    """Whether the Greedy / sample switch opens on: sampling chosen, or left to the default with samples."""
    return bool(settings.sample) or (settings.sample is None and settings.samples > 1)


def parse_form(values: dict[str, str], sample: bool, base: Settings, draft: str | None = None) -> Settings:
    """Settings from the dialog's texts; UsageError names the first field that is wrong."""
    chosen: bool | None = sample
    if base.sample is None and sample == switch_shown(base):
        chosen = None  # the switch left alone: still the default's to decide
    parsed: dict[str, object] = {"sample": chosen, "draft": base.draft if draft is None else draft}
    for name, (kind, _hint) in FIELDS.items():
        text = values.get(name, "").strip()
        label = LABELS[name]
        if name in BLANK_DEFAULTS and not text:
            parsed[name] = BLANK_DEFAULTS[name]
        elif name == "ram_budget":
            parsed[name] = None if text.lower() in ("", "auto") else parse_size(text, label)
        elif kind == "text":
            parsed[name] = text.lower()
        elif not text and blank_is_a_value(name):
            parsed[name] = None
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
    if not sample and int(parsed["samples"]) > 1:  # type: ignore[call-overload]
        parsed["sample"] = False  # judged as the dialog shows it: greedy, which samples cannot be
    return replace(base, **parsed).validated()  # type: ignore[arg-type]


class SettingsScreen(ModalScreen[Settings | None]):
    BINDINGS = [
        Binding("escape", "dismiss_none", "Cancel"),
        Binding("ctrl+s", "save", "Save"),
    ]

    def __init__(
        self, settings: Settings, cached: list[CachedModel] | None = None, defaults: GenerationDefaults | None = None
    ) -> None:
        super().__init__()
        self.settings = settings
        self.cached = cached or []
        self.defaults = defaults
        """The open model's recommended decoding (generation_config.json): a blank field's value where it sets one."""
        self._samples_switched = settings.samples > 1

    def _hint(self, name: str, hint: str) -> str:
        value = getattr(self.defaults, name, None) if self.defaults is not None else None
        return hint if value is None or not blank_is_a_value(name) else f"blank = the model's {value}"

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="settings-dialog"):  # scrolls on short terminals; focus scrolls to the field
            yield Static("Settings", id="settings-title")
            with Grid(id="settings-grid"):
                yield Label("Greedy / sample")
                with Horizontal(classes="switch-row"):  # Samples beside it: above 1, they need sampling
                    yield Switch(switch_shown(self.settings), id="sample")
                    yield Label("sampling" if switch_shown(self.settings) else "greedy", id="sample-label")
                    yield Label(LABELS["samples"], id="samples-label")
                    yield self._input("samples", *FIELDS["samples"])
                for name, (kind, hint) in FIELDS.items():
                    if name in ("samples", "draft_tree"):
                        continue
                    if name == "draft_tokens":
                        yield Label(LABELS["draft"])
                        yield Select(
                            draft_choices(self.cached, self.settings.draft),
                            value=self.settings.draft,
                            allow_blank=False,
                            compact=True,
                            id="draft",
                        )
                    yield Label(LABELS[name])
                    if name == "draft_tokens":  # a chain's length, or a tree: one row, they exclude each other
                        with Horizontal(classes="switch-row"):
                            yield self._input(name, kind, hint)
                            yield Label(LABELS["draft_tree"], id="draft-tree-label")
                            yield self._input("draft_tree", *FIELDS["draft_tree"])
                    else:
                        yield self._input(name, kind, hint)
            yield Static("", id="settings-error", markup=False)
            yield Static(
                "Temperature, top-k and top-p apply when sampling; Samples above 1 write that many side by side "
                "(sample i with seed + i). A draft proposes tokens the model checks several per pass over its "
                "weights, keeping the model's own distribution: a chain, or with Draft tree a tree of its likeliest "
                "continuations. Changing the RAM budget or the draft model "
                "reopens the model.",
                id="settings-help",
                markup=False,
            )
            with Horizontal(id="settings-buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def _input(self, name: str, kind: str, hint: str) -> Input:
        return Input(
            _text(self.settings, name),
            placeholder=self._hint(name, hint),
            type=kind,  # type: ignore[arg-type]
            valid_empty=blank_is_a_value(name),
            compact=True,
            id=name,
        )

    def on_mount(self) -> None:
        self._sync_sampling()
        self.query_one("#max_new_tokens", Input).focus()

    @on(Switch.Changed, "#sample")
    def _sync_sampling(self) -> None:
        sample = self.query_one("#sample", Switch).value
        self.query_one("#sample-label", Label).update("sampling" if sample else "greedy")
        for name in ("temperature", "top_k", "top_p"):
            self.query_one(f"#{name}", Input).disabled = not sample

    @on(Input.Changed, "#samples")
    def _samples_need_sampling(self, event: Input.Changed) -> None:
        try:
            many = int(event.value) > 1
        except ValueError:
            return
        switch = self.query_one("#sample", Switch)
        if many and not switch.value and not self._samples_switched:
            self._samples_switched = True  # once: turned back to greedy, saving says why it cannot be
            switch.value = True

    def _values(self) -> dict[str, str]:
        return {name: self.query_one(f"#{name}", Input).value for name in FIELDS}

    @on(Button.Pressed, "#save")
    @on(Input.Submitted)
    def action_save(self) -> None:
        try:
            draft = str(self.query_one("#draft", Select).value)
            settings = parse_form(self._values(), self.query_one("#sample", Switch).value, self.settings, draft)
        except UsageError as exc:
            self.query_one("#settings-error", Static).update(exc.message)
            self.app.bell()
            return
        self.dismiss(settings)

    @on(Button.Pressed, "#cancel")
    def action_dismiss_none(self) -> None:
        self.dismiss(None)
