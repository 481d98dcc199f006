"""Command line: the app (default), and headless `generate`, `perplexity`, `prepare`, `info`, `serve`,
`demo-model` and `download`."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import os
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from bloomtui import __version__
from bloomtui.commands.engine_options import engine_options
from bloomtui.commands.generate import add_sampling_options
from bloomtui.commands.serve import add_serve_parser
from bloomtui.errors import BloomtuiError, CancelRequested, UsageError
from bloomtui.openmp import apply_defaults as apply_openmp_defaults
from bloomtui.remote import is_remote_url
from bloomtui.remote.cli import add_remote_options, remote_options
from bloomtui.settings import MAX_SAMPLES

COMMANDS = ("generate", "perplexity", "prepare", "info", "serve", "demo-model", "download", "measure-openmp", "app")
MODEL_HELP = "model folder, Hugging Face repo id in the local cache, or http(s) URL of an OpenAI-compatible server"
_SIZE_OPTIONS = ("--ram-budget",)
DEMO_HELP = "the built-in demo model (small, trained on the Python docs; also openable by the name 'trained')"
_AFTER_MODEL = {"generate": "prompt", "perplexity": "file"}
"""The positional that follows MODEL: with --demo, a value typed there lands in MODEL's slot (argparse fills
positionals in order) and moves over."""

apply_openmp_defaults()  # before anything imports torch; see bloomtui/openmp.py


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one `error: ...` line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog.split()[-1] if ' ' in self.prog else 'bloomtui'}: {message}")


def _refuse_mistyped_command(args: list[str]) -> None:
    """`bloomtui generat DIR hi` would open the app on a model named "generat": name the command instead."""
    if args[0] != "app" or len(args) < 2 or args[1].startswith("-") or args[1] in COMMANDS:
        return
    word = args[1]
    close = difflib.get_close_matches(word, COMMANDS, n=1, cutoff=0.75)
    if close and not os.path.exists(os.path.expanduser(word)) and not is_remote_url(word):
        raise UsageError(f"unknown command {word!r}; did you mean {close[0]!r}? (commands: {', '.join(COMMANDS)})")


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
        help="compute dtype (default: what the model's config asks for, else the checkpoint's; fp16 runs in float32)",
    )
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--reads",
        choices=("auto", "direct", "cached"),
        help="how streamed blocks are read: direct (O_DIRECT, past the page cache: no CPU copies, nothing "
        "cached) or cached (through the page cache: fast when the model fits in free memory); "
        "default auto: direct when the model does not fit in free memory and this disk reads about as fast "
        "that way (measured once per filesystem)",
    )
    p.add_argument(
        "--activations",
        choices=("auto", "exact", "int8"),
        help="how int8/int4 weights meet a decoding step's inputs: exact (fp32 inputs) or int8 (inputs quantised "
        "per block and multiplied in integers, llama.cpp's way: faster, within about 1%% of the exact "
        "product); default auto: int8 where this machine measured it faster (bloomtui info says which runs)",
    )


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
        "  bloomtui generate ./bloom-560m 'Once' --samples 4 --temperature 0.8 --seed 1\n"
        "  bloomtui demo-model ./demo --preset small  write a random-weight model to try things\n"
        "  bloomtui info ./bloom-560m --ram-budget 1GB\n"
        "  bloomtui serve ./bloom-560m                an OpenAI-compatible API on 127.0.0.1:8000\n"
        "  bloomtui http://gpu-box:8000               the app on a served BLOOM (vLLM, TGI, transformers serve)\n"
        "  bloomtui generate http://gpu-box:8000 'Hello' --max-new-tokens 20",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bloomtui {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    app = sub.add_parser("app", help="open the terminal app (the default command)")
    app.add_argument("model", nargs="?", help=MODEL_HELP)
    app.add_argument("--demo", action="store_true", help=DEMO_HELP)
    app.add_argument(
        "--draft",
        metavar="MODEL|prompt-lookup",
        help="speculative decoding for this session (the saved setting otherwise; f2 changes it): "
        "'prompt-lookup', the shipped 'trained-draft' (for --demo), or a small BLOOM with the same tokenizer",
    )
    app.add_argument(
        "--samples",
        type=int,
        choices=range(1, MAX_SAMPLES + 1),
        metavar="N",
        help="samples of each prompt written side by side for this session, 1..8 (the saved setting otherwise; "
        "f2 changes it); more than one samples even where the model's default is greedy, and keys 1..N pick the one "
        "to continue from",
    )
    _model_options(app)
    add_remote_options(app)

    gen = sub.add_parser("generate", help="generate text headlessly; text on stdout, progress on stderr")
    gen.add_argument("model", nargs="?", help=MODEL_HELP + " (or --demo)")
    gen.add_argument("--demo", action="store_true", help=DEMO_HELP)
    gen.add_argument("prompt", nargs="?", help="the prompt; '-' reads it from stdin (omit it with --prompts)")
    gen.add_argument(
        "--prompts",
        metavar="FILE",
        help="one prompt per line ('-' reads stdin; blank lines are skipped): all continue side by side, "
        "sharing each pass over the weights; every option applies to each",
    )
    gen.add_argument(
        "--samples",
        type=int,
        metavar="N",
        help="N samples of the prompt (of each prompt) side by side, sharing each pass over the weights; "
        "with --seed S, sample i uses seed S+i, as a single run with --seed S+i would (default 1)",
    )
    add_sampling_options(gen)
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
    gen.add_argument(
        "--draft-tokens", type=int, metavar="K", help="a chain of K drafted tokens per pass (implies --draft-tree off)"
    )
    gen.add_argument(
        "--draft-tree",
        metavar="auto|N|off",
        help="token trees: the draft's most likely continuations verified in one pass; 'auto' sizes the tree "
        "from the pass costs and acceptance measured as the run goes (0 nodes when drafting does not pay), N "
        "fixes it at N nodes (1..64); 'off' (default) drafts one chain (adaptive K, 1..8)",
    )
    _model_options(gen)
    add_remote_options(gen)

    add_serve_parser(sub, _model_options)

    ppl = sub.add_parser(
        "perplexity",
        help="perplexity of a UTF-8 text file under a model",
        description="Score a text file: the text is split into consecutive windows of --context tokens, each "
        "scored as transformers' BloomForCausalLM(labels=ids).loss; prints perplexity, tokens, mean NLL, seconds.",
    )
    ppl.add_argument("model", nargs="?", help="model folder or Hugging Face repo id in the local cache (or --demo)")
    ppl.add_argument("file", nargs="?", help="a UTF-8 text file")
    ppl.add_argument("--demo", action="store_true", help=DEMO_HELP)
    ppl.add_argument("--context", type=int, default=1024, metavar="N", help="tokens per window (default 1024)")
    ppl.add_argument(
        "--batch",
        type=int,
        metavar="N",
        help="windows scored per pass over the weights; the same result, fewer reads when blocks stream "
        "(default: 1 when the model is resident, else as many as the free memory holds, up to 8)",
    )
    ppl.add_argument("--json", action="store_true", help="print one JSON object with the result")
    _model_options(ppl)

    from bloomtui.commands.prepare import add_parser as add_prepare

    add_prepare(sub)

    info = sub.add_parser("info", help="show a model's config, layout, sizes and what a budget keeps resident")
    info.add_argument("model", nargs="?", help=MODEL_HELP + " (a server: lists the served models; or --demo)")
    info.add_argument("--demo", action="store_true", help=DEMO_HELP)
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument(
        "--draft",
        metavar="MODEL|prompt-lookup",
        help="plan as generate --draft would: the draft held resident, its bytes taken from --ram-budget",
    )
    _model_options(info)
    add_remote_options(info)

    from bloomtui import demo_presets

    dm = sub.add_parser(
        "demo-model", help="write a demo BLOOM checkpoint: random weights (noise) or the shipped trained models"
    )
    dm.add_argument("directory", help="folder to create (must not exist or be empty)")
    dm.add_argument(
        "--preset",
        default="tiny",
        choices=demo_presets.ALL_PRESETS,
        help="random-weight shape, or a shipped trained model: trained, trained-draft (default tiny)",
    )
    dm.add_argument(
        "--layout", default="safetensors", choices=demo_presets.LAYOUTS, help="file layout (default safetensors)"
    )
    dm.add_argument(
        "--dtype",
        choices=demo_presets.DTYPE_NAMES,
        help="weight dtype (default float16; bfloat16 for the trained ones)",
    )
    dm.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    dm.add_argument("--init-std", type=float, default=0.02, help="std of the random weights (default 0.02)")
    dm.add_argument("--untied", action="store_true", help="store a separate lm_head.weight")
    dm.add_argument("--post-ln", action="store_true", help="set apply_residual_connection_post_layernorm")
    dm.add_argument("--force", action="store_true", help="replace the files of an earlier demo model there")

    from bloomtui.commands.download import add_parser as add_download

    add_download(sub)
    from bloomtui.commands.measure_openmp import add_parser as add_measure_openmp

    add_measure_openmp(sub)
    return parser


def run() -> NoReturn:
    """The `bloomtui` command: main(), then exit. Once torch is loaded, the interpreter's teardown takes 1-2 s
    (torch unregistering its operators one by one) after the work is done: a command's files are closed and
    its threads finished or disposable by then, so it leaves at once instead."""
    status = main()
    if "torch" in sys.modules:
        with contextlib.suppress(OSError):  # a reader gone away (`| head`): nothing left to tell it
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)
    raise SystemExit(status)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (args_list[0] not in COMMANDS and args_list[0] not in ("-h", "--help", "--version")):
        args_list.insert(0, "app")
    try:
        _refuse_mistyped_command(args_list)
        args = _parse(build_parser(), _join_negative_sizes(args_list))
        if args.command != "app":
            _model_or_demo(args)
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


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """parse_args, except that `generate MODEL --option X PROMPT` works: argparse gives an optional positional
    its (empty) match with the first one and would call a prompt after options unrecognized."""
    args, extra = parser.parse_known_args(argv)
    if args.command == "generate" and args.prompt is None and len(extra) == 1 and not extra[0].startswith("--"):
        args.prompt = extra.pop()
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _names_model(text: str) -> bool:
    """Whether a positional reads as a MODEL (a folder, a server, a repo id) rather than a prompt or a file."""
    from bloomtui.engine.weights.hub import looks_like_repo_id

    return os.path.isdir(os.path.expanduser(text)) or is_remote_url(text) or looks_like_repo_id(text)


def _model_or_demo(args: argparse.Namespace) -> None:
    """--demo as MODEL for the commands that take one; exactly one of them is given."""
    if not hasattr(args, "model"):
        return
    if getattr(args, "demo", False):
        follower = _AFTER_MODEL.get(args.command)
        if follower and args.model is not None and getattr(args, follower) is None and not _names_model(args.model):
            setattr(args, follower, args.model)
            args.model = None
        if args.model is not None:
            raise UsageError("give a MODEL or --demo, not both")
        from bloomtui import demo_models

        args.model = str(demo_models.path(demo_models.DEMO))
    elif args.model is None:
        raise UsageError("give a MODEL (a folder, a cached repo id or a server URL), or --demo for the built-in one")
    if args.command == "perplexity" and args.file is None:
        raise UsageError("give the FILE to score (a UTF-8 text file)")


_COMMANDS = {
    "generate": "generate",
    "perplexity": "perplexity",
    "serve": "serve",
    "info": "info",
    "measure-openmp": "measure_openmp",
    "prepare": "prepare",
    "download": "download",
}
"""Commands whose function `bloomtui.commands.<name>.<name>` is imported only when it runs (start-up time)."""


def _dispatch(args: argparse.Namespace) -> int:
    if (name := _COMMANDS.get(args.command)) is not None:
        module = importlib.import_module(f"bloomtui.commands.{name}")
        return getattr(module, name)(args)
    if args.command == "demo-model":
        return _demo_model(args)
    if args.demo and args.model:
        raise UsageError("give a MODEL or --demo, not both")
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        # Textual would draw into the pipe and spin on a stdin that never answers.
        raise UsageError(
            "the app needs a terminal (standard input and output are not one); "
            "from a script, use: bloomtui generate MODEL PROMPT"
        )
    # A server URL may also be typed in the model picker later, so the remote options always go along.
    remote = remote_options(args, local_allowed=not is_remote_url(args.model))
    from bloomtui.tui.app import run_app

    return run_app("@demo" if args.demo else args.model, engine_options(args), remote, args.draft, args.samples)


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
    dtype = demo.weight_dtype(args.preset, args.dtype)
    print(f"wrote {path} (preset {args.preset}, layout {args.layout}, {dtype}). {note}")
    return 0
