"""`bloomtui generate MODEL PROMPT`: the continuation on stdout, progress and a summary on stderr.

With --samples N or --prompts FILE, several sequences share each pass (sequences.py).

Options the user leaves out take the model's generation_config.json values where it has them, then
bloomtui's defaults (SamplingParams). A server (a URL) decodes with its own defaults.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from bloomtui.commands.engine_options import engine_options
from bloomtui.commands.sequences import check_sequences, finish_many, kv_warning, print_sequence, read_sequences
from bloomtui.errors import BudgetError, UsageError
from bloomtui.remote import is_remote_url
from bloomtui.remote.cli import generate_remote
from bloomtui.sizes import format_size

SAMPLING_OPTIONS = ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty")
"""Options whose default may come from the model (argparse default None = not given)."""


def add_sampling_options(gen: argparse.ArgumentParser) -> None:
    gen.add_argument(
        "--max-new-tokens",
        type=int,
        metavar="N",
        help="tokens to generate (default: the model's generation_config.json, else 64)",
    )
    mode = gen.add_mutually_exclusive_group()
    mode.add_argument(
        "--greedy",
        action="store_true",
        help="always take the most likely token (the default, unless the model's generation_config.json samples "
        "or --samples asks for more than one)",
    )
    mode.add_argument("--temperature", type=float, metavar="T", help="sample with this temperature (> 0)")
    gen.add_argument(
        "--top-k", type=int, metavar="K", help="sample among the K most likely tokens (0 = off; implies sampling)"
    )
    gen.add_argument(
        "--top-p", type=float, metavar="P", help="nucleus sampling mass, in (0, 1] (1 = off; implies sampling)"
    )
    gen.add_argument(
        "--repetition-penalty",
        type=float,
        metavar="R",
        help="transformers-style, 1 = off (default: the model's generation_config.json, else 1)",
    )
    gen.add_argument("--seed", type=int, metavar="S", help="random seed for reproducible sampling")
    gen.add_argument("--stop", action="append", default=[], metavar="STR", help="stop before this string (repeatable)")
    gen.add_argument("--ignore-eos", action="store_true", help="keep going after the end-of-text token")


CLI_FALLBACK = {
    "max_new_tokens": 64,
    "do_sample": False,
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "repetition_penalty": 1.0,
}
"""What an option neither the user nor the model sets comes to: greedy, 64 tokens, no filters or penalty."""


def sampling_params(args: argparse.Namespace, defaults=None):  # noqa: ANN001, ANN201 - GenerationDefaults in, SamplingParams out
    """The options as SamplingParams, the model's `defaults` (generation_config.json) and then bloomtui's filling
    in what was not given; raises UsageError on bad values (call it without `defaults` before loading).

    --temperature, --top-k or --top-p ask for sampling (a filter alone would otherwise be dropped in silence
    where the model's default is greedy); --samples N > 1 samples as the app's Samples and serve's `n` do."""
    from bloomtui.engine.weights.generation_config import SAMPLES_NEED_SAMPLING, GenerationDefaults

    if args.temperature is not None and not args.temperature > 0:
        raise UsageError(f"--temperature must be > 0 (use --greedy for argmax), got {args.temperature:g}")
    # Only a filter that filters asks for sampling: --top-k 0 and --top-p 1 are the documented "off".
    on = {"top_k": args.top_k not in (None, 0), "top_p": args.top_p not in (None, 1.0)}
    filters = [f"--{name.replace('_', '-')}" for name, given in on.items() if given]
    if args.greedy and filters:
        verb = "apply" if len(filters) > 1 else "applies"
        raise UsageError(f"{' and '.join(filters)} {verb} only when sampling: drop {filters[0]} or --greedy")
    chosen = {name: getattr(args, name) for name in SAMPLING_OPTIONS}
    chosen["do_sample"] = False if args.greedy else True if args.temperature is not None or filters else None
    samples = getattr(args, "samples", None) or 1
    try:
        return (defaults or GenerationDefaults()).resolve(
            chosen, CLI_FALLBACK, samples, seed=args.seed, stop=tuple(args.stop), ignore_eos=args.ignore_eos
        )
    except UsageError as exc:
        if exc.message == SAMPLES_NEED_SAMPLING.format(n=samples):
            raise UsageError(f"--samples {samples} with --greedy: {exc.message}; drop one of them") from None
        raise


def generate(args: argparse.Namespace) -> int:
    params = sampling_params(args)  # validate options before any slow loading
    draft_spec = _draft_spec(args)
    check_sequences(args)
    if is_remote_url(args.model):
        if draft_spec is not None:
            raise UsageError("--draft works with local models only")
        if args.prompts is not None or (args.samples or 1) > 1:
            raise UsageError("--prompts and --samples work with local models only")
        return generate_remote(args, params)
    options = engine_options(args)
    sequences = read_sequences(args)
    many = sequences.count > 1

    from bloomtui.engine import Engine, events
    from bloomtui.engine.decode.draft_spec import PROMPT_LOOKUP, DraftSpec
    from bloomtui.engine.decode.drafting import budget_after_draft, open_draft
    from bloomtui.progress import StatusLine, finish_generation

    status = StatusLine(text_stream=sys.stdout)
    cancel = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: cancel.set())

    def on_event(event: events.Event) -> None:
        if args.json:
            print(json.dumps(event.to_json(), ensure_ascii=False), flush=True)
            return
        status(event)
        if many:
            if isinstance(event, events.Done | events.Cancelled):
                status.clear()
                print_sequence(event, sequences)
        elif isinstance(event, events.TokenGenerated) and event.text:
            status.text_follows()
            sys.stdout.write(event.text)
            sys.stdout.flush()

    from bloomtui.engine.plan.memory_guard import fit_budget

    if options.ram_budget is not None and (warning := fit_budget(options.ram_budget)[1]):
        print(f"warning: {warning}", file=sys.stderr)
    draft_engine = None
    if draft_spec is not None and args.draft != PROMPT_LOOKUP:
        draft_engine = open_draft(args.draft, options)
        draft_spec = DraftSpec(draft_engine, draft_spec.tokens, draft_spec.tree)
        options = budget_after_draft(options, draft_engine.model_plan)
    try:
        try:
            engine = Engine.open(args.model, options, on_event=on_event, cancel=cancel)
        except BudgetError as exc:
            if draft_engine is None:
                raise
            used = format_size(draft_engine.model_plan.plan.total_bytes)
            raise BudgetError(f"{exc.message} (--ram-budget less the draft model's {used})") from None
        if engine.model_plan.format_warning:
            status.clear()
            print(f"warning: {engine.model_plan.format_warning}", file=sys.stderr)
        params = sampling_params(args, engine.model_plan.generation)
        prompts, per_sequence = sequences.expand(params)
        if many and (warning := kv_warning(engine, prompts, params.max_new_tokens)):
            status.clear()
            print(f"warning: {warning}", file=sys.stderr)
        try:
            results = engine.generate_many(prompts, per_sequence, on_event=on_event, cancel=cancel, draft=draft_spec)
        finally:
            engine.close()
            status.clear()
    finally:
        if draft_engine is not None:
            draft_engine.close()
    if many:
        return finish_many(results, sequences, args.json)
    result = results[0]
    return finish_generation(
        result,
        args.json,
        lambda done: (
            f"{done.new_tokens} tokens ({done.stop_reason}), prefill {done.prefill_seconds:.2f} s, "
            f"{done.tokens_per_second:.2f} tokens/s, read {format_size(done.bytes_read)}, "
            f"peak RSS {format_size(done.peak_rss)}" + _draft_summary(done, draft_spec)
        ),
    )


def _draft_spec(args: argparse.Namespace):  # noqa: ANN202
    """The draft asked for, checked before anything loads (its model is opened later)."""
    from bloomtui.engine.decode.draft_spec import DraftSpec, tree_setting

    if args.draft is None:
        if args.draft_tokens is not None or args.draft_tree is not None:
            raise UsageError("--draft-tokens and --draft-tree need --draft")
        return None
    return DraftSpec(None, args.draft_tokens, tree_setting(args.draft_tree))


def _draft_summary(result, spec) -> str:  # noqa: ANN001
    if spec is None or not result.passes:
        return ""
    rate = f"{result.acceptance:.0%}" if result.acceptance is not None else "-"
    return (
        f", draft {spec.name}: {result.draft_accepted}/{result.draft_proposed} accepted ({rate}), "
        f"{result.new_tokens / result.passes:.2f} tokens/pass"
        + (f", tree {result.draft_tree}" if result.draft_tree else "")
    )
