"""`generate`'s several sequences: the prompts (PROMPT or --prompts FILE) times --samples, and their output.

With one sequence the text streams to stdout as it comes. With several, tokens of all of them arrive every
pass, so each sequence's text is printed whole, under a label, as soon as it ends; the status line shows the
passes meanwhile, and stderr gets a line per sequence and the aggregate rate.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bloomtui.commands.engine_options import kv_warning as shared_kv_warning
from bloomtui.commands.perplexity import read_text_file
from bloomtui.errors import UsageError
from bloomtui.sizes import format_size

if TYPE_CHECKING:
    from bloomtui.engine import events
    from bloomtui.engine.decode.sampling import SamplingParams

MAX_SEQUENCES = 256
"""More sequences than this in one run is a mistake (each holds a KV cache), not a batch."""


@dataclass(frozen=True)
class Sequences:
    """What one `generate` runs: prompts[i // samples], sample i % samples."""

    prompts: list[str]
    samples: int
    from_file: bool

    @property
    def count(self) -> int:
        return len(self.prompts) * self.samples

    def label(self, sequence: int) -> str:
        prompt, sample = divmod(sequence, self.samples)
        parts = []
        if self.from_file:
            head = self.prompts[prompt].strip().replace("\n", " ")
            head = head if len(head) <= 40 else head[:39] + "…"
            parts.append(f"prompt {prompt + 1}/{len(self.prompts)}: {head}")
        if self.samples > 1:
            parts.append(f"sample {sample + 1}/{self.samples}")
        return ", ".join(parts)

    def expand(self, params: SamplingParams) -> tuple[list[str], list[SamplingParams]]:
        """One (prompt, params) per sequence; sample i of a prompt uses seed S+i."""
        from bloomtui.engine.sampling_params import sample_params

        per_sample = sample_params(params, self.samples)
        return [p for p in self.prompts for _ in per_sample], [q for _ in self.prompts for q in per_sample]


def check_sequences(args: argparse.Namespace) -> None:
    """The PROMPT / --prompts / --samples combination, checked before anything loads."""
    if args.prompts is not None and args.prompt is not None:
        raise UsageError("give a PROMPT or --prompts FILE, not both")
    if args.prompts is None and args.prompt is None:
        raise UsageError("give a PROMPT (or '-' to read it from stdin), or --prompts FILE")
    if args.samples is not None and not 1 <= args.samples <= MAX_SEQUENCES:
        raise UsageError(f"--samples must be in 1..{MAX_SEQUENCES}, got {args.samples}")
    if args.prompts == "-" and args.prompt == "-":
        raise UsageError("stdin can hold the prompt or the prompts file, not both")


def read_sequences(args: argparse.Namespace) -> Sequences:
    samples = args.samples or 1
    if args.prompts is None:
        prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
        if not prompt:
            raise UsageError("the prompt is empty")
        return Sequences([prompt], samples, from_file=False)
    if args.prompts == "-":
        text = sys.stdin.read()
    else:
        text = read_text_file(args.prompts)
    prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UsageError(f"{'stdin' if args.prompts == '-' else args.prompts}: no prompts (one per line)")
    if len(prompts) * samples > MAX_SEQUENCES:
        raise UsageError(f"{len(prompts)} prompts x {samples} samples is more than {MAX_SEQUENCES} sequences")
    return Sequences(prompts, samples, from_file=True)


def kv_warning(engine, prompts: list[str], max_new_tokens: int) -> str | None:  # noqa: ANN001 - an Engine
    """Several sequences each hold a KV cache: say so when theirs, at full length, exceed the free memory."""
    need = sum(engine.kv_bytes(len(engine.encode(p)) + max_new_tokens) for p in prompts)
    return shared_kv_warning(
        need,
        f"{len(prompts)} sequences of up to {max_new_tokens} new tokens",
        "they may run out of memory before they end (fewer --samples or prompts, or a lower --max-new-tokens)",
    )


def print_sequence(result: events.Done | events.Cancelled, sequences: Sequences) -> None:
    """A finished sequence's text on stdout under its label (several sequences only)."""
    sys.stdout.write(f"── {sequences.label(result.sequence)} ──\n{result.text}")
    if not result.text.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()


def finish_many(results: list[events.Done | events.Cancelled], sequences: Sequences, as_json: bool) -> int:
    """Summary lines on stderr: one per sequence, then the aggregate. Exit 130 if any was cancelled."""
    from bloomtui.engine import events

    done = [r for r in results if isinstance(r, events.Done)]
    cancelled = len(results) - len(done)
    if as_json:
        return 130 if cancelled else 0
    for r in results:
        what = (
            f"{r.new_tokens} tokens ({r.stop_reason}, {r.passes} passes)"
            if isinstance(r, events.Done)
            else (f"cancelled after {r.new_tokens} tokens")
        )
        print(f"{sequences.label(r.sequence)}: {what}", file=sys.stderr)
    if done:
        tokens = sum(r.new_tokens for r in results)
        wall = max(r.prefill_seconds + r.decode_seconds for r in done)
        decode = max(r.decode_seconds for r in done)
        after_first = sum(max(0, r.new_tokens - 1) for r in done)
        rate = f"{after_first / decode:.2f} tokens/s aggregate" if decode > 0 else "-"
        last = max(done, key=lambda r: r.bytes_read)
        print(
            f"{len(results)} sequences, {tokens} tokens in {wall:.2f} s, {rate}, prefill "
            f"{max(r.prefill_seconds for r in done):.2f} s, read {format_size(last.bytes_read)}, "
            f"peak RSS {format_size(max(r.peak_rss for r in done))}",
            file=sys.stderr,
        )
    return 130 if cancelled else 0
