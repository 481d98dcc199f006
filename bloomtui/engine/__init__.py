"""The layer-by-layer BLOOM engine. It knows nothing of any UI.

engine = Engine.open("path/or/hf-id", EngineOptions(ram_budget=800_000_000), on_event=print)
result = engine.generate("Hello", SamplingParams(max_new_tokens=20), on_event=print, cancel=event)
result = engine.generate("Hello", draft=DraftSpec(open_draft("bloom-560m", EngineOptions())))  # drafting.py
"""

from bloomtui.engine.drafting import DraftSpec
from bloomtui.engine.generate import Engine, EngineOptions, ModelPlan
from bloomtui.engine.sampling import SamplingParams

__all__ = ["DraftSpec", "Engine", "EngineOptions", "ModelPlan", "SamplingParams"]
