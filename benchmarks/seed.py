"""The seed article's method, re-implemented for today's transformers (the article pinned 4.20).

Per new token, with no KV cache and the whole sequence re-run every time (as the article's `forward`):
  1. `torch.load` shard 1 (word embeddings + their layer norm), embed, drop it;
  2. for every block: `torch.load` its shard from the bigscience layout, `load_state_dict` into ONE reused
     `BloomBlock`, run the full sequence through it;
  3. `torch.load` the final layer norm's shard and shard 1 again for the (tied) LM head, project the last
     position and take the argmax (greedy).
The article kept `ln_f` and the LM head resident; here they are re-read per token too so that every weight
is streamed, which is the case bloomtui's "every block streamed" run is compared with. Blocks are
transformers' own `BloomBlock` modules, called with today's signature (additive causal mask, ALiBi).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import evict, weight_files

INDEX = "pytorch_model.bin.index.json"


def _shard_map(folder: Path) -> dict[str, Path]:
    weight_map = json.loads((folder / INDEX).read_text())["weight_map"]
    return {key.removeprefix("transformer."): folder / name for key, name in weight_map.items()}


def _state_dict(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The article's get_state_dict: read a whole shard, keep the keys under `prefix`, stripped."""
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    out = {}
    for key, value in loaded.items():
        key = key.removeprefix("transformer.")
        if key.startswith(prefix):
            out[key[len(prefix) :]] = value
    return out


def seed_generate(
    folder: Path,
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    dtype: torch.dtype,
    cold: bool = False,
    on_token: Callable[[int, int, float], None] | None = None,
) -> list[int]:
    """Greedy ids. `on_token(step, id, seconds)`; `cold` evicts every shard from the page cache before each
    token (outside the timed part), as a model far larger than RAM would find them."""
    from transformers import BloomConfig
    from transformers.models.bloom.modeling_bloom import BloomBlock, build_alibi_tensor

    folder = Path(folder)
    config = BloomConfig.from_pretrained(folder)
    shards = _shard_map(folder)
    n_layer, hidden, eps = config.n_layer, config.hidden_size, config.layer_norm_epsilon
    block = BloomBlock(config, layer_idx=0).to(dtype).eval()  # the one reused block object
    files = weight_files(folder)
    ids = list(prompt_ids)
    new: list[int] = []
    with torch.inference_mode():
        for step in range(max_new_tokens):
            if cold:
                evict(files)
            t0 = time.perf_counter()
            input_ids = torch.tensor([ids])
            length = len(ids)
            alibi = build_alibi_tensor(torch.ones(1, length), config.n_head, dtype)
            causal = torch.full((length, length), torch.finfo(dtype).min, dtype=dtype).triu(1)[None, None]
            # load_embeddings()
            sd = _state_dict(shards["word_embeddings.weight"], "word_embeddings")
            embeddings = nn.Embedding.from_pretrained(sd.pop(".weight").to(dtype))
            lnorm = nn.LayerNorm(hidden, eps=eps, dtype=dtype)
            lnorm.load_state_dict({k.removeprefix("_layernorm."): v for k, v in sd.items()})
            hidden_states = lnorm(embeddings(input_ids))
            del embeddings, lnorm, sd
            for i in range(n_layer):  # load_block(block, i) then run the whole sequence
                block.load_state_dict(_state_dict(shards[f"h.{i}.input_layernorm.weight"], f"h.{i}."))
                hidden_states = block(hidden_states, alibi=alibi, attention_mask=causal)[0]
            final = nn.LayerNorm(hidden, eps=eps, dtype=dtype)
            final.load_state_dict(_state_dict(shards["ln_f.weight"], "ln_f."))
            hidden_states = final(hidden_states)
            head_key = "lm_head.weight" if "lm_head.weight" in shards else "word_embeddings.weight"
            head = _state_dict(shards[head_key], head_key)[""].to(dtype)  # load_causal_lm_head()
            logits = nn.functional.linear(hidden_states[:, -1], head)
            token = int(torch.argmax(logits, dim=-1))
            del head
            seconds = time.perf_counter() - t0
            ids.append(token)
            new.append(token)
            if on_token is not None:
                on_token(step, token, seconds)
    return new
