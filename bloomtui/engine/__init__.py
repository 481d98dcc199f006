"""The layer-by-layer BLOOM engine. It knows nothing of any UI.

engine = Engine.open("path/or/hf-id", EngineOptions(ram_budget=800_000_000), on_event=print)
result = engine.generate("Hello", SamplingParams(max_new_tokens=20), on_event=print, cancel=event)
result = engine.generate("Hello", draft=DraftSpec(open_draft("bloom-560m", EngineOptions())))  # decode/drafting.py

The folders follow the life of a token, and imports only go down this drawing (tests/test_architecture.py):

    generate.py (Engine), prepare.py      the public engine; `bloomtui prepare`'s conversion
        decode/     passes into text: a sequence's loop, batches, sampling, drafts, trees, perplexity
        stream/     an opened model (open_model) run block by block while the loader streams the next
        plan/       decided once per model: what stays resident, how the rest is read (plan_model)
        io/         bytes into memory: pread, O_DIRECT, mapped pages, the guard on changing files
        compute/    BLOOM's math and kernels, and what this CPU measures fastest
        weights/    what a checkpoint folder holds: tensor layouts, config, scheme, tokenizer, defaults
    events.py, engine_options.py, sampling_params.py: the vocabulary every layer speaks (torch-free)

The cut follows what the code needs, not what the modules touch: the loader reads files but sits above plan/
and compute/, because it builds blocks the model multiplies from a plan; plan/ measures the disk with io/'s
readers beside compute/'s multiply; open_model sits below decode/ because every decoding loop runs on one.

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
