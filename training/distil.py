"""Distil the demo draft from its target: train `trained-draft` on `trained`'s own next-token distributions.

    python -m training.distil --minutes 45 --work training-runs            # resumable
    python -m training.distil --work training-runs --report                # agreement of shipped vs distilled
    python -m training.distil --work training-runs --export bloomtui/demo_models/trained-draft

A draft is worth what the target keeps of its guesses, so it should learn the target's distribution, not the
corpus: the loss is KL(target || draft) over every position of windows of the training split, the target
(the shipped `trained`, fp32, no gradients) scoring the same windows. The draft starts from the shipped
`trained-draft` (same size, same tokenizer) and keeps its shape, so the quarter-of-the-target's-bytes limit
holds. The schedule, checkpoints and log work as train.py's. `--report` measures, on held-out windows,
how often the draft's top-1 is the target's (what a greedy chain keeps), how often the target's choice is in
the draft's top-4 (what a tree of 4 siblings could keep), the KL, and the draft's own held-out NLL, for the
shipped draft and the distilled one.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import BloomForCausalLM

from bloomtui import demo_models
from training.corpus import DEFAULT_SOURCES, split
from training.loop import Loop, warmup_cosine
from training.train import SEQ_LEN, heldout_nll, token_stream

NAME = "trained-draft"
BATCH = 16
LR = 1e-3
WARMUP = 50


def load(path: Path) -> BloomForCausalLM:
    return BloomForCausalLM.from_pretrained(str(path), torch_dtype=torch.float32)


def kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(teacher || student), both from raw logits."""
    s = F.log_softmax(student_logits.float(), -1).flatten(0, -2)
    t = F.log_softmax(teacher_logits.float(), -1).flatten(0, -2)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


@torch.no_grad()
def agreement(student: BloomForCausalLM, teacher: BloomForCausalLM, ids: torch.Tensor, windows: int = 24) -> dict:
    """top-1 agreement, target-in-draft-top-4, KL and the draft's NLL on held-out windows."""
    student.eval()
    top1 = top4 = positions = 0
    kl = 0.0
    for start in range(0, min(len(ids) - 1, windows * SEQ_LEN), SEQ_LEN):
        window = ids[start : start + SEQ_LEN].unsqueeze(0)
        s, t = student(input_ids=window).logits[0], teacher(input_ids=window).logits[0]
        want = t.argmax(-1)
        top1 += int((s.argmax(-1) == want).sum())
        top4 += int((s.topk(4, -1).indices == want[:, None]).any(-1).sum())
        kl += float(kl_loss(s, t)) * len(want)
        positions += len(want)
    student.train()
    return {
        "top1_agreement": round(top1 / positions, 4),
        "top4_coverage": round(top4 / positions, 4),
        "kl": round(kl / positions, 4),
        "heldout_nll": round(heldout_nll(student, ids), 4),
        "positions": positions,
    }


def corpus(sources: Path) -> tuple[torch.Tensor, torch.Tensor]:
    tokenizer = Tokenizer.from_file(str(demo_models.path("trained") / "tokenizer.json"))
    train_texts, heldout_texts = split(sources)
    return token_stream(tokenizer, train_texts), token_stream(tokenizer, heldout_texts)


def distil(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    train_ids, heldout_ids = corpus(args.sources)
    run = args.work / "distil"
    run.mkdir(parents=True, exist_ok=True)
    teacher = load(demo_models.path("trained")).eval()
    student = load(demo_models.path(NAME))

    def loss(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = teacher(input_ids=batch).logits
        return kl_loss(student(input_ids=batch).logits, target)

    loop = Loop(
        model=student,
        optimizer=torch.optim.AdamW(student.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.0),
        generator=torch.Generator().manual_seed(args.seed),
        checkpoint=run / "checkpoint.pt",
        log_path=run / "log.jsonl",
        train_ids=train_ids,
        seq_len=SEQ_LEN,
        batch_size=BATCH,
        lr_at=lambda step, total: warmup_cosine(step, total, LR, WARMUP),
        loss=loss,
        loss_name="kl",
        # its held-out "kl" overwrites the batch's on these lines, as in the shipped log-distil.jsonl
        evaluate=lambda: agreement(student, teacher, heldout_ids, windows=8),
    )
    resumed = loop.resume()
    state = loop.state
    if resumed:
        print(f"resumed at step {state['step']} of {state['total_steps']}", flush=True)
    else:
        state["before"] = agreement(student, teacher, heldout_ids)
        print(json.dumps({"before": state["before"]}), flush=True)
    loop.run(args.minutes, args.log_every, args.save_minutes)
    state["after"] = agreement(student, teacher, heldout_ids)
    loop.save()
    print(json.dumps({"before": state.get("before"), "after": state["after"]}), flush=True)


def export(args: argparse.Namespace) -> None:
    saved = torch.load(args.work / "distil" / "checkpoint.pt", weights_only=False)
    state = saved["state"]
    student = load(demo_models.path(NAME))
    student.load_state_dict(saved["model"])
    out: Path = args.export
    keep = {
        name: (demo_models.path(NAME) / name).read_bytes()
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
        if (demo_models.path(NAME) / name).exists()
    }
    staged = out.with_name(out.name + ".partial")
    if staged.exists():
        shutil.rmtree(staged)
    student.to(torch.bfloat16).save_pretrained(staged, safe_serialization=True)
    for name, data in keep.items():
        (staged / name).write_bytes(data)
    before, after = state["before"], state["after"]
    (staged / "README.md").write_text(
        CARD.format(
            before=before,
            after=after,
            state=state,
            minutes=state["seconds"] / 60,
            ppl=math.exp(after["heldout_nll"]),
            batch=BATCH,
            seq=SEQ_LEN,
            lr=LR,
        )
    )
    (staged / "training.json").write_text(json.dumps({"distilled_from": "trained", "state": state}, indent=2) + "\n")
    for file in staged.iterdir():
        file.chmod(0o644)
    if out.exists():
        shutil.rmtree(out)
    staged.rename(out)
    print(f"exported the distilled draft to {out}")


CARD = """# bloomtui demo model `trained-draft`

The draft for speculative decoding with the demo model `trained`: a small BLOOM (3 blocks, hidden size 96,
4 heads, vocabulary 8192, the same tokenizer as `trained`), a quarter of its bytes, stored in bf16.

- First trained on the Python 3.11 documentation like `trained` (`python -m training.train --model
  trained-draft`), then distilled from `trained` (`python -m training.distil`): {state[step]} steps of
  batch {batch} x {seq} tokens ({state[tokens]:,} tokens, {minutes:.0f} minutes on 2 CPU cores), loss
  KL(trained || draft) on every position, AdamW lr {lr} cosine to 10%.
- Agreement with `trained` on {after[positions]:,} held-out positions (fp32), before -> after distilling:
  top-1 the same as the target's {before[top1_agreement]:.1%} -> {after[top1_agreement]:.1%}; the target's
  choice within the draft's top 4 {before[top4_coverage]:.1%} -> {after[top4_coverage]:.1%}; KL
  {before[kl]:.3f} -> {after[kl]:.3f} nats.
- Held-out perplexity: {ppl:.2f} (mean NLL {after[heldout_nll]:.4f}, the draft's own, on held-out windows of
  {seq} tokens; before distilling {before[heldout_nll]:.4f}).
- Corpus licence: Python Software Foundation License Version 2; the weights are a derived work shipped
  under the same terms. See `training/README.md`.
"""


DOC_PROMPTS = (
    "If the file does not exist, the function",
    "A dictionary maps keys to",
    "The with statement is used to",
    "Lists are mutable sequences, typically used to",
    "The return value is a new",
    "This module provides access to",
)
"""Python-documentation openings the models were not trained on verbatim (greedy, as the demo decodes)."""


def engine_acceptance(draft: Path, tokens: int = 64) -> dict:
    """Speculative decoding of the demo by `draft` through the engine: kept/proposed and tokens per pass."""
    from bloomtui.engine import DraftSpec, Engine, EngineOptions, SamplingParams
    from bloomtui.engine.decode.drafting import open_draft

    target = Engine.open(demo_models.path("trained"), EngineOptions(dtype="float32"))
    spec = DraftSpec(open_draft(draft, EngineOptions(dtype="float32")))
    params = SamplingParams(max_new_tokens=tokens, ignore_eos=True)
    proposed = accepted = passes = new = 0
    try:
        for prompt in DOC_PROMPTS:
            done = target.generate(prompt, params, draft=spec)
            plain = target.generate(prompt, params)
            assert done.token_ids == plain.token_ids, "a draft changed greedy output"
            proposed += done.draft_proposed
            accepted += done.draft_accepted
            passes += done.passes
            new += done.new_tokens
    finally:
        target.close()
        spec.model.close()
    return {
        "kept": accepted,
        "proposed": proposed,
        "acceptance": round(accepted / proposed, 4),
        "tokens_per_pass": round(new / passes, 3),
        "prompts": len(DOC_PROMPTS),
        "tokens": tokens,
    }


def report(args: argparse.Namespace) -> None:
    """Agreement on held-out windows and acceptance through the engine, of the draft folder given (default:
    the shipped one)."""
    draft = args.draft or demo_models.path(NAME)
    _, heldout_ids = corpus(args.sources)
    teacher = load(demo_models.path("trained")).eval()
    found = {"agreement": agreement(load(draft), teacher, heldout_ids), "engine": engine_acceptance(draft)}
    print(json.dumps({str(draft): found}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("training-runs"))
    parser.add_argument("--sources", type=Path, default=DEFAULT_SOURCES)
    parser.add_argument("--minutes", type=float, default=45.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--save-minutes", type=float, default=5.0)
    parser.add_argument("--export", type=Path, help="write the distilled model folder here")
    parser.add_argument("--report", action="store_true", help="a draft's agreement with the target, and its acceptance")
    parser.add_argument("--draft", type=Path, help="with --report: the draft folder (default: the shipped one)")
    args = parser.parse_args()
    if args.export:
        export(args)
    elif args.report:
        report(args)
    else:
        distil(args)


if __name__ == "__main__":
    main()
