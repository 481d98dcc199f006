"""A model's recommended generation settings: `generation_config.json` beside config.json (the Hugging Face
convention). bloomtui reads the decoding fields as defaults for whatever the user has not set; the user's
own values always win. Real BLOOMs ship one with token ids only, so their defaults stay bloomtui's."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

from bloomtui.engine.sampling import SamplingParams

FILE = "generation_config.json"


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

    def apply(self, params: SamplingParams, given: frozenset[str]) -> SamplingParams:
        """`params` with the model's values for every field not in `given` (the fields the user set). Sampling
        follows the file's do_sample unless the user chose greedy or a temperature; as in transformers,
        temperature, top-k and top-p only matter when sampling."""
        changes: dict[str, object] = {}
        if "max_new_tokens" not in given and self.max_new_tokens is not None:
            changes["max_new_tokens"] = self.max_new_tokens
        if "repetition_penalty" not in given and self.repetition_penalty is not None:
            changes["repetition_penalty"] = self.repetition_penalty
        sample = params.temperature > 0 if "temperature" in given else bool(self.do_sample)
        if sample:
            if "temperature" not in given:
                changes["temperature"] = self.temperature if self.temperature is not None else 1.0
            if "top_k" not in given and self.top_k is not None:
                changes["top_k"] = self.top_k
            if "top_p" not in given and self.top_p is not None:
                changes["top_p"] = self.top_p
        return replace(params, **changes) if changes else params


def _number(value: object, kind: type, valid) -> int | float | None:  # noqa: ANN001
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if kind is int and (not float(value).is_integer()):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    value = kind(value)
    return value if valid(value) else None
