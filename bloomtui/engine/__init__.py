"""The layer-by-layer BLOOM engine. It knows nothing of any UI.

engine = Engine.open("path/or/hf-id", EngineOptions(ram_budget=800_000_000), on_event=print)
result = engine.generate("Hello", SamplingParams(max_new_tokens=20), on_event=print, cancel=event)
result = engine.generate("Hello", draft=DraftSpec(open_draft("bloom-560m", EngineOptions())))  # drafting.py

The public names load on first use (PEP 562): `from bloomtui.engine import EngineOptions` or `events` costs
no torch import, so `--help`, the CLI's checks and the app's first frame come before the seconds torch takes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bloomtui.engine.decode.draft_spec import DraftSpec
    from bloomtui.engine.engine_options import EngineOptions
    from bloomtui.engine.generate import Engine
    from bloomtui.engine.plan.model_plan import ModelPlan
    from bloomtui.engine.sampling_params import SamplingParams

_HOMES = {
    "DraftSpec": "bloomtui.engine.decode.draft_spec",
    "Engine": "bloomtui.engine.generate",
    "EngineOptions": "bloomtui.engine.engine_options",
    "ModelPlan": "bloomtui.engine.plan.model_plan",
    "SamplingParams": "bloomtui.engine.sampling_params",
}
__all__ = ["DraftSpec", "Engine", "EngineOptions", "ModelPlan", "SamplingParams"]


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module 'bloomtui.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
