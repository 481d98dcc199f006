"""What int8 activations cost in accuracy: the integer-dot decode kernels (native_q8.c) against the exact ones.

    python -m benchmarks.activations [--tokens 256] [--work DIR] [--update BENCHMARKS.md]

For the trained demo model's int8 and int4 copies (it writes doc-like English, so its distributions are peaked
as a real model's are) and the bloom-560m-shaped random checkpoint's: two engines on the same folder, one with
`--activations exact`, one with `--activations int8`, wholly resident. Each reads the held-out text one token
per pass (the decode path, where the few-row kernels run; perplexity windows multiply many rows and take the
exact path either way), and at every position their next-token distributions are compared: perplexity of each,
KL(exact || int8) (mean and largest), and whether their likeliest tokens agree. Then `--tokens` greedy tokens
from one prompt with each: how many agree before the first difference, and in all. A reference row per folder
compares the exact kernels computing in bf16 with the same computing in fp32: how far a rounding of that size
already moves greedy text. The int8-activation rows compute in the folder's default dtype (named in the row).
Both run on the kernels this machine builds (BLOOMTUI_NATIVE=avx2 measures the AVX2 build; the integer sums are
the same on every family, so its numbers are too).
"""

from __future__ import annotations

import argparse
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.checkpoints import ensure, ensure_prepared, full_specs, prepared_specs
from benchmarks.common import BIG_BUDGET, HELDOUT, Section, commit_stamp, cpu_summary, say
from benchmarks.jobs import DEFAULT_WORK

SECTION = Section("activations")
PROMPT = "The for statement in Python differs a bit from what you may be used to in C or Pascal."
MODELS = (("trained demo", "trained"), ("bloom-560m shape, random weights", "bf16"))
PAIRS = (
    ("int8 activations vs exact", {"activations": "exact"}, {"activations": "int8"}),
    (
        "reference: exact, bf16 compute vs fp32",
        {"activations": "exact", "dtype": "float32"},
        {"activations": "exact", "dtype": "bfloat16"},
    ),
)
"""(what is compared, the first engine's options, the second's): the first is the one measured against."""


@dataclass
class Agreement:
    positions: int = 0
    nll_first: float = 0.0
    nll_second: float = 0.0
    kl_sum: float = 0.0
    kl_max: float = 0.0
    top1_same: int = 0
    greedy_prefix: int = 0
    greedy_same: int = 0
    greedy_tokens: int = 0

    def row(self, name: str, weights: str, compared: str) -> str:
        ppl_e, ppl_q = math.exp(self.nll_first / self.positions), math.exp(self.nll_second / self.positions)
        return (
            f"| {name} | {weights} | {compared} | {self.positions} | {ppl_e:.4f} | "
            f"{ppl_q:.4f} ({ppl_q / ppl_e:.4f}x) | "
            f"{self.kl_sum / self.positions:.2e} | {self.kl_max:.2e} | {100 * self.top1_same / self.positions:.1f}% | "
            f"{self.greedy_prefix} / {self.greedy_tokens} | {self.greedy_same} / {self.greedy_tokens} |"
        )


def _next_token_logprobs(engine, ids: list[int]) -> Iterator[torch.Tensor]:  # noqa: ANN001 - an Engine
    """log p(. | ids[:i+1]) for each i, one decode pass per token through the engine's own passes."""
    from bloomtui.engine.compute.model import Alibi, KVCache

    cfg, dtype = engine.config, engine.dtype
    alibi = Alibi(cfg.n_head, dtype, len(ids))
    caches = [KVCache.empty(cfg, len(ids), dtype) for _ in range(cfg.n_layer)]
    cancel = threading.Event()
    with torch.inference_mode(), engine.store.prefetcher(len(ids), cancel) as prefetch:
        passes = engine.passes(1, lambda _event: None, cancel, prefetch)
        for pos, token in enumerate(ids[:-1]):
            hidden = passes.hidden([token], pos, caches, alibi, "decode", pos)
            yield torch.log_softmax(passes.logits(hidden, like_decode=True)[0].double(), dim=-1)


def compare(model: Path, text: str, tokens: int, first: dict, second: dict) -> tuple[Agreement, str]:
    """How the second engine's next-token distributions and greedy text differ from the first's, and the
    second's compute dtype."""
    from bloomtui.engine import Engine, EngineOptions, SamplingParams

    engines = [Engine.open(model, EngineOptions(ram_budget=BIG_BUDGET, **options)) for options in (first, second)]
    try:
        ids = engines[0].encode(text)
        out = Agreement()
        steps = zip(*(_next_token_logprobs(e, ids) for e in engines), strict=True)
        for target, (first, second) in zip(ids[1:], steps, strict=True):
            kl = float((first.exp() * (first - second)).sum())
            out.positions += 1
            out.nll_first -= float(first[target])
            out.nll_second -= float(second[target])
            out.kl_sum += kl
            out.kl_max = max(out.kl_max, kl)
            out.top1_same += int(first.argmax() == second.argmax())
        params = SamplingParams(max_new_tokens=tokens, ignore_eos=True)
        first_ids, second_ids = (list(e.generate(PROMPT, params).token_ids) for e in engines)
        out.greedy_tokens = len(first_ids)
        out.greedy_same = sum(a == b for a, b in zip(first_ids, second_ids, strict=True))
        pairs = enumerate(zip(first_ids, second_ids, strict=True))
        out.greedy_prefix = next((i for i, (a, b) in pairs if a != b), len(first_ids))
        return out, str(engines[1].dtype).removeprefix("torch.")
    finally:
        for engine in engines:
            engine.close()


def section(rows: list[str], args: argparse.Namespace, chars: int) -> str:
    from bloomtui.engine.compute.native import kernels

    built = kernels()
    lines = [
        "## int8 activations: accuracy against the exact kernels",
        "",
        f"`python -m benchmarks.activations --tokens {args.tokens}` ({commit_stamp()}, {cpu_summary()}; kernels: "
        f"{built.isa + ' build, integer dots by ' + built.int_isa if built else 'none'}). The same folder opened "
        f"twice (first: `--activations exact`, second: `--activations int8`; in the reference rows first: exact in "
        f"fp32, second: exact in bf16), wholly resident; the first {chars} characters of the held-out text read one "
        "token per decode pass; KL(first || second) in nats per position; greedy: "
        f"{args.tokens} tokens from one prompt with each.",
        "",
        "| model | weights | second against first | positions | perplexity, first | perplexity, second | KL mean "
        "| KL max | same top-1 | greedy: same before the first difference | greedy: same in all |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    return SECTION.text(lines)


def main() -> None:
    parser = Section.parser(__doc__)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--chars", type=int, default=2000, help="characters of the held-out text to read")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = parser.parse_args()
    text = HELDOUT.read_text(encoding="utf-8")[: args.chars]
    specs, prepared = full_specs(), prepared_specs(quick=False)
    rows = []
    for name, key in MODELS:
        source = ensure(specs[key], args.work) if key in specs else None
        for weights in ("int8", "int4"):
            spec = prepared[f"{key}_{weights}"]
            folder = ensure_prepared(spec, source or Path(spec.source), args.work, say)
            for compared, first, second in PAIRS:
                result, dtype = compare(folder, text, args.tokens, first, second)
                label = compared if "dtype" in second else f"{compared} ({dtype})"
                rows.append(result.row(name, weights, label))
                say(rows[-1])
    SECTION.publish(section(rows, args, len(text)), args.update)


if __name__ == "__main__":
    main()
