"""`bloomtui serve MODEL`: an OpenAI-compatible API over the engine, concurrent requests sharing passes.

Binds 127.0.0.1 unless told otherwise. Sampling fields a request leaves out come from the model's
generation_config.json (as vLLM's --generation-config auto), then from the API's defaults. SIGINT/SIGTERM: stop
accepting, end the running requests within a block (each stream gets its last chunk, finish_reason "abort",
its usage and [DONE]), exit 0.
"""

from __future__ import annotations

import argparse
import os
import sys

from bloomtui.commands.engine_options import engine_options, kv_warning
from bloomtui.engine.weights.generation_config import GenerationDefaults
from bloomtui.errors import UsageError
from bloomtui.sizes import format_size

API_KEY_VARIABLE = "BLOOMTUI_API_KEY"
DEFAULT_MAX_CONTEXT = 2048
"""BLOOM's training context; ALiBi runs past it, but quality falls off (raise it with --max-context)."""


def add_serve_parser(sub: argparse._SubParsersAction, model_options) -> None:  # noqa: ANN001 - cli's _model_options
    serve = sub.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API (concurrent requests share each pass)",
        description="Serve MODEL on /v1/completions, /v1/chat/completions, /v1/models, /health and /metrics. "
        "Concurrent requests join the running batch at the next pass over the weights (continuous batching), "
        "so a streamed model serves several clients for little more than the price of one.",
    )
    serve.add_argument("model", nargs="?", help="model folder or Hugging Face repo id in the local cache (or --demo)")
    serve.add_argument("--demo", action="store_true", help="serve the built-in demo model")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    serve.add_argument("--max-batch", type=int, default=8, metavar="N", help="sequences per pass at most (8)")
    serve.add_argument(
        "--max-queue", type=int, default=64, metavar="N", help="requests waiting beyond that; more get 503 (64)"
    )
    serve.add_argument(
        "--max-context",
        type=int,
        default=DEFAULT_MAX_CONTEXT,
        metavar="TOKENS",
        help=f"prompt + completion tokens at most per sequence (default {DEFAULT_MAX_CONTEXT})",
    )
    serve.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_VARIABLE} if set; never logged)",
    )
    serve.add_argument(
        "--draft",
        metavar="MODEL|prompt-lookup",
        help="speculative decoding for every request (see generate --help); greedy output is unchanged",
    )
    serve.add_argument(
        "--draft-tree",
        metavar="auto|N|off",
        help="with --draft: token trees per request, as generate --draft-tree (default off: chains)",
    )
    serve.add_argument(
        "--generation-config",
        choices=("auto", "none"),
        default="auto",
        help="auto (default): sampling fields a request leaves out (temperature, top_p, top_k, "
        "repetition_penalty, max_tokens) take the model's generation_config.json values, as in vLLM and "
        "bloomtui generate, so a greedy model default makes an omitted temperature greedy (n > 1 still "
        "samples); none: ignore the file, use the API's defaults (temperature 1, top_p 1, max_tokens 16 for "
        "completions). A field the request sets always wins",
    )
    model_options(serve)


def defaults_line(defaults: GenerationDefaults) -> str | None:
    """The start-up line naming what the model's generation_config.json fills in, None when it sets nothing."""
    words = []
    for name, value in defaults.set_fields().items():
        if name == "do_sample":
            words.append("sampling" if value else "greedy")
        else:
            words.append(f"{'max_tokens' if name == 'max_new_tokens' else name} {value}")
    if not words:
        return None
    return (
        f"using the model's generation_config.json for fields a request omits: {', '.join(words)} "
        "(--generation-config none to turn off)"
    )


def serve(args: argparse.Namespace) -> int:
    if args.model is None:  # cli.py fills it in for --demo
        raise UsageError("give a MODEL or --demo")
    for name, low in (("port", 1), ("max_batch", 1), ("max_queue", 0), ("max_context", 2)):
        if getattr(args, name) < low:
            raise UsageError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(args, name)}")
    if args.port > 65535:
        raise UsageError(f"--port must be at most 65535, got {args.port}")
    key = args.api_key or os.environ.get(API_KEY_VARIABLE) or None
    options = engine_options(args)
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401 - checked before the model loads
    except ImportError:
        raise UsageError("bloomtui serve needs its extra: pip install 'bloomtui[serve]'") from None

    from bloomtui.engine import Engine
    from bloomtui.engine.decode.draft_spec import PROMPT_LOOKUP, DraftSpec, tree_setting
    from bloomtui.engine.decode.drafting import budget_after_draft, open_draft
    from bloomtui.progress import StatusLine
    from bloomtui.server.http import ServeOptions, build_app
    from bloomtui.server.run import run_server
    from bloomtui.server.scheduler import Scheduler

    draft = draft_engine = None
    tree = tree_setting(args.draft_tree)
    if args.draft is None and tree is not None:
        raise UsageError("--draft-tree needs --draft")
    DraftSpec(None, None, tree)  # a bad --draft-tree is refused before anything loads
    if args.draft == PROMPT_LOOKUP:
        draft = DraftSpec(None, None, tree)
    elif args.draft is not None:
        draft_engine = open_draft(args.draft, options)
        draft = DraftSpec(draft_engine, None, tree)
        options = budget_after_draft(options, draft_engine.model_plan)
    status = StatusLine()
    try:
        engine = Engine.open(args.model, options, on_event=status)
        status.clear()
        mp = engine.model_plan
        plan = mp.plan
        model_id = mp.path.name
        engine.tokenizer.transformers  # noqa: B018 - chat requests use its chat template: loaded now, not in one
        scheduler = Scheduler(engine, args.max_batch, args.max_queue, draft)
        defaults = mp.generation if args.generation_config == "auto" else GenerationDefaults()
        app = build_app(engine, scheduler, ServeOptions(model_id, args.max_batch, args.max_context, key, defaults))
        streamed = f"{len(plan.streamed_blocks)}/{plan.n_blocks} blocks streamed" if plan.streams else "all resident"
        print(
            f"bloomtui serve: {model_id} ({mp.path}), {str(mp.dtype).removeprefix('torch.')}, budget "
            f"{format_size(plan.budget)}, {streamed}; up to {args.max_batch} sequences per pass, "
            f"{args.max_queue} waiting, context {args.max_context}"
            + (f", draft {draft.name}" + (f" (tree {draft.tree})" if draft.trees else "") if draft else "")
            + ("; API key required" if key else ""),
            file=sys.stderr,
        )
        if line := defaults_line(defaults):
            print(line, file=sys.stderr)
        need = args.max_batch * engine.kv_bytes(args.max_context)
        what = f"{args.max_batch} sequences of {args.max_context} tokens"
        if warning := kv_warning(need, what, "lower --max-batch or --max-context"):
            print(f"warning: {warning}", file=sys.stderr)
        stopped = False
        try:
            stopped = run_server(app, scheduler, args.host, args.port)
        finally:
            if stopped:  # else the scheduler is still in a pass: leave the weights to the process's exit
                engine.close()
    finally:
        if draft_engine is not None:
            draft_engine.close()
    return 0  # the `bloomtui` command then leaves without the interpreter's teardown (cli.run)
