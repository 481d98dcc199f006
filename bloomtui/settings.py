"""User settings: a frozen dataclass saved as JSON under the XDG config dir.

One file, `settings.json`, read at start-up and written by the settings dialog. A missing file means
defaults; a broken one means defaults plus a warning the app shows, never a crash at start-up.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from bloomtui import locations
from bloomtui.engine.decode.draft_spec import MAX_FIXED_TOKENS, PROMPT_LOOKUP, DraftSpec, tree_setting
from bloomtui.engine.sampling_params import SamplingParams
from bloomtui.engine.weights.generation_config import (
    SAMPLES_NEED_SAMPLING,
    SAMPLES_NEED_TEMPERATURE,
    GenerationDefaults,
)
from bloomtui.errors import UsageError
from bloomtui.sizes import format_size, parse_size

# SamplingParams words its errors for the command line; the dialog shows the field's label instead.
LABELS = {
    "max_new_tokens": "Max new tokens",
    "temperature": "Temperature",
    "top_k": "Top-k",
    "top_p": "Top-p",
    "repetition_penalty": "Repetition penalty",
    "seed": "Seed",
    "ram_budget": "RAM budget",
    "draft": "Draft",
    "draft_tokens": "Draft tokens",
    "draft_tree": "Draft tree",
    "samples": "Samples",
}
MAX_SAMPLES = 8
"""Samples of one prompt the app runs side by side: as many panes as stay readable beside each other."""


APP_FALLBACK = {
    "max_new_tokens": 64,
    "do_sample": False,
    "temperature": 0.8,
    "top_k": 50,
    "top_p": 0.95,
    "repetition_penalty": 1.0,
}
"""What a decoding setting left blank comes to when the model's generation_config.json does not set it."""
LEGACY_DEFAULTS = {**{k: v for k, v in APP_FALLBACK.items() if k != "do_sample"}, "sample": False}
"""Before version 2, settings.json held these defaults as values (every save wrote them): read them as unset,
so a model's recommendations apply to users who never changed them."""
VERSION = 2
_SAMPLES_WORDED = {
    SAMPLES_NEED_SAMPLING: f"Samples: {SAMPLES_NEED_SAMPLING}; switch Greedy / sample to sampling, or set Samples to 1",
    SAMPLES_NEED_TEMPERATURE: "Samples: {n} samples need a Temperature above 0 (0 is greedy)",
}


@dataclass(frozen=True)
class Settings:
    max_new_tokens: int | None = None
    """How many tokens one run may add to the prompt; None: the model's default, else 64."""
    sample: bool | None = None
    """False: greedy decoding (always the most likely token). True: sample with the values below. None: as the
    model's generation_config.json says (do_sample), else greedy; sampling whenever `samples` is above 1."""
    temperature: float | None = None
    """Sampling temperature (> 0); only used when sampling. None: the model's, else 0.8."""
    top_k: int | None = None
    """Keep only the k most likely tokens before sampling; 0 turns it off. None: the model's, else 50."""
    top_p: float | None = None
    """Keep the smallest set of tokens whose probability adds up to p (nucleus sampling); 1 turns it off.
    None: the model's, else 0.95."""
    repetition_penalty: float | None = None
    """Divide the scores of tokens already seen by this (1 = off); applies to greedy decoding too. None: the
    model's, else 1."""
    seed: int | None = None
    """Random seed for sampling; None draws a fresh one each run."""
    ram_budget: int | None = None
    """Bytes of RAM the engine may hold for weights; None picks a safe share of free memory."""
    theme: str = "textual-dark"
    """The Textual theme."""
    draft: str = ""
    """Speculative decoding: "" off, "prompt-lookup", or a small BLOOM (folder, cached repo id, or the shipped
    "trained-draft") held resident beside the model, its bytes taken from the RAM budget."""
    draft_tokens: int = 0
    """Tokens drafted per pass; 0 adapts (1..8)."""
    draft_tree: str = ""
    """Token trees: "" or "off" drafts chains; "auto" sizes a tree from measured pass costs and acceptance;
    a node count (1..64) fixes it. Goes with Draft tokens 0 only."""
    samples: int = 1
    """Continuations of each prompt written side by side (1..MAX_SAMPLES), sharing every pass over the weights.
    More than one means sampling: with `sample` left to the model they sample even where its default is greedy,
    and greedy is refused (it would write the same text N times). Sample i uses seed S+i when a seed is set."""

    def sampling_params(self, defaults: GenerationDefaults | None = None) -> SamplingParams:
        """The engine's parameters: these settings, the model's `defaults` (generation_config.json) where they are
        blank, then APP_FALLBACK. Raises UsageError (worded for the dialog) on invalid values."""
        chosen = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.sample,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "repetition_penalty": self.repetition_penalty,
        }
        try:
            return (defaults or GenerationDefaults()).resolve(chosen, APP_FALLBACK, self.samples, seed=self.seed)
        except UsageError as exc:
            for engine_words, dialog_words in _SAMPLES_WORDED.items():
                if exc.message == engine_words.format(n=self.samples):
                    raise UsageError(dialog_words.format(n=self.samples)) from None
            raise UsageError(_worded(exc.message)) from None

    def validated(self) -> Settings:
        """Self, or UsageError naming the first invalid field."""
        if not 1 <= self.samples <= MAX_SAMPLES:
            raise UsageError(f"Samples must be in 1..{MAX_SAMPLES}, got {self.samples}")
        self.sampling_params()
        if any(getattr(self, name) is not None for name in ("temperature", "top_k", "top_p")):
            # Checked while greedy too: they apply as soon as sampling is switched on (temperature just below).
            replace(self, sample=True, temperature=self.temperature or 1.0).sampling_params()
        if self.sample and self.temperature is not None and not self.temperature > 0:
            raise UsageError(f"Temperature must be > 0 when sampling, got {self.temperature}")
        if self.ram_budget is not None and self.ram_budget <= 0:
            raise UsageError(f"RAM budget must be positive, got {self.ram_budget}")
        if not 0 <= self.draft_tokens <= MAX_FIXED_TOKENS:
            raise UsageError(f"Draft tokens must be in 0..{MAX_FIXED_TOKENS} (0 adapts), got {self.draft_tokens}")
        self.draft_spec()
        return self

    def draft_spec(self) -> DraftSpec:
        """How runs draft, without the model (the handle holds it); UsageError worded for the dialog."""
        try:
            return DraftSpec(None, self.draft_tokens or None, tree_setting(self.draft_tree))
        except UsageError as exc:
            raise UsageError(_worded(exc.message)) from None

    @property
    def draft_model(self) -> str:
        """The draft model to open beside the model ("" for none: prompt lookup needs no model)."""
        return "" if self.draft in ("", PROMPT_LOOKUP) else self.draft

    @property
    def ram_budget_text(self) -> str:
        return "auto" if self.ram_budget is None else format_size(self.ram_budget)

    def to_dict(self) -> dict[str, Any]:
        return {"version": VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        """Build from JSON data; unknown keys are ignored (older or newer versions), bad types refused."""
        if not isinstance(data, dict):
            raise UsageError("settings must be a JSON object")
        if "version" not in data:
            data = {k: v for k, v in data.items() if not (k in LEGACY_DEFAULTS and v == LEGACY_DEFAULTS[k])}
        values: dict[str, Any] = {}
        for field in fields(cls):
            if field.name in data:
                values[field.name] = _coerce(field.name, data[field.name])
        return cls(**values).validated()


KINDS: dict[str, type] = {
    "max_new_tokens": int,
    "sample": bool,
    "temperature": float,
    "top_k": int,
    "top_p": float,
    "repetition_penalty": float,
    "seed": int,
    "ram_budget": int,
    "theme": str,
    "draft": str,
    "draft_tokens": int,
    "draft_tree": str,
    "samples": int,
}
NULLABLE = frozenset({"max_new_tokens", "sample", "temperature", "top_k", "top_p", "repetition_penalty", "seed"})


def _worded(message: str) -> str:
    """An engine's message about command-line options, naming the dialog's fields instead."""
    for name in sorted(LABELS, key=len, reverse=True):  # --draft-tree before --draft
        message = message.replace(f"--{name.replace('_', '-')}", LABELS[name])
    return message


def _coerce(name: str, value: Any) -> Any:
    label = LABELS.get(name, name)
    kind = KINDS[name]
    if name == "ram_budget":
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
            return None
        if isinstance(value, str):
            return parse_size(value, label)
    if value is None and name in NULLABLE:
        return None
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, kind):
        return value
    raise UsageError(f"{label}: {value!r} is not a valid {kind.__name__}")


def load_settings(path: Path | None = None) -> tuple[Settings, str | None]:
    """The saved settings and a warning to show when the file exists but cannot be used."""
    path = path or locations.settings_file()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Settings(), None
    except OSError as exc:
        return Settings(), f"cannot read {path}: {exc.strerror}; using defaults"
    try:
        return Settings.from_dict(json.loads(text)), None
    except json.JSONDecodeError as exc:
        return Settings(), f"{path} is not valid JSON ({exc.msg}, line {exc.lineno}); using defaults"
    except UsageError as exc:
        return Settings(), f"{path}: {exc.message}; using defaults"


def save_settings(settings: Settings, path: Path | None = None) -> Path:
    """Write atomically, so a crash mid-write never leaves a half file that resets everything."""
    path = path or locations.settings_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".settings-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(settings.to_dict(), handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
