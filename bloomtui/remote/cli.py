"""`bloomtui generate URL PROMPT` and `bloomtui info URL`: the headless CLI against a server.

Same output contract as the local commands: text on stdout, one summary line on stderr, `--json` prints one
object per event, `error: ...` and exit 2 on failure, 130 on Ctrl+C.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from bloomtui.errors import UsageError

if TYPE_CHECKING:  # the CLI imports this module before torch may load (bloomtui/openmp.py)
    from bloomtui.engine import SamplingParams, events
    from bloomtui.remote.connection import RemoteOptions

LOCAL_ONLY = ("ram_budget", "dtype", "threads")


def add_remote_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("when MODEL is a server URL (vLLM, TGI, transformers serve)")
    group.add_argument("--remote-model", metavar="NAME", help="served model to use (default: the only one served)")
    group.add_argument(
        "--connect-timeout", type=float, default=10.0, metavar="S", help="seconds to wait for a connection (10)"
    )
    group.add_argument(
        "--read-timeout", type=float, default=120.0, metavar="S", help="seconds the server may stay silent (120)"
    )


def remote_options(args: argparse.Namespace, *, local_allowed: bool = False) -> RemoteOptions:
    """The server options; unless `local_allowed`, a local-model option is refused rather than ignored."""
    from bloomtui.remote.connection import RemoteOptions

    for name in LOCAL_ONLY:
        if not local_allowed and getattr(args, name, None) is not None:
            raise UsageError(f"--{name.replace('_', '-')} applies to a local model, not to a server")
    return RemoteOptions(args.remote_model, args.connect_timeout, args.read_timeout)


def generate_remote(args: argparse.Namespace, params: SamplingParams) -> int:
    from bloomtui.engine import events
    from bloomtui.progress import finish_generation
    from bloomtui.remote.engine import RemoteEngine
    from bloomtui.remote.events import RemoteNotice

    options = remote_options(args)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt:
        raise UsageError("the prompt is empty")
    cancel = threading.Event()
    shown: list[str] = []

    def on_event(event: events.Event) -> None:
        if args.json:
            print(json.dumps(event.to_json(), ensure_ascii=False), flush=True)
        elif isinstance(event, events.TokenGenerated) and event.text:
            shown.append(event.text)
            sys.stdout.write(event.text)
            sys.stdout.flush()
        elif isinstance(event, RemoteNotice):
            print(f"note: {event.message}", file=sys.stderr)

    engine = RemoteEngine.open(args.model, options)  # Ctrl+C here is a plain KeyboardInterrupt: exit 130
    signal.signal(signal.SIGINT, lambda *_: cancel.set())  # from here on it closes the stream, keeping the text
    try:
        result = engine.generate(prompt, params, on_event=on_event, cancel=cancel)
    except BaseException:
        if not args.json and shown and not shown[-1].endswith("\n"):
            sys.stdout.write("\n")  # end the partial text, so the `error:` line on stderr stands on its own
        raise
    return finish_generation(
        result,
        args.json,
        lambda done: (
            f"{done.new_tokens} tokens ({_how_it_ended(done)}), first token {done.prefill_seconds:.2f} s, "
            f"{done.tokens_per_second:.2f} tokens/s, {engine.model} at {engine.url}"
        ),
    )


def _how_it_ended(done: events.Done) -> str:
    """The stop reason, and how the count was found when the server did not report it: "length; counted from
    logprobs"."""
    from bloomtui.remote.events import RemoteDone

    note = done.count_note if isinstance(done, RemoteDone) else ""
    return f"{done.stop_reason}; {note}" if note else done.stop_reason


def info_remote(args: argparse.Namespace) -> int:
    """The served models: like `info` for a folder, plain aligned lines or one JSON object."""
    from bloomtui.remote.connection import Server

    server = Server(args.model, remote_options(args))
    models = [_model_facts(m) for m in server.list_models()]
    if args.json:
        print(json.dumps({"url": server.url, "models": models}, indent=2))
        return 0
    print(f"server      {server.url}")
    print(f"models      {len(models)} served")
    for model in models:
        facts = [f"{k.replace('_', ' ')} {v}" for k, v in model.items() if k != "id"]
        print(f"  {model['id']}" + (f"  ({', '.join(facts)})" if facts else ""))
    return 0


def _model_facts(model: dict[str, Any]) -> dict[str, Any]:
    """The fields servers fill in that matter to a user; vLLM adds max_model_len, transformers serve a status."""
    facts: dict[str, Any] = {"id": str(model["id"])}
    if model.get("owned_by"):
        facts["owned_by"] = str(model["owned_by"])
    if isinstance(model.get("max_model_len"), int):
        facts["max_model_len"] = model["max_model_len"]
    status = model.get("status")
    if isinstance(status, dict) and status.get("value"):
        facts["status"] = str(status["value"])
    return facts
