"""Test checkpoints written in real layouts, and transformers' BloomForCausalLM as the oracle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import BloomConfig as HFBloomConfig
from transformers import BloomForCausalLM

from bloomtui import demo


@dataclass
class Written:
    path: Path
    config: dict
    state_dict: dict[str, torch.Tensor]


def write_checkpoint(
    directory: Path,
    *,
    preset: str = "tiny",
    layout: str = "safetensors",
    dtype: str = "float32",
    untied: bool = True,
    post_ln: bool = False,
    aliases: bool = False,
    init_std: float = 0.05,
    seed: int = 0,
    prefix: bool | None = None,
) -> Written:
    """A random checkpoint whose weights are also returned, so the oracle loads the very same values."""
    config = demo.make_config(
        demo.PRESETS[preset], tie_word_embeddings=not untied, post_ln_residual=post_ln, aliases=aliases, dtype=dtype
    )
    state = dict(demo.random_state_dict(config, seed=seed, init_std=init_std, dtype=demo.DTYPES[dtype]))
    demo.save_checkpoint(state, config, directory, layout=layout, prefix=prefix)
    demo.save_tokenizer(demo.PRESETS[preset].vocab_size, directory)
    return Written(directory, config, state)


def oracle(written: Written, dtype: torch.dtype = torch.float32) -> BloomForCausalLM:
    model = BloomForCausalLM(HFBloomConfig(**written.config)).eval()
    model.load_state_dict({k: v.to(dtype) for k, v in written.state_dict.items()}, strict=False)
    if written.config["tie_word_embeddings"]:
        model.tie_weights()
    return model.to(dtype)


def reference_greedy(model: BloomForCausalLM, prompt_ids: list[int], n: int) -> tuple[list[int], list[float]]:
    """Greedy ids and log-softmax of the raw logits at each chosen id, from transformers' generate()."""
    out = model.generate(
        torch.tensor([prompt_ids]),
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=3,
        output_logits=True,
        return_dict_in_generate=True,
    )
    ids = out.sequences[0, len(prompt_ids) :].tolist()
    logprobs = [torch.log_softmax(step[0].float(), -1)[t].item() for step, t in zip(out.logits, ids, strict=True)]
    return ids, logprobs
