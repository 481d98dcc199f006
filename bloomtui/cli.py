"""Command line: the app (default), and headless `generate`, `info`, `demo-model` and `download`."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

from bloomtui import __version__
from bloomtui.errors import BloomtuiError, BudgetError, CancelRequested, UsageError
from bloomtui.openmp import apply_defaults as apply_openmp_defaults
from bloomtui.remote import is_remote_url
from bloomtui.remote.cli import add_remote_options, generate_remote, info_remote, remote_options
from bloomtui.sizes import format_size, parse_size

COMMANDS = ("generate", "perplexity", "prepare", "info", "demo-model", "download", "app")
MODEL_HELP = "model folder, Hugging Face repo id in the local cache, or http(s) URL of an OpenAI-compatible server"
_SIZE_OPTIONS = ("--ram-budget",)

apply_openmp_defaults()  # before anything imports torch; see bloomtui/openmp.py


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one `error: ...` line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog.split()[-1] if ' ' in self.prog else 'bloomtui'}: {message}")


def _join_negative_sizes(args: list[str]) -> list[str]:
    """`--ram-budget -5GB` as `--ram-budget=-5GB`: argparse takes a value starting with `-` for an option
    (unless it is a plain number), which would hide the budget's own error behind "expected one argument"."""
    out: list[str] = []
    for arg in args:
        if out and out[-1] in _SIZE_OPTIONS and re.match(r"-[0-9.]", arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ram-budget",
        type=str,
        metavar="SIZE",
        help="RAM for weights and stream buffers, e.g. 800MB or 12GiB (default: 60%% of available memory); "
        "blocks that do not fit are streamed from disk each token",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        help="compute dtype (default: the checkpoint's; fp16 runs in float32)",
    )
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's choice)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bloomtui",
        description="Run BLOOM language models one transformer block at a time, streaming from disk what does "
        "not fit in RAM. With no command, opens the terminal app.",
        epilog="Examples:\n"
        "  bloomtui                                   open the app (offers a demo model if none is found)\n"
        "  bloomtui bigscience/bloom-560m             open the app on a model in the HF cache\n"
        "  bloomtui --demo --ram-budget 20MB          the app on the built-in demo (see: bloomtui app --help)\n"
        "  bloomtui generate ./bloom-560m 'Hello' --max-new-tokens 20\n"
        "  bloomtui demo-model ./demo --preset small  write a random-weight model to try things\n"
        "  bloomtui info ./bloom-560m --ram-budget 1GB\n"
        "  bloomtui http://gpu-box:8000               the app on a served BLOOM (vLLM, TGI, transformers serve)\n"
        "  bloomtui generate http://gpu-box:8000 'Hello' --max-new-tokens 20",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bloomtui {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    app = sub.add_parser("app", help="open the terminal app (the default command)")
    app.add_argument("model", nargs="?", help=MODEL_HELP)
    app.add_argument(
        "--demo", action="store_true", help="open the built-in demo model (small, trained on the Python docs)"
    )
    app.add_argument(
        "--draft",
        metavar="MODEL|prompt-lookup",
        help="speculative decoding for this session (the saved setting otherwise; f2 changes it): "
        "'prompt-lookup', the shipped 'trained-draft' (for --demo), or a small BLOOM with the same tokenizer",
    )
    _model_options(app)
    add_remote_options(app)

    gen = sub.add_parser("generate", help="generate text headlessly; text on stdout, progress on stderr")
    gen.add_argument("model", help=MODEL_HELP)
    gen.add_argument("prompt", help="the prompt; '-' reads it from stdin")
    gen.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="tokens to generate (default 64)")
    mode = gen.add_mutually_exclusive_group()
    mode.add_argument("--greedy", action="store_true", help="always take the most likely token (the default)")
    mode.add_argument("--temperature", type=float, metavar="T", help="sample with this temperature (> 0)")
    gen.add_argument("--top-k", type=int, default=0, metavar="K", help="sample among the K most likely tokens")
    gen.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass, in (0, 1]")
    gen.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R", help="transformers-style, 1 = off")
    gen.add_argument("--seed", type=int, metavar="S", help="random seed for reproducible sampling")
    gen.add_argument("--stop", action="append", default=[], metavar="STR", help="stop before this string (repeatable)")
    gen.add_argument("--ignore-eos", action="store_true", help="keep going after the end-of-text token")
    gen.add_argument("--json", action="store_true", help="print one JSON object per engine event instead of text")
    gen.add_argument(
        "--draft",
        metavar="MODEL|prompt-lookup",
        help="speculative decoding: a small BLOOM with the same tokenizer (a folder, cached repo id, or the shipped "
        "'trained-draft'), held fully resident (its bytes are taken from --ram-budget), or 'prompt-lookup' "
        "(n-grams of the text so far) proposes tokens the model "
        "verifies several per pass over its weights; greedy output is unchanged, sampled output keeps the "
        "model's distribution (speculative sampling)",
    )
    gen.add_argument("--draft-tokens", type=int, metavar="K", help="tokens drafted per pass (default: adaptive, 1..8)")
    _model_options(gen)
    add_remote_options(gen)

    ppl = sub.add_parser(
        "perplexity",
        help="perplexity of a UTF-8 text file under a model",
        description="Score a text file: the text is split into consecutive windows of --context tokens, each "
        "scored as transformers' BloomForCausalLM(labels=ids).loss; prints perplexity, tokens, mean NLL, seconds.",
    )
    ppl.add_argument("model", help="model folder or Hugging Face repo id in the local cache")
    ppl.add_argument("file", help="a UTF-8 text file")
    ppl.add_argument("--context", type=int, default=1024, metavar="N", help="tokens per window (default 1024)")
    ppl.add_argument("--json", action="store_true", help="print one JSON object with the result")
    _model_options(ppl)

    prep = sub.add_parser(
        "prepare",
        help="write a compressed copy of a model (int8/int4 weights, one file per block) that streams faster",
        description="Rewrite MODEL into a new folder OUT: one page-aligned safetensors file per block, the four "
        "matrices of each block in bf16, int8 (per channel) or int4 (per group), embeddings/head int8 per row. "
        "MODEL is never written to; OUT is built as OUT.partial and renamed at the end.",
    )
    prep.add_argument("model", help="model folder or Hugging Face repo id in the local cache")
    prep.add_argument("out", help="new folder to write")
    prep.add_argument("--weights", required=True, choices=("bf16", "int8", "int4"), help="how to store the matrices")
    prep.add_argument(
        "--group-size",
        type=int,
        choices=(32, 64, 128, 256),
        help="int4 inputs per scale (default 128, smaller when the hidden size needs it)",
    )
    prep.add_argument("--force", action="store_true", help="replace OUT if it is an earlier prepared folder")

    info = sub.add_parser("info", help="show a model's config, layout, sizes and what a budget keeps resident")
    info.add_argument("model", help=MODEL_HELP + " (a server: lists the served models)")
    info.add_argument("--json", action="store_true", help="print JSON")
    _model_options(info)
    add_remote_options(info)

    from bloomtui import demo

    dm = sub.add_parser(
        "demo-model", help="write a demo BLOOM checkpoint: random weights (noise) or the shipped trained models"
    )
    dm.add_argument("directory", help="folder to create (must not exist or be empty)")
    dm.add_argument(
        "--preset",
        default="tiny",
        choices=demo.ALL_PRESETS,
        help="random-weight shape, or a shipped trained model: trained, trained-draft (default tiny)",
    )
    dm.add_argument("--layout", default="safetensors", choices=demo.LAYOUTS, help="file layout (default safetensors)")
    dm.add_argument(
        "--dtype", choices=tuple(demo.DTYPES), help="weight dtype (default float16; bfloat16 for the trained ones)"
    )
    dm.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    dm.add_argument("--init-std", type=float, default=0.02, help="std of the random weights (default 0.02)")
    dm.add_argument("--untied", action="store_true", help="store a separate lm_head.weight")
    dm.add_argument("--post-ln", action="store_true", help="set apply_residual_connection_post_layernorm")
    dm.add_argument("--force", action="store_true", help="replace the files of an earlier demo model there")

    dl = sub.add_parser("download", help="download a BLOOM model from the Hugging Face hub into its cache")
    dl.add_argument("repo_id", help="e.g. bigscience/bloom-560m")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (args_list[0] not in COMMANDS and args_list[0] not in ("-h", "--help", "--version")):
        args_list.insert(0, "app")
    try:
        args = build_parser().parse_args(_join_negative_sizes(args_list))
        return _dispatch(args)
    except BloomtuiError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, CancelRequested):
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our stdout went away (e.g. `| head`): stop quietly, as Unix tools do.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps interpreter shutdown from flushing into the pipe
        return 141


def _engine_options(args: argparse.Namespace):  # noqa: ANN202
    from bloomtui.engine import EngineOptions

    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    budget = parse_size(args.ram_budget) if args.ram_budget is not None else None
    return EngineOptions(ram_budget=budget, dtype=args.dtype, threads=args.threads)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "generate":
        return _generate(args)
    if args.command == "perplexity":
        return _perplexity(args)
    if args.command == "prepare":
        return _prepare(args)
    if args.command == "info":
        return _info(args)
    if args.command == "demo-model":
        return _demo_model(args)
    if args.command == "download":
        from bloomtui.engine.hub import download_model

        print(download_model(args.repo_id))
        return 0
    from bloomtui.tui.app import run_app

    if args.demo and args.model:
        raise UsageError("give a MODEL or --demo, not both")
    # A server URL may also be typed in the model picker later, so the remote options always go along.
    remote = remote_options(args, local_allowed=not is_remote_url(args.model))
    return run_app("@demo" if args.demo else args.model, _engine_options(args), remote, args.draft)


def _sampling(args: argparse.Namespace):  # noqa: ANN202
    from bloomtui.engine import SamplingParams

    return SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature if args.temperature is not None else 0.0,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        stop=tuple(args.stop),
        ignore_eos=args.ignore_eos,
    )


def _generate(args: argparse.Namespace) -> int:
    params = _sampling(args)  # validate options before any slow loading
    if args.temperature is not None and args.temperature == 0:
        raise UsageError("--temperature must be > 0 (use --greedy for argmax)")
    draft_spec = _draft_spec(args)
    if is_remote_url(args.model):
        if draft_spec is not None:
            raise UsageError("--draft works with local models only")
        return generate_remote(args, params)
    options = _engine_options(args)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt:
        raise UsageError("the prompt is empty")

    from bloomtui.engine import Engine, events
    from bloomtui.engine.drafting import PROMPT_LOOKUP, DraftSpec, budget_after_draft, open_draft
    from bloomtui.progress import StatusLine, finish_generation

    status = StatusLine()
    cancel = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: cancel.set())

    def on_event(event: events.Event) -> None:
        if args.json:
            print(json.dumps(event.to_json(), ensure_ascii=False), flush=True)
            return
        status(event)
        if isinstance(event, events.TokenGenerated) and event.text:
            status.clear()
            sys.stdout.write(event.text)
            sys.stdout.flush()

    from bloomtui.engine.memory_guard import fit_budget

    if options.ram_budget is not None and (warning := fit_budget(options.ram_budget)[1]):
        print(f"warning: {warning}", file=sys.stderr)
    draft_engine = None
    if draft_spec is not None and args.draft != PROMPT_LOOKUP:
        draft_engine = open_draft(args.draft, options)
        draft_spec = DraftSpec(draft_engine, draft_spec.tokens)
        options = budget_after_draft(options, draft_engine)
    try:
        try:
            engine = Engine.open(args.model, options, on_event=on_event, cancel=cancel)
        except BudgetError as exc:
            if draft_engine is None:
                raise
            used = format_size(draft_engine.model_plan.plan.total_bytes)
            raise BudgetError(f"{exc.message} (--ram-budget less the draft model's {used})") from None
        try:
            result = engine.generate(prompt, params, on_event=on_event, cancel=cancel, draft=draft_spec)
        finally:
            engine.close()
            status.clear()
    finally:
        if draft_engine is not None:
            draft_engine.close()
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
    from bloomtui.engine.drafting import DraftSpec

    if args.draft is None:
        if args.draft_tokens is not None:
            raise UsageError("--draft-tokens needs --draft")
        return None
    return DraftSpec(None, args.draft_tokens)


def _draft_summary(result, spec) -> str:  # noqa: ANN001
    if spec is None or not result.passes:
        return ""
    rate = f"{result.acceptance:.0%}" if result.acceptance is not None else "-"
    return (
        f", draft {spec.name}: {result.draft_accepted}/{result.draft_proposed} accepted ({rate}), "
        f"{result.new_tokens / result.passes:.2f} tokens/pass"
    )


def read_text_file(name: str) -> str:
    """A UTF-8 text file's contents, or a UsageError saying why it is not one."""
    from pathlib import Path

    path = Path(name)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{name}: is a folder, not a text file") from None
    except OSError as exc:
        raise UsageError(f"{name}: cannot read ({exc.strerror})") from None
    if not data.strip():
        raise UsageError(f"{name}: the file is empty")
    if b"\0" in data:
        raise UsageError(f"{name}: a binary file (it contains NUL bytes), not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{name}: not UTF-8 text (invalid byte at offset {exc.start})") from None


def _perplexity(args: argparse.Namespace) -> int:
    if args.context < 2:
        raise UsageError(f"--context must be at least 2 tokens, got {args.context}")
    text = read_text_file(args.file)
    options = _engine_options(args)

    from bloomtui.engine import Engine
    from bloomtui.progress import ScoreProgress, StatusLine

    cancel = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: cancel.set())
    status = StatusLine()
    engine = Engine.open(args.model, options, on_event=status, cancel=cancel)
    status.clear()
    try:
        with ScoreProgress() as progress:
            result = engine.perplexity(text, args.context, on_event=progress, cancel=cancel)
    finally:
        engine.close()
    if args.json:
        keys = ("perplexity", "tokens", "nll", "seconds", "windows")
        print(json.dumps({key: getattr(result, key) for key in keys}))
        return 0
    print(f"perplexity  {result.perplexity:.4f}")
    print(f"tokens      {result.tokens} predicted, in {result.windows} window(s) of up to {args.context}")
    print(f"mean NLL    {result.nll:.6f} nats/token")
    print(f"seconds     {result.seconds:.2f} ({result.tokens / result.seconds:.0f} tokens/s)")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bloomtui.engine.prepare import prepare
    from bloomtui.progress import prepare_progress

    cancel = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: cancel.set())
    with prepare_progress() as on_progress:
        out = prepare(args.model, Path(args.out), args.weights, args.group_size, args.force, on_progress, cancel.is_set)
    print(f"wrote {out} ({args.weights}); open it like any model: bloomtui info {out}")
    return 0


def _info(args: argparse.Namespace) -> int:
    if is_remote_url(args.model):
        return info_remote(args)
    from bloomtui.engine.generate import ModelPlan, prefill_path

    mp = ModelPlan.make(args.model, _engine_options(args))
    ckpt, plan, cfg = mp.checkpoint, mp.plan, mp.checkpoint.config
    disk_stream = sum(ckpt.block_nbytes(i) for i in plan.streamed_blocks)
    if not plan.head_resident:
        disk_stream += sum(ref.nbytes for ref in ckpt.head_refs)
    data = {
        "path": str(mp.path),
        "layout": ckpt.layout,
        "files": len(ckpt.files),
        "file_bytes": ckpt.total_file_bytes,
        "hidden_size": cfg.hidden_size,
        "n_head": cfg.n_head,
        "n_layer": cfg.n_layer,
        "vocab_size": cfg.vocab_size,
        "post_ln_residual": cfg.apply_residual_connection_post_layernorm,
        "tied_head": ckpt.tied,
        "stored_dtype": str(ckpt.dtype).removeprefix("torch."),
        "compute_dtype": str(mp.dtype).removeprefix("torch."),
        "weights": ckpt.scheme.weights if ckpt.scheme else "original",
        "group_size": ckpt.scheme.group_size if ckpt.scheme else None,
        "block_bytes": ckpt.block_nbytes(),
        "bytes_per_token_all_streamed": sum(ckpt.block_nbytes(i) for i in range(ckpt.n_blocks))
        + sum(ref.nbytes for ref in ckpt.head_refs),
        "prefill": prefill_path(mp.dtype),
        "ram_budget": plan.budget,
        "resident_blocks": sorted(plan.resident_blocks),
        "streamed_blocks": list(plan.streamed_blocks),
        "head_resident": plan.head_resident,
        "resident_bytes": plan.resident_bytes,
        "buffer_bytes": plan.buffer_bytes,
        "streamed_bytes_per_token": disk_stream,
        "budget_warning": mp.budget_warning,
    }
    if mp.budget_warning:
        print(f"warning: {mp.budget_warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    n = cfg.n_layer
    print(f"model       {mp.path}")
    print(f"layout      {ckpt.layout}, {len(ckpt.files)} file(s), {format_size(ckpt.total_file_bytes)}")
    print(
        f"shape       {n} blocks, hidden {cfg.hidden_size}, {cfg.n_head} heads, vocab {cfg.vocab_size}, "
        f"{'tied' if ckpt.tied else 'untied'} head{', post-LN residual' if data['post_ln_residual'] else ''}"
    )
    print(f"dtype       stored {data['stored_dtype']}, computed in {data['compute_dtype']}")
    if ckpt.scheme:
        group = f", group size {ckpt.scheme.group_size}" if ckpt.scheme.group_size else ""
        print(f"weights     {ckpt.scheme.weights}{group} (prepared by bloomtui)")
    print(f"prefill     {data['prefill']}")
    print(f"per block   {format_size(ckpt.block_nbytes())} on disk, {format_size(plan.block_bytes)} in RAM")
    lowered = " (lowered to what this machine can hold)" if mp.budget_warning else ""
    print(f"RAM budget  {format_size(plan.budget)}{lowered}")
    print(
        f"resident    {len(plan.resident_blocks)}/{n} blocks, "
        f"LM head {'resident' if plan.head_resident else 'streamed'}"
        f" ({format_size(plan.resident_bytes)} + {format_size(plan.buffer_bytes)} stream buffers)"
    )
    streamed = plan.streamed_blocks
    print(f"streamed    {len(streamed)} blocks{': ' + _ranges(streamed) if streamed else ''}")
    print(
        f"disk/token  {format_size(disk_stream)} read per generated token with this budget; "
        f"{format_size(data['bytes_per_token_all_streamed'])} with every block streamed"
    )
    return 0


def _ranges(indices: Sequence[int]) -> str:
    parts, start = [], None
    for k, i in enumerate(indices):
        if start is None:
            start = i
        if k + 1 == len(indices) or indices[k + 1] != i + 1:
            parts.append(str(start) if start == i else f"{start}-{i}")
            start = None
    return ", ".join(parts)


def _demo_model(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bloomtui import demo

    def progress(text: str) -> None:
        print(text, file=sys.stderr)

    path = demo.write_demo_model(
        Path(args.directory),
        preset=args.preset,
        layout=args.layout,
        dtype=args.dtype,
        seed=args.seed,
        init_std=args.init_std,
        untied=args.untied,
        post_ln_residual=args.post_ln,
        overwrite=args.force,
        on_progress=progress,
    )
    trained = args.preset in demo.demo_models.NAMES
    note = "A small model trained on the Python docs." if trained else "Its weights are random: the text is noise."
    print(f"wrote {path} (preset {args.preset}, layout {args.layout}). {note}")
    return 0
