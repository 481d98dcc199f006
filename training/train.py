"""Train the demo BLOOMs on the Python documentation: a time budget, checkpoints, resume, a loss log.

    python -m training.train --model trained --minutes 55 --work training-runs
    python -m training.train --model trained-draft --minutes 12 --work training-runs
    python -m training.train --model trained --work training-runs --export bloomtui/demo_models/trained

The first run trains the shared byte-level BPE tokenizer on the training split and keeps it in WORK. A run
resumes from WORK/MODEL/checkpoint.pt when one exists. The learning-rate schedule (warmup then cosine to 10%)
is sized from the measured speed to end with the time budget, and saved in the checkpoint with the data
sampler's state, so a resumed run continues the schedule it began with. `--export` writes the bf16 model
folder (safetensors, config, tokenizer, model card) that the package ships.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import BloomConfig, BloomForCausalLM

from bloomtui import demo_models
from bloomtui.demo import save_tokenizer_files, train_byte_bpe
from training.corpus import DEFAULT_SOURCES, HELDOUT_PERCENT, split
from training.loop import Loop, warmup_cosine

VOCAB_SIZE = 8192
SEQ_LEN = 256
EOS_ID = 2


@dataclass(frozen=True)
class Recipe:
    n_layer: int
    hidden_size: int
    n_head: int
    batch: int
    lr: float
    warmup: int = 200
    weight_decay: float = 0.1
    dropout: float = 0.0


RECIPES = {
    "trained": Recipe(n_layer=8, hidden_size=192, n_head=6, batch=32, lr=2e-3),
    "trained-draft": Recipe(n_layer=3, hidden_size=96, n_head=4, batch=32, lr=3e-3),
}


def tokenizer_for(work: Path, train_texts: list[str]) -> Tokenizer:
    path = work / "tokenizer.json"
    if not path.exists():
        work.mkdir(parents=True, exist_ok=True)
        train_byte_bpe(train_texts, VOCAB_SIZE).save(str(path))
    return Tokenizer.from_file(str(path))


def token_stream(tokenizer: Tokenizer, texts: list[str]) -> torch.Tensor:
    """All documents' ids, each followed by </s>, as one long int64 tensor."""
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(texts):
        ids.extend(encoding.ids)
        ids.append(EOS_ID)
    return torch.tensor(ids, dtype=torch.long)


def bloom_config(recipe: Recipe) -> BloomConfig:
    return BloomConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=recipe.hidden_size,
        n_layer=recipe.n_layer,
        n_head=recipe.n_head,
        hidden_dropout=recipe.dropout,
        attention_dropout=recipe.dropout,
        bos_token_id=1,
        eos_token_id=EOS_ID,
        pad_token_id=3,
        tie_word_embeddings=True,
        seq_length=SEQ_LEN,  # the context it learned: bloomtui warns past it
        # trained in fp32 and this small, it loses ~8% perplexity to bf16 activations: bloomtui computes in fp32
        bloomtui={"compute_dtype": "float32"},
    )


@torch.no_grad()
def heldout_nll(model: BloomForCausalLM, ids: torch.Tensor, windows: int = 32) -> float:
    """Mean next-token NLL over the first `windows` consecutive SEQ_LEN windows of the held-out stream."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, min(len(ids) - 1, windows * SEQ_LEN), SEQ_LEN):
        window = ids[start : start + SEQ_LEN].unsqueeze(0)
        loss = model(input_ids=window, labels=window).loss
        total += loss.item() * (window.shape[1] - 1)
        count += window.shape[1] - 1
    model.train()
    return total / count


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    recipe = RECIPES[args.model]
    train_texts, heldout_texts = split(args.sources)
    tokenizer = tokenizer_for(args.work, train_texts)
    train_ids, heldout_ids = token_stream(tokenizer, train_texts), token_stream(tokenizer, heldout_texts)
    run = args.work / args.model
    run.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(args.seed)
    model = BloomForCausalLM(bloom_config(recipe))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
        betas=(0.9, 0.95),
    )
    loop = Loop(
        model=model,
        optimizer=optimizer,
        generator=torch.Generator().manual_seed(args.seed),
        checkpoint=run / "checkpoint.pt",
        log_path=run / "log.jsonl",
        train_ids=train_ids,
        seq_len=SEQ_LEN,
        batch_size=recipe.batch,
        lr_at=lambda step, total: warmup_cosine(step, total, recipe.lr, recipe.warmup, short_skips_warmup=True),
        loss=lambda batch: model(input_ids=batch, labels=batch).loss,
        log_fields=lambda state: {"tokens": state["tokens"], "tok_per_s": round(state["tokens"] / state["seconds"])},
        evaluate=lambda: {"heldout_nll": round(heldout_nll(model, heldout_ids), 4)},
    )
    if loop.resume():
        print(f"resumed {args.model} at step {loop.state['step']} of {loop.state['total_steps']}", flush=True)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"{args.model}: {params / 1e6:.2f}M parameters, {len(train_ids):,} train tokens, "
        f"{len(heldout_ids):,} held-out tokens",
        flush=True,
    )

    model.train()
    state = loop.state
    if args.minutes > 0 and state["total_steps"] is not None and state["step"] >= state["total_steps"]:
        state["total_steps"] = None  # finished before: a new budget continues it with a fresh schedule
    loop.run(args.minutes, args.log_every, args.save_minutes)
    loop.save()  # before the full held-out pass, which takes a while
    nll = heldout_nll(model, heldout_ids, windows=10**9)
    state["heldout_nll"] = nll
    loop.save()
    print(f"held-out NLL {nll:.4f}, perplexity {math.exp(nll):.2f} over {len(heldout_ids):,} tokens", flush=True)


_CARD = """# bloomtui demo model `{name}`

A small BLOOM ({params:.2f}M parameters: {n_layer} blocks, hidden size {hidden}, {n_head} heads, vocabulary
{vocab}) trained by the bloomtui project so that its demo writes English, and so that compressed weights and
speculative decoding have a model whose quality can be measured. It is not a useful language model: it knows
the style of the Python documentation and little else.

- Architecture: transformers' `BloomForCausalLM` (ALiBi, fused QKV, tied LM head), stored in bf16.
- Tokenizer: byte-level BPE, {vocab} tokens, BLOOM's special ids (`<unk>` 0, `<s>` 1, `</s>` 2, `<pad>` 3),
  trained on the training split; shared by `trained` and `trained-draft`.
- Corpus: the reStructuredText sources of the Python 3.11 documentation (Debian package `python3.11-doc`),
  markup reduced to the text it shows (`training/corpus.py`). Licence: Python Software Foundation License
  Version 2; the weights are a derived work shipped under the same terms. {heldout}% of the documents (chosen
  by a hash of their path) are held out.
- Training: {tokens:,} tokens seen ({epochs:.1f} passes over {train_tokens:,} training tokens), sequence
  length {seq_len}, batch {batch}, AdamW (lr {lr}, betas 0.9/0.95, weight decay {wd}), warmup {warmup} steps then
  cosine to 10%, {steps} steps in {minutes:.0f} minutes on 2 CPU cores.
- Held-out perplexity: {ppl:.2f} (mean NLL {nll:.4f} over {heldout_tokens:,} held-out tokens, windows of
  {seq_len} tokens, fp32, measured by the training script).

Reproduce: `python -m training.train --model {name} --minutes {minutes:.0f} --work training-runs`, then
`--export`. See `training/README.md`.
"""


def export(args: argparse.Namespace) -> None:
    recipe = RECIPES[args.model]
    run = args.work / args.model
    saved = torch.load(run / "checkpoint.pt", weights_only=False)
    state = saved["state"]
    model = BloomForCausalLM(bloom_config(recipe))
    model.load_state_dict(saved["model"])
    out: Path = args.export
    if out.exists():
        shutil.rmtree(out)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    save_tokenizer_files(Tokenizer.from_file(str(args.work / "tokenizer.json")), out)
    train_texts, heldout_texts = split(args.sources)
    tokenizer = Tokenizer.from_file(str(args.work / "tokenizer.json"))
    train_tokens = sum(len(e.ids) + 1 for e in tokenizer.encode_batch(train_texts))
    heldout_tokens = sum(len(e.ids) + 1 for e in tokenizer.encode_batch(heldout_texts))
    nll = state.get("heldout_nll", float("nan"))
    card = _CARD.format(
        name=args.model,
        params=sum(p.numel() for p in model.parameters()) / 1e6,
        n_layer=recipe.n_layer,
        hidden=recipe.hidden_size,
        n_head=recipe.n_head,
        vocab=VOCAB_SIZE,
        heldout=HELDOUT_PERCENT,
        tokens=state["tokens"],
        epochs=state["tokens"] / train_tokens,
        train_tokens=train_tokens,
        seq_len=SEQ_LEN,
        batch=recipe.batch,
        lr=recipe.lr,
        wd=recipe.weight_decay,
        warmup=recipe.warmup,
        steps=state["step"],
        minutes=state["seconds"] / 60,
        ppl=math.exp(nll),
        nll=nll,
        heldout_tokens=heldout_tokens,
    )
    (out / "README.md").write_text(card)
    # bloomtui reads generation_config.json as decoding defaults: ship the recommended ones, not transformers'.
    (out / "generation_config.json").write_text(json.dumps(demo_models.GENERATION_CONFIG, indent=2) + "\n")
    for file in out.iterdir():
        file.chmod(0o644)  # safetensors writes 0600; shipped files are read by every user
    (out / "training.json").write_text(json.dumps({"recipe": asdict(recipe), "state": state}, indent=2) + "\n")
    print(f"exported {args.model} to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(RECIPES), required=True)
    parser.add_argument("--work", type=Path, default=Path("training-runs"), help="tokenizer, checkpoints, logs")
    parser.add_argument("--sources", type=Path, default=DEFAULT_SOURCES, help="the docs' _sources folder")
    parser.add_argument("--minutes", type=float, default=55.0, help="time budget of this run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--save-minutes", type=float, default=5.0)
    parser.add_argument("--export", type=Path, help="write the trained model folder here instead of training")
    args = parser.parse_args()
    export(args) if args.export else train(args)


if __name__ == "__main__":
    main()
