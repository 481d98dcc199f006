"""`bloomtui serve` under concurrent clients (issue 18): aggregate tokens/s against clients, and the time to
first token of a request that joins a running batch.

    python -m benchmarks.serving [--clients 1,2,4,8] [--tokens 32] [--repeats 2] [--work DIR] [--update FILE]

bloom-560m's shape in bf16, served under a budget of ~1/4 of the model (`--reads cached`: streamed blocks in
the page cache) with --max-batch 8. Each point: that many clients start streamed completions at once (each
its own prompt, temperature 0.8, `--tokens` tokens); aggregate tokens/s = all their tokens / the wall time
from the first request sent to the last token. Joining: while 4 clients decode 4x as many tokens, a fifth
request is sent; its time to first token is set against one pass of the running batch (the median gap between
its tokens) plus the fifth request's own prefill alone (its time to first token on an idle server).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from benchmarks.checkpoints import ensure, full_specs
from benchmarks.common import Section, commit_stamp, cpu_summary, say, table_head
from benchmarks.draft_speed import quarter_budget
from benchmarks.jobs import BLOOMTUI_ENV, DEFAULT_WORK

SECTION = Section("serving")
PROMPTS = [
    "The history of the printing press begins",
    "In the middle of the night the lighthouse keeper",
    "A good recipe for bread needs",
    "The committee met on Tuesday to discuss",
    "Rivers carry sediment from the mountains",
    "When the train finally arrived at the station",
    "The first rule of writing clear documentation is",
    "Bees communicate the location of flowers by",
]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model: Path, budget: int) -> tuple[subprocess.Popen, str]:
    port = _port()
    cmd = [sys.executable, "-m", "bloomtui", "serve", str(model), "--port", str(port), "--ram-budget", str(budget)]
    proc = subprocess.Popen(
        [*cmd, "--max-batch", "8", "--reads", "cached"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **BLOOMTUI_ENV},
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("listening on"):
            break
    else:
        raise RuntimeError("the server did not start")
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
    return proc, f"http://127.0.0.1:{port}"


def stream(url: str, prompt: str, tokens: int, seed: int, out: dict) -> None:
    """One streamed completion: the times of its tokens (perf_counter) into out["times"]."""
    # logprobs: a chunk for every token (random weights write many tokens that are part of a character, and a
    # token without text sends no chunk otherwise).
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0.8, "seed": seed, "ignore_eos": True, "logprobs": 0}
    times: list[float] = []
    out["times"] = times  # filled as tokens come: a watcher sees the stream under way
    out["sent"] = time.perf_counter()
    with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True}, timeout=600) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"]:
                times.append(time.perf_counter())
    del times[-1]  # the last choice chunk is the finish_reason, not a token
    assert len(times) == tokens, f"{len(times)} token chunks for {tokens} tokens"


def clients_at_once(url: str, n: int, tokens: int) -> float:
    outs: list[dict] = [{} for _ in range(n)]
    threads = [
        threading.Thread(target=stream, args=(url, PROMPTS[i % len(PROMPTS)], tokens, i, outs[i])) for i in range(n)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = min(o["sent"] for o in outs)
    last = max(o["times"][-1] for o in outs)
    return sum(len(o["times"]) for o in outs) / (last - first)


def joining(url: str, tokens: int) -> dict[str, float]:
    alone: dict = {}
    stream(url, PROMPTS[5], 1, 99, alone)
    prefill = alone["times"][0] - alone["sent"]
    outs: list[dict] = [{} for _ in range(4)]
    threads = [threading.Thread(target=stream, args=(url, PROMPTS[i], 4 * tokens, i, outs[i])) for i in range(4)]
    for t in threads:
        t.start()
    while not all(len(o.get("times", [])) >= 2 for o in outs) and any(t.is_alive() for t in threads):
        time.sleep(0.02)  # until all four are decoding
    late: dict = {}
    stream(url, PROMPTS[5], 2, 98, late)
    for t in threads:
        t.join()
    gaps = [b - a for o in outs for a, b in zip(o["times"], o["times"][1:], strict=False)]
    return {"ttft": late["times"][0] - late["sent"], "pass": statistics.median(gaps), "prefill": prefill}


def section(rates: dict[int, list[float]], joins: list[dict[str, float]], args: argparse.Namespace) -> str:
    sizes = list(rates)
    med = {n: statistics.median(v) for n, v in rates.items()}
    j = {k: statistics.median(x[k] for x in joins) for k in joins[0]}
    return SECTION.text(
        [
            "## Serving concurrent requests",
            "",
            f"`python -m benchmarks.serving --clients {args.clients} --tokens {args.tokens} --repeats {args.repeats}` "
            f"({commit_stamp()}, {cpu_summary()}): `bloomtui serve` on bloom-560m's shape in bf16 under a budget of "
            f"~1/4 of the model (streamed blocks in the page cache), --max-batch 8; N clients stream {args.tokens} "
            "tokens each at once; aggregate tokens/s from the first request sent to the last token (median).",
            "",
            *table_head("clients", *map(str, sizes)),
            "| tokens/s | " + " | ".join(f"{med[n]:.1f}" for n in sizes) + " |",
            "| ÷ 1 client | " + " | ".join(f"{med[n] / med[sizes[0]]:.2f}x" for n in sizes) + " |",
            "",
            f"A request joining 4 running ones: first token after {j['ttft']:.2f} s; one pass of the batch takes "
            f"{j['pass']:.2f} s and its own prefill alone {j['prefill']:.2f} s, so the bound is "
            f"{j['pass'] + j['prefill']:.2f} s ({'met' if j['ttft'] <= j['pass'] + j['prefill'] else '**not met**'}).",
            "",
            "Goals (issue 18): 4 concurrent streamed requests >= 3x the aggregate tokens/s of one, 8 >= 5x; a "
            "joining request's first token <= one pass + its own prefill.",
        ]
    )


def main() -> None:
    parser = Section.parser(__doc__)
    parser.add_argument("--clients", default="1,2,4,8")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = parser.parse_args()
    model = ensure(full_specs()["bf16"], args.work)
    budget = quarter_budget(str(model))
    sizes = [int(x) for x in args.clients.split(",")]
    proc, url = start(model, budget)
    try:
        clients_at_once(url, 2, 4)  # warm-up: torch, the page cache
        rates: dict[int, list[float]] = {n: [] for n in sizes}
        joins: list[dict[str, float]] = []
        for _ in range(args.repeats):
            for n in sizes:
                rates[n].append(clients_at_once(url, n, args.tokens))
                say(f"{n} clients: {rates[n][-1]:.1f} tokens/s")
            joins.append(joining(url, args.tokens))
            say(f"join: {joins[-1]}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    SECTION.publish(section(rates, joins, args), args.update)


if __name__ == "__main__":
    main()
