"""`bloomtui prepare` of a model on this machine (a folder, or a repo in the local Hugging Face cache): read one
block at a time (never the whole model), never write to the source, build OUT.partial and rename it at the end."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from bloomtui import __version__
from bloomtui.engine.io.reader import TensorReader
from bloomtui.engine.prepare.convert import (
    HEAD_MATRICES,
    choose_scheme,
    convert,
    output_bytes,
    units,
    write_safetensors,
)
from bloomtui.engine.prepare.folder import card, check_space, check_target, finish, partial_path
from bloomtui.engine.weights.checkpoint import Checkpoint
from bloomtui.engine.weights.hub import resolve_model
from bloomtui.engine.weights.tensorfile import TensorRef
from bloomtui.errors import CancelRequested, UsageError


@dataclass(frozen=True)
class PrepareProgress:
    done: int
    """Files written (the embeddings file, then one per block)."""
    total: int
    bytes_written: int
    seconds: float


def source_refs(checkpoint: Checkpoint) -> dict[str, TensorRef]:
    """Every source tensor a prepare reads, by bare key (as convert.units names them)."""
    refs = {HEAD_MATRICES[0]: checkpoint.embeddings, **checkpoint.small}
    if not checkpoint.tied:
        refs[HEAD_MATRICES[1]] = checkpoint.head
    for i, block in enumerate(checkpoint.blocks):
        refs |= {f"h.{i}.{name}": ref for name, ref in block.items()}
    return refs


def metadata(weights: str) -> dict[str, str]:
    return {"format": "pt", "bloomtui": __version__, "weights": weights}


def prepare(
    model: str | Path,
    out: Path,
    weights: str,
    group_size: int | None = None,
    force: bool = False,
    on_progress: Callable[[PrepareProgress], None] = lambda _p: None,
    should_stop: Callable[[], bool] = lambda: False,
    *,
    head: str = "int8",
) -> Path:
    """Write the prepared folder; returns its path. Raises UsageError/CheckpointError on bad input."""
    source = resolve_model(model)
    checkpoint = Checkpoint.open(source)
    if checkpoint.scheme is not None:
        raise UsageError(f"{source} was already prepared ({checkpoint.scheme.weights}); prepare its source instead")
    cfg = checkpoint.config
    scheme = choose_scheme(cfg, weights, group_size, head)
    out = Path(out).expanduser()
    check_target(out, force, source)
    block_bytes, embed_bytes = output_bytes(cfg, scheme)
    check_space(out.parent, cfg.n_layer * block_bytes + embed_bytes, "the prepared model")

    partial = partial_path(out)
    shutil.rmtree(partial, ignore_errors=True)  # left by a run that was killed outright
    partial.mkdir()
    reader = TensorReader(drop_cache=False)
    started = time.perf_counter()
    written = 0
    weight_map: dict[str, str] = {}
    refs = source_refs(checkpoint)

    def read(ref: TensorRef) -> Tensor:
        if should_stop():
            raise CancelRequested
        t = torch.empty(ref.shape, dtype=torch.float32)
        reader.read(ref, t, should_stop)
        return t

    try:
        plan = units(cfg)
        for done, unit in enumerate(plan, 1):
            tensors: dict[str, Tensor] = {}
            for key in unit.keys:
                tensors |= convert(key, read(refs[key]), scheme)
            written += write_safetensors(partial / unit.file, tensors, metadata(weights))
            weight_map.update(dict.fromkeys(tensors, unit.file))
            del tensors
            on_progress(PrepareProgress(done, len(plan), written, time.perf_counter() - started))
        raw = json.loads((source / "config.json").read_text(encoding="utf-8"))
        stored = f"{checkpoint.layout}, stored {str(checkpoint.dtype).removeprefix('torch.')}"
        readme = card(str(source), stored, scheme, cfg, block_bytes, embed_bytes)
        finish(partial, out, raw, scheme, weight_map, written, source, readme)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        reader.close()
    return out
