"""Small BLOOMs trained by the project on the Python documentation, shipped inside the package.

`trained` (8 blocks) is the app's demo; `trained-draft` shares its tokenizer and is small enough to draft for
it. Each folder is a complete checkpoint (bf16 safetensors, config, tokenizer, model card) opened in place:
nothing is written at start-up. `training/` in the repository makes them.
"""

from __future__ import annotations

from pathlib import Path

NAMES = ("trained", "trained-draft")


def path(name: str) -> Path:
    """The installed folder of a shipped model."""
    if name not in NAMES:
        raise ValueError(f"no shipped model {name!r}; choose one of {', '.join(NAMES)}")
    return Path(__file__).resolve().parent / name
