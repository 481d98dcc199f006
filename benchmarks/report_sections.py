"""Report sections for compressed weights, quality and BLOOM-176B int4, and the bullets they add to "What the
numbers say" (used by report.py; long prompts are report_prefill.py's)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from benchmarks import projection as proj
from benchmarks.report_common import Goal, Lookup, Summary, agreement, floor_goal, ratio_goal
from benchmarks.report_common import num as _s
from benchmarks.report_common import ratio as _r
from benchmarks.report_prefill import path_finding
from bloomtui.sizes import format_size

SCHEMES = ("bf16", "int8", "int4")
INT4_PROJECTION_TARGET = 13.0  # s/token, BLOOM-176B int4, 10 GB budget, 7 GB/s (issue 8)
PPL_TARGETS = {"int8": 1.01, "int4": 1.06}


# --- compressed weights ----------------------------------------------------------------------------------


def compressed_goals(get: Lookup) -> list[Goal]:
    rows: list[Goal] = []
    bf = get("bf16", "bloomtui resident")
    for scheme, target in (("int8", 1.5), ("int4", 2.0)):
        q = get(scheme, "bloomtui resident")
        goal = f"compressed, fully in RAM decode: {scheme} tokens/s ÷ bf16 tokens/s (bloomtui, same shape)"
        missing = (f"compressed, fully in RAM decode, {scheme}", "missing run", f">= {target}x", None)
        rows.append(ratio_goal(goal, q.decode, bf.decode, target) if bf and q else missing)
    quarter = "RAM budget 1/4 of the bf16 model"
    bw, qw = get("bf16", "bloomtui stream warm"), get("int4", "bloomtui stream warm")
    if bw and qw:
        rows.append(ratio_goal(f"compressed, {quarter}, warm: int4 tokens/s ÷ bf16 tokens/s", qw.decode, bw.decode, 2))
    bc, qc = get("bf16", "bloomtui stream cold"), get("int4", "bloomtui stream cold")
    if bc and qc:
        goal = f"compressed, {quarter}, cold: int4 s/token ÷ bf16 s/token"
        rows.append(ratio_goal(goal, qc.decode, bc.decode, 0.35, at_most=True))
    for scheme in ("int8", "int4"):
        resident = get(scheme, "bloomtui resident")
        for state in ("warm", "cold"):
            goal = (
                f"compressed {scheme}, {quarter}, {state}: s/token ÷ max(raw read of "
                "its streamed bytes, its resident s/token)"
            )
            stream, raw = get(scheme, f"bloomtui stream {state}"), get(scheme, f"raw read {state}")
            rows.append(floor_goal(goal, stream, raw, resident, f"compressed {scheme}, streaming {state}"))
    seed, q = get("seed", "seed method cold"), get("int4", "bloomtui all streamed cold")
    if seed and q:
        r = seed.decode / q.decode
        raw = get("int4", "raw read all cold")
        bound = (
            f"; reading int4's bytes at the raw read floor would give {seed.decode / raw.decode:.1f}x" if raw else ""
        )
        rows.append(
            (
                "every block streamed, cold, **compressed weights**: seed method (bf16) s/token ÷ bloomtui int4 "
                "s/token",
                f"{r:.1f}x ({_s(seed.decode)} vs {_s(q.decode)} s/token{bound})",
                ">= 3x",
                r >= 3,
            )
        )
    else:
        rows.append(("vs the seed method, cold, bloomtui int4", "missing run", ">= 3x", None))
    return rows


def compressed_section(
    get: Lookup,
    raw: dict,
    gen_header: str,
    gen_row: Callable[[Summary, Summary | None, float | None], str],
    floor_row: Callable[[str, float, str], str],
) -> list[str]:
    budgets, models = raw["budgets"], raw["models"]
    bf_res = get("bf16", "bloomtui resident")
    out = [
        "## Compressed weights (`bloomtui prepare`), bloom-560m shape",
        "",
        f"`{Path(models['bf16_int8']).name}` and `{Path(models['bf16_int4']).name}`: `bloomtui prepare` of "
        f"`{Path(models['bf16']).name}` with `--weights int8` (per output channel) and `--weights int4` (group size "
        "as prepare picks it), embeddings/LM head int8 per row; decode on torch's fused int8/int4 CPU kernels. "
        f"Streaming runs use the bf16 model's budget ({format_size(budgets['quarter_bf16'])}, ~1/4 of bf16); "
        f"int4 'all streamed' the minimum budget ({format_size(budgets['min_int4'])}). bf16 rows are the bf16 "
        "table's, from the same run. Greedy ids are compared with bloomtui bf16 resident (not required equal: "
        "quantisation changes the weights).",
        "",
        "| scheme | resident s/token | tokens/s ÷ bf16 | 1/4 budget warm s/token | tokens/s ÷ bf16 | ÷ floor | "
        "1/4 budget cold s/token | s/token ÷ bf16 | ÷ floor | read/token at 1/4 | all streamed warm / cold s/token "
        "| greedy ids vs bf16 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    bf_w, bf_c = get("bf16", "bloomtui stream warm"), get("bf16", "bloomtui stream cold")
    for scheme in SCHEMES:
        res, w, c = (
            get(scheme, "bloomtui resident"),
            get(scheme, "bloomtui stream warm"),
            get(scheme, "bloomtui stream cold"),
        )
        rw, rc = get(scheme, "raw read warm"), get(scheme, "raw read cold")
        seed_group = "seed" if scheme == "bf16" else scheme
        aw, ac = get(seed_group, "bloomtui all streamed warm"), get(seed_group, "bloomtui all streamed cold")

        def floor(x: Summary | None, raw_read: Summary | None, res: Summary | None = res) -> float:
            if not (x and raw_read and res):
                return math.nan
            return x.decode / max(raw_read.decode, res.decode)

        cells = [
            scheme,
            _s(res.decode) if res else "failed",
            _r(bf_res.decode / res.decode) if res and bf_res else "n/a",
            _s(w.decode) if w else "failed",
            _r(bf_w.decode / w.decode) if w and bf_w else "n/a",
            _r(floor(w, rw)),
            _s(c.decode) if c else "failed",
            _r(c.decode / bf_c.decode) if c and bf_c else "n/a",
            _r(floor(c, rc)),
            format_size(w.bytes_per_token) if w and not math.isnan(w.bytes_per_token) else "n/a",
            f"{_s(aw.decode) if aw else 'n/a'} / {_s(ac.decode) if ac else 'n/a'}"
            + (" (bigscience layout)" if scheme == "bf16" else ""),
            "reference" if scheme == "bf16" else agreement(res.ids if res else None, bf_res.ids if bf_res else None),
        ]
        out.append("| " + " | ".join(cells) + " |")
    hf16 = get("bf16", "transformers")
    for scheme in ("int8", "int4"):
        out += ["", f"### {scheme}, `{Path(models[f'bf16_{scheme}']).name}`", "", gen_header]
        for s in get.by.values():
            if s.group != scheme:
                continue
            if s.kind == "bloomtui":
                out.append(gen_row(s, hf16, hf16.decode if hf16 else None))
            elif s.kind == "rawread" and s.ok:
                out.append(
                    floor_row(f"floor: {s.name} of the streamed bytes", s.decode, format_size(s.bytes_per_token))
                )
    out.append("")
    return out


# --- quality ---------------------------------------------------------------------------------------------

QUALITY_NAMES = {"bf16": "trained bf16 (as shipped)", "int8": "trained int8", "int4": "trained int4"}


def quality_goals(get: Lookup) -> list[Goal]:
    rows: list[Goal] = []
    base = get.run("quality", QUALITY_NAMES["bf16"])
    for scheme, target in PPL_TARGETS.items():
        q = get.run("quality", QUALITY_NAMES[scheme])
        if base and q and math.isfinite(base["perplexity"]):
            r = q["perplexity"] / base["perplexity"]
            rows.append(
                (
                    f"quality: perplexity of the held-out sample, trained demo model, {scheme} ÷ bf16",
                    f"{r:.4f}x ({q['perplexity']:.3f} vs {base['perplexity']:.3f})",
                    f"<= {target}x",
                    r <= target,
                )
            )
        else:
            rows.append((f"quality, {scheme}", "missing run or non-finite bf16 perplexity", f"<= {target}x", None))
    return rows


def quality_section(get: Lookup, raw: dict) -> list[str]:
    from benchmarks.worker_resident import QUALITY_PROMPT

    base = get.run("quality", QUALITY_NAMES["bf16"])
    chars = raw["settings"].get("quality_chars")
    out = [
        "## Quality: perplexity and greedy agreement (trained demo model)",
        "",
        "`Engine.perplexity` of training/heldout-sample.txt"
        + (f" (its first {chars} characters)" if chars else "")
        + " (windows of "
        f"{raw['settings'].get('quality_context', 1024)} tokens, as `bloomtui perplexity --context` scores them) on "
        "bloomtui/demo_models/trained as shipped (bf16 weights) and its `bloomtui prepare` copies (group size as "
        "prepare picks it), each computed in float32 as the demo's config asks; then 64 greedy tokens after the "
        f"prompt {QUALITY_PROMPT!r}.",
        "",
        "| scheme | group size | perplexity | ÷ bf16 | mean NLL | tokens scored | greedy 64 tokens vs bf16 | "
        "continuation (start) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for scheme in SCHEMES:
        s = get("quality", QUALITY_NAMES[scheme])
        if s is None:
            errors = get.by.get(("quality", QUALITY_NAMES[scheme]))
            why = "; ".join(errors.errors) if errors else "not run"
            out.append(f"| {scheme} | failed: {why} | | | | | | |")
            continue
        r = s.runs[0]
        ratio = r["perplexity"] / base["perplexity"] if base else math.nan
        text = r["text"][:80].replace("\n", " ").replace("|", "\\|")
        out.append(
            f"| {scheme} | {r.get('group_size') or ''} | {r['perplexity']:.3f} | "
            f"{f'{ratio:.4f}x' if scheme != 'bf16' else ''}"
            f" | {r['nll']:.4f} | {r['tokens']} | "
            f"{'reference' if scheme == 'bf16' else agreement(r['ids'], base['ids'] if base else None)} | {text} |"
        )
    out.append("")
    return out


# --- BLOOM-176B int4 ---------------------------------------------------------------------------------------


def int4_projection_goal(raw: dict) -> list[Goal]:
    c = int4_block_compute(raw)
    if c is None:
        return [
            (
                "BLOOM-176B int4 projection, 10 GB budget, 7 GB/s",
                "missing run",
                f"<= {INT4_PROJECTION_TARGET:g} s",
                None,
            )
        ]
    p = proj.project(10 * 10**9, 7e9, c, "int4")
    if p is None:
        return []
    return [
        (
            "BLOOM-176B int4 projected s/token, 10 GB budget, 7 GB/s disk: max(read, compute)",
            f"{_s(p.overlapped_s)} s (reads {_s(p.read_s)} s of {format_size(p.streamed_bytes)}, compute "
            f"{_s(p.compute_s)} s from c = {_s(c)} s per int4 block measured here)",
            f"<= {INT4_PROJECTION_TARGET:g} s",
            p.overlapped_s <= INT4_PROJECTION_TARGET,
        )
    ]


def int4_block_compute(raw: dict) -> float | None:
    big = raw.get("big") or {}
    runs = (big.get("bigblock_int4") or {}).get("runs") or []
    if not runs:
        return None
    values = sorted(runs[0]["decode_compute_s"])
    return values[len(values) // 2]


def findings(get: Lookup, raw: dict) -> list[str]:
    """Bullets for the new sections, computed from this run's numbers (each only when its runs succeeded)."""
    lines = []
    parts = []
    for scheme in SCHEMES:
        w = get(scheme, "bloomtui stream warm")
        if w and w.runs[0].get("resident_blocks") is not None:
            r = w.runs[0]
            head = " + head" if r["head_resident"] else ""
            parts.append(
                f"{scheme} keeps {r['resident_blocks']}/{r['n_blocks']} blocks{head} resident and reads "
                f"{format_size(w.bytes_per_token)} per token"
            )
    if parts:
        lines.append(
            f"- Under the same {format_size(raw['budgets']['quarter_bf16'])} budget: " + "; ".join(parts) + "."
        )
    lines += path_finding(get, raw)
    times = {s: get.run("quality", QUALITY_NAMES[s]) for s in SCHEMES}
    if all(times.values()):
        lines.append(
            "- Scoring the held-out sample (many-row passes) took "
            + " / ".join(f"{_s(times[s]['seconds'])} s" for s in SCHEMES)
            + " for bf16 / int8 / int4 on the trained demo model."
        )
    return lines
