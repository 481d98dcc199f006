"""What a run adds to the process's RSS, for the engine panel's ceiling ("RSS 340 MB of ~355 MB"): an estimate
meant to hold from above, from what the panel knows of the model and the run.

A run holds, beside the model's weights (the budget) and the runtime:
- each sample's KV caches, and the draft model's beside them (a shared prompt is prefilled once, then copied),
  each up to twice what its positions need: caches grow by doubling;
- a pass's fp32 logits, a vocabulary-wide row for every sample and every token it drafted (the draft model's
  passes as many again), and the sampler's copies of one row;
- while the prompt prefills, a chunk's activations and attention scores, and where the compute dtype is not
  float32, a weight tile upcast for the GEMM.

The engine's sizes are copied here, not imported: the app starts without torch (test_memory_ceiling checks
they match).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bloomtui.engine.decode.draft_spec import MAX_DRAFT_TOKENS

if TYPE_CHECKING:
    from bloomtui.tui.run_state import ModelInfo, PanelSnapshot

PREFILL_ROWS = 1024
"""engine/stream/passes.py: prompt rows taken through a block at once."""
SCORE_BYTES = 64 * 1024**2
"""engine/compute/model.py: the bound on one chunk's attention scores (its mask is as large)."""
TILE_BYTES = 128 * 1024**2
"""engine/compute/matmul.py: fp32 bytes of one upcast weight tile."""
ACTIVATION_WIDTHS = 20
"""Hidden-sized fp32 rows a block holds per prompt row at once: the input and its norms, query/key/value (3),
the context, the residuals, the MLP's 4x-wide product and its GELU (8), the output."""
SAMPLER_ROWS = 8
"""Vocabulary-wide copies the sampler makes of the row it samples: the penalty's, temperature's, the filters',
top-p's sort (values, and int64 indices: two rows' worth), softmax's and the logprob's."""
FLOAT32 = 4


def kv_bytes(model: ModelInfo, positions: int, sequences: int) -> int:
    """KV caches of `sequences` sequences of `positions` positions each: the model's and its draft model's
    (unknown per token, it counts as the model's own: a draft is never the larger)."""
    per_token = model.kv_bytes_per_token
    if model.draft:
        per_token += model.draft_kv_bytes_per_token or model.kv_bytes_per_token
    return 2 * per_token * positions * sequences


def logits_bytes(model: ModelInfo, sequences: int, drafted: int) -> int:
    """A pass's logits for each sequence's token and the `drafted` tokens it checks, and the sampler's copies."""
    rows = sequences * (1 + drafted) * (2 if model.draft else 1)
    return FLOAT32 * model.vocab_size * (rows + SAMPLER_ROWS)


def prefill_bytes(model: ModelInfo, prompt_tokens: int) -> int:
    """The prompt's pass: its hidden rows, and the keys and values it attends over in fp32 (3 rows' worth each);
    one chunk's activations and scores; an upcast weight tile (the MLP's 4x-wide matrix) below float32."""
    if prompt_tokens <= 1:
        return 0
    chunk = min(prompt_tokens, PREFILL_ROWS)
    hidden = FLOAT32 * model.hidden_size
    scores = 2 * min(SCORE_BYTES, FLOAT32 * model.n_head * chunk * prompt_tokens)
    tile = 0 if model.dtype == "float32" else min(TILE_BYTES, FLOAT32 * 4 * model.hidden_size**2)
    return hidden * (3 * prompt_tokens + ACTIVATION_WIDTHS * chunk) + scores + tile


def run_bytes(snap: PanelSnapshot) -> int:
    """What the run in `snap` (or the next, while idle) adds beyond RUN_ALLOWANCE; 0 without a model."""
    model = snap.model
    if model is None:
        return 0
    # An adaptive chain drafts up to MAX_DRAFT_TOKENS; a tree as many as its last had, where more.
    drafted = max(MAX_DRAFT_TOKENS, snap.draft_nodes) if snap.draft_name else 0
    return (
        kv_bytes(model, snap.prompt_tokens + snap.max_tokens, snap.sequences)
        + logits_bytes(model, snap.sequences, drafted)
        + prefill_bytes(model, snap.prompt_tokens)
    )
