"""`bloomtui perplexity MODEL FILE`: score a text file in windows, as transformers' loss does."""

from __future__ import annotations

import argparse
import json
import signal
import threading

from bloomtui.commands.engine_options import engine_options
from bloomtui.errors import UsageError


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


def perplexity(args: argparse.Namespace) -> int:
    """`bloomtui perplexity MODEL FILE`."""
    if args.context < 2:
        raise UsageError(f"--context must be at least 2 tokens, got {args.context}")
    if args.batch is not None and args.batch < 1:
        raise UsageError(f"--batch must be at least 1, got {args.batch}")
    text = read_text_file(args.file)
    options = engine_options(args)

    from bloomtui.engine import Engine
    from bloomtui.progress import ScoreProgress, StatusLine

    cancel = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: cancel.set())
    status = StatusLine()
    engine = Engine.open(args.model, options, on_event=status, cancel=cancel)
    status.clear()
    try:
        with ScoreProgress() as progress:
            result = engine.perplexity(text, args.context, on_event=progress, cancel=cancel, batch=args.batch)
    finally:
        engine.close()
    if args.json:
        keys = ("perplexity", "tokens", "nll", "seconds", "windows", "batch")
        print(json.dumps({key: getattr(result, key) for key in keys}))
        return 0
    print(f"perplexity  {result.perplexity:.4f}")
    per_pass = f", {result.batch} per pass" if result.batch > 1 else ""
    print(f"tokens      {result.tokens} predicted, in {result.windows} window(s) of up to {args.context}{per_pass}")
    print(f"mean NLL    {result.nll:.6f} nats/token")
    print(f"seconds     {result.seconds:.2f} ({result.tokens / result.seconds:.0f} tokens/s)")
    return 0
