"""`bloomtui download REPO_ID`: a BLOOM model from the hub into the local Hugging Face cache, resumable."""

from __future__ import annotations

import argparse
import signal
import threading


def add_parser(sub) -> None:  # noqa: ANN001 - argparse's subparsers action
    dl = sub.add_parser(
        "download",
        help="download a BLOOM model from the Hugging Face hub into its cache",
        description="Fetch REPO_ID's config, tokenizer and weights (safetensors when offered, else .bin) into the "
        "local Hugging Face cache, where bloomtui, transformers and huggingface_hub find it. The free space is "
        "checked first; an interrupted download resumes where it stopped when run again; every weight file's "
        "sha256 is checked. To end with a compressed copy without ever holding the original, use "
        "`bloomtui prepare REPO_ID OUT --weights int4` instead.",
    )
    dl.add_argument("repo_id", help="e.g. bigscience/bloom-560m")
    dl.add_argument("--revision", help="a branch, tag or commit (default: the main branch)")
    dl.add_argument("--json", action="store_true", help="progress and the result as JSON lines on stdout")


def download(args: argparse.Namespace) -> int:
    from bloomtui.engine.weights.hub_download import download_model
    from bloomtui.progress import hub_progress

    cancel = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: cancel.set())
    with hub_progress(as_json=args.json) as (on_plan, on_progress):
        path = download_model(args.repo_id, args.revision, on_plan, on_progress, cancel.is_set)
    if args.json:
        import json

        print(json.dumps({"event": "done", "path": str(path)}), flush=True)
    else:
        print(path)
    return 0
