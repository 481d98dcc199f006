"""A model's recommended generation settings: `generation_config.json` beside config.json (the Hugging Face
convention). bloomtui reads the decoding fields as defaults for whatever the user has not set; the user's
own values always win. Real BLOOMs ship one with token ids only, so their defaults stay bloomtui's."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from bloomtui.engine.sampling_params import SamplingParams
from bloomtui.errors import UsageError

FILE = "generation_config.json"
SAMPLES_NEED_SAMPLING = "{n} samples need sampling (greedy decoding would write one text {n} times)"
SAMPLES_NEED_TEMPERATURE = "{n} samples need a temperature above 0 (0 is greedy)"


@dataclass(frozen=True)
class GenerationDefaults:
    """The fields of generation_config.json bloomtui honours; None where the file says nothing (or nonsense)."""

    max_new_tokens: int | None = None
    do_sample: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None

    @classmethod
    def read(cls, folder: Path) -> GenerationDefaults:
        """The folder's defaults; a missing, unreadable or malformed file is no defaults (never an error:
        these are recommendations, and a model opens without them)."""
        try:
            data = json.loads((folder / FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()
        if not isinstance(data, dict):
            return cls()
        return cls(
            max_new_tokens=_number(data.get("max_new_tokens"), int, lambda v: v >= 1),
            do_sample=data.get("do_sample") if isinstance(data.get("do_sample"), bool) else None,
            temperature=_number(data.get("temperature"), float, lambda v: v > 0),
            top_k=_number(data.get("top_k"), int, lambda v: v >= 0),
            top_p=_number(data.get("top_p"), float, lambda v: 0 < v <= 1),
            repetition_penalty=_number(data.get("repetition_penalty"), float, lambda v: v > 0),
        )

    def set_fields(self) -> dict[str, object]:
        """The fields the file sets, for `info` and the app's settings dialog."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def resolve(
        self,
        chosen: Mapping[str, object | None],
        fallback: Mapping[str, object],
        samples: int = 1,
        **fixed: object,
    ) -> SamplingParams:
        """SamplingParams from the user's `chosen` values (None: not set), else this model's, else `fallback`
        (every field of GenerationDefaults). As in transformers, temperature, top-k and top-p only matter when
        sampling (`do_sample`); `fixed` (seed, stop, ...) passes through. Raises UsageError on bad values.

        `samples` above 1 (the app's Samples, generate's --samples, serve's `n`) samples even where the model's
        default is greedy: N greedy texts would be one text N times. So a greedy choice with several samples is
        a UsageError (SAMPLES_NEED_SAMPLING, or SAMPLES_NEED_TEMPERATURE for a temperature of 0; callers name
        their own option), whoever asks."""

        def pick(name: str) -> object:
            for value in (chosen.get(name), getattr(self, name)):
                if value is not None:
                    return value
            return fallback[name]

        if samples > 1 and chosen.get("do_sample") is False:
            raise UsageError(SAMPLES_NEED_SAMPLING.format(n=samples))
        values = {"max_new_tokens": pick("max_new_tokens"), "repetition_penalty": pick("repetition_penalty")}
        if samples > 1 or pick("do_sample"):
            values |= {"temperature": pick("temperature"), "top_k": pick("top_k"), "top_p": pick("top_p")}
        else:  # greedy ignores the filters, but a bad value the user gave is still an error
            values |= {name: chosen[name] for name in ("top_k", "top_p") if chosen.get(name) is not None}
        params = SamplingParams(**values, **fixed)
        if samples > 1 and params.greedy:
            raise UsageError(SAMPLES_NEED_TEMPERATURE.format(n=samples))
        return params


def context_warning(prompt_tokens: int, context: int) -> str | None:
    """One line when a prompt is longer than the model's training context (config.json's seq_length; 2048 for
    every bigscience BLOOM), else None. Such a prompt still runs: the user may know what they do."""
    if prompt_tokens <= context:
        return None
    return (
        f"the prompt is {prompt_tokens:,} tokens, {prompt_tokens / context:.1f}x the {context:,}-token context "
        "this model was trained on: what it writes past that will likely be poor"
    )


def _number(value: object, kind: type, valid) -> int | float | None:  # noqa: ANN001
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if kind is int and (not float(value).is_integer()):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    value = kind(value)
    return value if valid(value) else None
