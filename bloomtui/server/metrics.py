"""`GET /metrics`: the scheduler's tallies in Prometheus' text format (version 0.0.4)."""

from __future__ import annotations

from bloomtui.server.scheduler import Totals

METRICS = (
    # (name, type, help, Totals field)
    ("bloomtui_requests_total", "counter", "Requests that joined the batch.", "requests"),
    (
        "bloomtui_requests_cancelled_total",
        "counter",
        "Requests whose every sequence was cancelled.",
        "requests_cancelled",
    ),
    ("bloomtui_requests_failed_total", "counter", "Requests ended by an engine error.", "requests_failed"),
    ("bloomtui_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.", "prompt_tokens"),
    ("bloomtui_generated_tokens_total", "counter", "Tokens generated, all sequences.", "generated_tokens"),
    ("bloomtui_passes_total", "counter", "Passes over the weights.", "passes"),
    ("bloomtui_pass_rows_total", "counter", "Rows the passes carried (a row per sequence and new position).", "rows"),
    ("bloomtui_read_bytes_total", "counter", "Bytes of streamed blocks read from disk.", "bytes_read"),
    ("bloomtui_block_read_seconds_total", "counter", "Seconds spent reading streamed blocks.", "read_seconds"),
    ("bloomtui_block_wait_seconds_total", "counter", "Seconds compute waited for a streamed block.", "wait_seconds"),
    ("bloomtui_block_compute_seconds_total", "counter", "Seconds of block compute.", "compute_seconds"),
    ("bloomtui_running_sequences", "gauge", "Sequences in the batch now.", "running"),
    ("bloomtui_queued_requests", "gauge", "Requests waiting for room in the batch.", "queued"),
)


def prometheus_text(totals: Totals) -> str:
    lines = []
    for name, kind, help_text, attr in METRICS:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {getattr(totals, attr)}"]
    return "\n".join(lines) + "\n"
