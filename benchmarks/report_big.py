"""The report's BLOOM-176B section: full-width blocks measured (bf16 and int4), the model check, and the
projection to the whole model (projection.py) with the compute measured alone and while streaming."""

from __future__ import annotations

import math

from benchmarks import projection as proj
from benchmarks.report_common import med as _med
from benchmarks.report_common import num as _s
from benchmarks.report_common import size as _size
from bloomtui.sizes import format_size


def big_section(raw: dict, membw: float) -> list[str]:
    big = raw.get("big")
    if not big:
        return ["## BLOOM-176B at real width", "", "Skipped (`--skip-big`).", ""]
    lines = ["## BLOOM-176B at real width: measured blocks and the projection", ""]
    lines += _part(big, "", "bf16", membw)
    if "bigblock_int4" in big:
        lines += ["### int4 (`bloomtui prepare --weights int4` of the same 3 blocks)", ""]
        lines += _part(big, "_int4", "int4", membw)
    return lines


def _part(big: dict, suffix: str, weights: str, membw: float) -> list[str]:
    """Measurements of one scheme's full-width blocks, the model check, and the BLOOM-176B projection."""
    lines: list[str] = []
    bb = big["bigblock" + suffix]
    if not bb["runs"]:
        return [f"The block measurement failed: {'; '.join(bb['errors'])}", ""]
    b = bb["runs"][0]
    block_bytes = b["block_bytes"]
    read_s = _med(b["read_s"])
    bw = block_bytes / read_s
    c = _med(b["decode_compute_s"])
    model = big["model" + suffix]
    what = "bf16" if weights == "bf16" else f"{weights} (group size {b.get('group_size')}), int8 embeddings"
    kernel = "bf16" if weights == "bf16" else f"torch's fused {weights} kernel"
    lines += [
        f"Checkpoint: `{model}`: {len(b['read_s'])} blocks of hidden {b['hidden']}, "
        f"{b['n_head']} heads, {what}, {format_size(block_bytes)} per block (BLOOM-176B's block), small vocab.",
        "",
        "| measurement | value |",
        "|---|---|",
        f"| cold read of one block (os.preadv, 32 MiB chunks, after POSIX_FADV_DONTNEED), median of "
        f"{len(b['read_s'])} | {_s(read_s)} s = **{bw / 1e9:.2f} GB/s** |",
        f"| compute of one block, 1 new token, context {b['context']} (bloomtui's block_forward, {kernel}, "
        f"{len(b['decode_compute_s'])} runs) | **{_s(c)} s** = {block_bytes / c / 1e9:.1f} GB/s of weights |",
        f"| compute of one block, prefill of {b['context']} tokens | {_s(b['prefill_s'])} s |",
    ]
    st = big["stream" + suffix]
    c_stream = math.nan
    if st["runs"]:
        r = st["runs"][0]
        decode = r["decode_s"]
        blocks = r["blocks"][1:] or r["blocks"]
        n = r["n_blocks"]
        streamed = r["bytes_read"] / len(r["token_s"])
        c_stream = _med([x["compute"] for x in blocks]) / n
        predicted = max(streamed / bw, n * c)
        lines += [
            f"| bloomtui, all {n} blocks streamed cold (budget {format_size(r['budget'])}), decode s/token "
            f"| {_s(decode)} s (prefill {_s(r['prefill_s'])} s; peak RSS {format_size(r['peak_rss'])}, of which "
            f"the engine's own `Done.peak_rss` saw {_size(r.get('engine_peak_rss'))}) |",
            f"| ... per decode token: block compute / wait for reads / prefetch-thread read time "
            f"| {_s(_med([x['compute'] for x in blocks]))} / {_s(_med([x['wait'] for x in blocks]))} / "
            f"{_s(_med([x['read'] for x in blocks]))} s (compute {_s(_med([x['compute'] for x in blocks]) / n)} s "
            f"per block while streaming, vs {_s(c)} s measured alone above) |",
            f"| model check: max(streamed bytes / bw, {n} x c) = max({_s(streamed / bw)}, {_s(n * c)}) "
            f"| predicted {_s(predicted)} s vs measured {_s(decode)} s ({decode / predicted:.2f}x) |",
        ]
    else:
        lines.append(f"| bloomtui streaming run | {'; '.join(st['errors'])} |")
    block_b, head_b = proj.sizes(weights)
    head_kind = "" if weights == "bf16" else ", int8 rows + bf16 scales"
    lines += [
        "",
        f"Projection for BLOOM-176B (70 blocks, 250880 x 14336 embedding tied to the LM head{head_kind}, {weights}):",
        "",
        "```",
        f"B = {format_size(block_b)} per block, E = {format_size(head_b)} embedding / LM head"
        + ("" if weights == "bf16" else " (the engine's stored shapes; = prepare.output_bytes less page padding)"),
        "k = resident blocks under the RAM budget R (bloomtui's own residency planner; it keeps 2 stream",
        "    buffers of one block each, and may keep the head resident instead of blocks)",
        "S = (70 - k) * B + (E if the head is streamed else 0)      bytes read per token",
        f"C = 70 * c + E * c / B                                    compute per token, c = {_s(c)} s measured",
        "T = max(S / bw, C)      reads overlap compute (prefetch thread); T_serial = S / bw + C",
        f"T_2core = max(S / bw, C') with C' from c' = {_s(c_stream)} s, the per-block compute measured while",
        "    streaming on this 2-core VM (the kernel's read work takes CPU from compute here)",
        "```",
        "",
        "| RAM budget | resident blocks (+head) | read/token | disk bw | T = max(S/bw, C) s/token | "
        "T_serial | T_2core | seed's 180 s/token ÷ T |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for budget_gb, label in (
        (10, "10 GB (16 GB desktop, as the seed's)"),
        (18, "18 GB (a 24 GB machine)"),
        (56, "56 GB (64 GB machine)"),
        (120, "120 GB (128 GB machine)"),
    ):
        for disk_bw, disk in (
            (bw, f"{bw / 1e9:.2f} GB/s (measured here, cold)"),
            (3.5e9, "3.5 GB/s (PCIe 3 NVMe)"),
            (7e9, "7 GB/s (Samsung 980 PRO, the seed's disk)"),
        ):
            p = proj.project(int(budget_gb * 1e9), disk_bw, c, weights)
            if p is None:
                lines.append(f"| {label} | below the minimum budget | | {disk} | | | | |")
                continue
            p2 = proj.project(int(budget_gb * 1e9), disk_bw, c_stream, weights) if not math.isnan(c_stream) else None
            lines.append(
                f"| {label} | {p.resident_blocks}{' + head' if p.head_resident else ''} | "
                f"{format_size(p.streamed_bytes)} | {disk} | **{_s(p.overlapped_s)}** | {_s(p.serial_s)} | "
                f"{_s(p2.overlapped_s) if p2 else 'n/a'} | {proj.SEED_SECONDS_PER_TOKEN / p.overlapped_s:.1f}x |"
            )
    total = 70 * block_b + head_b
    lines += [
        "",
        f"Compute floor here: C = {_s(70 * c + head_b * c / block_b)} s/token "
        f"(memory-bandwidth floor of {format_size(total)} of weights at {membw / 1e9:.1f} GB/s copy bandwidth: "
        f"{_s(total / membw)} s).",
        "",
    ]
    return lines
