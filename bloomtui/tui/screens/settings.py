"""The settings dialog: generation settings, samples, the RAM budget and the draft, checked before they are saved.

Samples above 1 need sampling: until the user flips the Greedy / sample switch, it follows Samples (on above 1,
back to what the model does at 1), and saving several samples with the switch turned to greedy is refused with
the reason. Enter saves from any field, the switch included (space flips it)."""

from __future__ import annotations

from dataclasses import replace

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static, Switch

from bloomtui.cached_models import CachedModel
from bloomtui.engine.decode.draft_spec import PROMPT_LOOKUP
from bloomtui.engine.weights.generation_config import GenerationDefaults
from bloomtui.errors import UsageError
from bloomtui.settings import APP_FALLBACK, LABELS, MAX_SAMPLES, Settings
from bloomtui.sizes import format_size, parse_size

# field -> (input type, hint shown as the placeholder; a decoding field's starts with what blank comes to)
FIELDS: dict[str, tuple[str, str]] = {
    "max_new_tokens": ("integer", "tokens per run"),
    "temperature": ("number", "> 0, when sampling"),
    "top_k": ("integer", "0 = off"),
    "top_p": ("number", "(0, 1], 1 = off"),
    "repetition_penalty": ("number", "> 1 curbs repeats"),
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


def samples_value(text: str) -> int | None:
    """What the Samples field holds: blank is 1, None while it is no whole number."""
    try:
        return int(text) if text.strip() else BLANK_DEFAULTS["samples"]
    except ValueError:
        return None


def switch_shown(settings: Settings, defaults: GenerationDefaults | None = None) -> bool:
    """Whether the Greedy / sample switch shows sampling: as chosen, else as it follows the model (its
    generation_config.json's do_sample) and Samples (above 1, they sample)."""
    if settings.sample is not None:
        return settings.sample
    return settings.samples > 1 or bool(defaults is not None and defaults.do_sample)


def parse_form(values: dict[str, str], sample: bool | None, base: Settings, draft: str | None = None) -> Settings:
    """Settings from the dialog's texts and the Greedy / sample choice (None: left to the model and Samples);
    UsageError names the first field that is wrong."""
    parsed: dict[str, object] = {"sample": sample, "draft": base.draft if draft is None else draft}
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
    return replace(base, **parsed).validated()  # type: ignore[arg-type]


class SampleSwitch(Switch):
    """The Greedy / sample switch: space flips it, enter saves the dialog as it does from the other fields."""

    BINDINGS = [Binding("enter", "submit", "Save", show=False)]

    class Submitted(Message):
        """Enter was pressed on the switch."""

    def action_submit(self) -> None:
        self.post_message(self.Submitted())


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
        self.sample_choice = settings.sample
        """Greedy / sample as the user chose it (in settings.json, or by flipping the switch); None while the
        switch follows the model and Samples."""

    def _hint(self, name: str, hint: str) -> str:
        if name not in APP_FALLBACK:
            return hint
        value = getattr(self.defaults, name, None) if self.defaults is not None else None
        blank = f"the model's {value:g}" if value is not None else f"{APP_FALLBACK[name]:g} (default)"
        return f"blank = {blank} · {hint}"

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="settings-dialog"):  # scrolls on short terminals; focus scrolls to the field
            yield Static("Settings", id="settings-title")
            with Grid(id="settings-grid"):
                for name, (kind, hint) in FIELDS.items():
                    if name in ("samples", "draft_tree"):
                        continue
                    if name == "temperature":  # the switch above the values it turns on; tab goes through it
                        yield Label("Greedy / sample")
                        with Horizontal(classes="switch-row"):  # Samples beside it: above 1, they need sampling
                            yield SampleSwitch(switch_shown(self.settings, self.defaults), id="sample")
                            yield Label("", id="sample-label")
                            yield Label(LABELS["samples"], id="samples-label")
                            yield self._input("samples", *FIELDS["samples"])
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

    def _sync_sampling(self) -> None:
        sample = self.query_one("#sample", Switch).value
        self.query_one("#sample-label", Label).update("sampling" if sample else "greedy")
        for name in ("temperature", "top_k", "top_p"):
            self.query_one(f"#{name}", Input).disabled = not sample

    @on(Switch.Changed, "#sample")
    def _sample_chosen(self, event: Switch.Changed) -> None:
        self.sample_choice = event.value  # only the user's flips post this: Samples' changes are prevented
        self._sync_sampling()

    @on(Input.Changed, "#samples")
    def _samples_need_sampling(self, event: Input.Changed) -> None:
        samples = samples_value(event.value)
        if self.sample_choice is not None or samples is None:
            return  # a choice of the user's stays; a half-typed number changes nothing
        with self.prevent(Switch.Changed):
            self.query_one("#sample", Switch).value = switch_shown(
                replace(self.settings, samples=samples), self.defaults
            )
        self._sync_sampling()

    def _values(self) -> dict[str, str]:
        return {name: self.query_one(f"#{name}", Input).value for name in FIELDS}

    @on(Button.Pressed, "#save")
    @on(Input.Submitted)
    @on(SampleSwitch.Submitted)
    def action_save(self) -> None:
        try:
            draft = str(self.query_one("#draft", Select).value)
            settings = parse_form(self._values(), self.sample_choice, self.settings, draft)
        except UsageError as exc:
            self.query_one("#settings-error", Static).update(exc.message)
            self.app.bell()
            return
        self.dismiss(settings)

    @on(Button.Pressed, "#cancel")
    def action_dismiss_none(self) -> None:
        self.dismiss(None)
