"""Small BLOOMs trained by the project on the Python documentation, shipped inside the package.

`trained` (8 blocks) is the app's demo; `trained-draft` shares its tokenizer and is small enough to draft for
it. Each folder is a complete checkpoint (bf16 safetensors, config, tokenizer, model card) opened in place:
nothing is written at start-up. `training/` in the repository makes them.
"""

from __future__ import annotations

from pathlib import Path

NAMES = ("trained", "trained-draft")
DEMO = "trained"
"""The demo every command's --demo opens (the app, generate, perplexity, info, serve)."""
GENERATION_CONFIG = {
    "_comment": "bloomtui's recommended decoding for this small demo model: greedy with a repetition penalty "
    "(without one it loops), and no more new tokens than its 256-token training context handles well",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 3,
    "do_sample": False,
    "repetition_penalty": 1.2,
    "max_new_tokens": 128,
}
"""Each shipped model's generation_config.json (training/train.py writes it): defaults for what the user
leaves unset, in the app and the CLI (bloomtui/engine/weights/generation_config.py)."""


def path(name: str) -> Path:
    """The installed folder of a shipped model."""
    if name not in NAMES:
        raise ValueError(f"no shipped model {name!r}; choose one of {', '.join(NAMES)}")
    return Path(__file__).resolve().parent / name
