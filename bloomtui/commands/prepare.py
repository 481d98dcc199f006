"""`bloomtui prepare MODEL OUT`: a compressed copy that streams faster, from a local folder, the local Hugging Face
cache, or (a repo id not in the cache) straight from the hub, one shard at a time and resumable."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path


def add_parser(sub) -> None:  # noqa: ANN001 - argparse's subparsers action
    prep = sub.add_parser(
        "prepare",
        help="write a compressed copy of a model (int8/int4 weights, one file per block) that streams faster",
        description="Rewrite MODEL into a new folder OUT: one page-aligned safetensors file per block, the four "
        "matrices of each block in bf16, int8 (per channel) or int4 (per group), embeddings/head int8 per row. "
        "MODEL is never written to; OUT is built as OUT.partial and renamed at the end. A repo id that is not in "
        "the local Hugging Face cache is prepared straight from the hub: its shards are fetched in order, each "
        "prepared as it lands and deleted once written, so the source never takes more than two shards of disk "
        "(BLOOM-176B: about 10 GB instead of 352). Interrupted (Ctrl+C, a lost connection, a reboot), the same "
        "command resumes from OUT.partial.",
    )
    prep.add_argument("model", help="model folder, or a Hugging Face repo id (from the local cache, else the hub)")
    prep.add_argument("out", help="new folder to write")
    prep.add_argument("--weights", required=True, choices=("bf16", "int8", "int4"), help="how to store the matrices")
    prep.add_argument(
        "--group-size",
        type=int,
        choices=(32, 64, 128, 256),
        help="int4 inputs per scale (default 128, smaller when the hidden size needs it)",
    )
    prep.add_argument(
        "--head",
        choices=("int8", "int4"),
        default="int8",
        help="how int8/int4 folders store the embeddings and LM head: int8 rows (default) or int4 rows in groups of "
        "32 (5 bits a weight: the head is read every token, so for small models it is most of a token's bytes; "
        "check the quality with `bloomtui perplexity`)",
    )
    prep.add_argument("--revision", help="a branch, tag or commit of the repo (default: its main branch)")
    prep.add_argument("--json", action="store_true", help="progress and the result as JSON lines on stdout")
    prep.add_argument("--force", action="store_true", help="replace OUT if it is an earlier prepared folder")


def prepare(args: argparse.Namespace) -> int:
    from bloomtui.engine.weights.hub import find_local
    from bloomtui.progress import hub_progress, prepare_progress

    cancel = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: cancel.set())
    out = Path(args.out)
    source = find_local(args.model, args.revision)
    if source is None:
        from bloomtui.engine.prepare.folder import partial_path
        from bloomtui.engine.prepare.from_hub import prepare_from_hub
        from bloomtui.errors import CancelRequested

        try:
            with hub_progress(as_json=args.json) as (on_plan, on_progress):
                prepare_from_hub(
                    args.model, out, args.weights, args.group_size, args.force, on_progress, cancel.is_set,
                    head=args.head, revision=args.revision, on_plan=on_plan,
                )  # fmt: skip
        except CancelRequested:
            if partial_path(out).is_dir():
                print(
                    f"interrupted: {partial_path(out)} keeps what is done; run the same command to resume",
                    file=sys.stderr,
                )
                return 130
            raise
    else:
        from bloomtui.engine.prepare import prepare as prepare_local

        with prepare_progress() as on_progress:
            prepare_local(
                source, out, args.weights, args.group_size, args.force, on_progress, cancel.is_set, head=args.head
            )
    if args.json:
        import json

        print(json.dumps({"event": "done", "out": str(out), "weights": args.weights}), flush=True)
    else:
        print(f"wrote {out} ({args.weights}); open it like any model: bloomtui info {out}")
    return 0
