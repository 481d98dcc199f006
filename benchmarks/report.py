"""Turn the harness's raw results into BENCHMARKS.md (and an optional PNG chart)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks import report_drafting as drafting
from benchmarks import report_prefill as prefill
from benchmarks import report_sections as sections
from benchmarks.report_big import big_section
from benchmarks.report_common import Goal, Lookup, Summary, floor_goal
from benchmarks.report_common import med as _med
from benchmarks.report_common import num as _s
from benchmarks.report_common import ratio as _ratio
from benchmarks.report_common import size as _size
from bloomtui.openmp import DEFAULTS as OPENMP_DEFAULTS
from bloomtui.sizes import format_size

RSS_SLACK = 600 * 1000**2  # goal: peak RSS <= budget + KV cache + 600 MB

GEN_KINDS = ("hf", "accelerate", "bloomtui", "seed")


def _match(ids: list[int] | None, ref: list[int] | None) -> str:
    if ids is None or ref is None:
        return "n/a"
    n = min(len(ids), len(ref))
    same = next((i for i in range(n) if ids[i] != ref[i]), n)
    return f"yes ({n}/{n})" if same == n else f"no: first {same}/{n} equal"


def _gen_row(s: Summary, ref: Summary | None, vs: float | None, note: str = "") -> str:
    if not s.ok:
        err = "; ".join(dict.fromkeys(s.errors)) or "no result"
        return f"| {s.name} | failed: {err} | | | | | | | | |"
    lo, hi = s.decode_range
    tps = 1 / s.decode if s.decode and not math.isnan(s.decode) else math.nan
    ratio = _ratio(vs / s.decode) if vs is not None else ""
    load = _s(s.med("load_s")) if s.kind != "seed" else "0 (per token)"
    first = _med([r["load_s"] + r["prefill_s"] for r in s.runs])
    cells = [
        s.name + (f" ({note})" if note else ""),
        load,
        _s(s.med("prefill_s")),
        _s(first),
        f"{_s(s.decode)} ({_s(lo)}–{_s(hi)})",
        _s(tps),
        ratio,
        _size(s.peak_rss),
        _size(s.bytes_per_token),
        _match(s.ids, ref.ids if ref else None) if ref is not s else "reference",
    ]
    return "| " + " | ".join(cells) + " |"


GEN_HEADER = (
    "| contender | load s | prefill (TTFT) s | load + prefill s | decode s/token, median (min–max) | tokens/s | "
    "transformers' s/token ÷ this (default env) | peak RSS | read/token | greedy ids = transformers |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def _floor_row(name: str, seconds: float, note: str) -> str:
    return f"| {name} | | | | {_s(seconds)} | {_s(1 / seconds) if seconds else 'n/a'} | | | {note} | |"


def goals(get: Lookup) -> list[Goal]:
    """The goal rows of the harness's own tables (bf16/fp32, streaming, the seed's method, peak RSS)."""
    rows: list[Goal] = []
    env = " ".join(f"{k}={v}" for k, v in OPENMP_DEFAULTS.items())
    for group in ("bf16", "fp32"):
        # Same OpenMP environment on both sides, each way: transformers as its users run it against bloomtui
        # without its setting, and both with bloomtui's setting. The goal takes the worse of the two pairs.
        pairs = [
            (get(group, "transformers"), get(group, "bloomtui resident, default OpenMP env"), "default env"),
            (get(group, f"transformers, {env}"), get(group, "bloomtui resident"), env),
        ]
        ratios = [(hf.decode / bt.decode, hf, bt, label) for hf, bt, label in pairs if hf and bt]
        if len(ratios) == len(pairs):
            r, hf, bt, _ = min(ratios, key=lambda x: x[0])
            detail = "; ".join(
                f"{label}: {x:.2f}x ({_s(b.decode)} vs {_s(h.decode)} s/token)" for x, h, b, label in ratios
            )
            rows.append(
                (
                    f"fully in RAM decode, {group}: bloomtui tokens/s ÷ transformers' tokens/s, same OpenMP "
                    "environment (the worse of the two environments)",
                    f"{r:.2f}x ({detail})",
                    ">= 1.05x",
                    r >= 1.05,
                )
            )
        else:
            rows.append((f"fully in RAM decode, {group}", "missing run", ">= 1.05x", None))
    resident = get("bf16", "bloomtui resident")
    for state in ("warm", "cold"):
        goal = (
            f"streaming (budget ~1/4 of the model), page cache {state}: s/token ÷ "
            "max(raw read of the streamed bytes, resident s/token)"
        )
        stream, raw = get("bf16", f"bloomtui stream {state}"), get("bf16", f"raw read {state}")
        rows.append(floor_goal(goal, stream, raw, resident, f"streaming, {state}"))
    for state in ("warm", "cold"):
        seed, bt = get("seed", f"seed method {state}"), get("seed", f"bloomtui all streamed {state}")
        if seed and bt:
            r = seed.decode / bt.decode
            raw = get("seed", f"raw read all {state}")
            bound = f"; a reader at the raw read floor would get {seed.decode / raw.decode:.1f}x" if raw else ""
            rows.append(
                (
                    f"every block streamed, {state}: seed method s/token ÷ bloomtui s/token",
                    f"{r:.1f}x ({_s(seed.decode)} vs {_s(bt.decode)} s/token{bound})",
                    ">= 3x",
                    r >= 3,
                )
            )
        else:
            rows.append((f"vs the seed method, {state}", "missing run", ">= 3x", None))
    rows += sections.compressed_goals(get)
    for (_group, name), s in sorted(get.by.items()):
        if s.kind != "bloomtui" or not s.ok or "resident" in name:
            continue
        run = s.runs[0]
        limit = run["budget"] + run["kv_bytes"] + RSS_SLACK
        rows.append(
            (
                f"peak RSS, {name}" + (f" ({_group})" if _group in ("int8", "int4") else ""),
                f"{_size(s.peak_rss)} (budget {_size(run['budget'])} + KV {_size(run['kv_bytes'])} + 600 MB "
                f"= {_size(limit)})",
                "<= budget + KV + 600 MB",
                s.peak_rss <= limit,
            )
        )
    return rows


def _findings(get: Lookup, raw: dict, membw: float) -> list[str]:
    """Bullets computed from this run's numbers (each only when its runs succeeded)."""
    lines = []
    env = " ".join(f"{k}={v}" for k, v in OPENMP_DEFAULTS.items())
    for group in ("bf16", "fp32"):
        hf, hf_p = get(group, "transformers"), get(group, f"transformers, {env}")
        bt, bt_d = get(group, "bloomtui resident"), get(group, "bloomtui resident, default OpenMP env")
        if hf and hf_p and bt and bt_d:
            weights = raw["budgets"][f"full_{group}"]
            lines.append(
                f"- {group}, fully in RAM: `{env}` (set by bloomtui's CLI and app) costs bloomtui "
                f"{bt.decode / bt_d.decode:.2f}x and transformers {hf_p.decode / hf.decode:.2f}x per token on this "
                f"machine in this run. Without it bloomtui decodes at {hf.decode / bt_d.decode:.2f}x transformers' "
                f"speed; the memory floor ({format_size(weights)} / {membw / 1e9:.1f} GB/s = "
                f"{_s(weights / membw)} s) caps any contender at {hf.decode / (weights / membw):.2f}x."
            )
    seed_c, bt_c = get("seed", "seed method cold"), get("seed", "bloomtui all streamed cold")
    raw_c = get("seed", "raw read all cold")
    if seed_c and bt_c and raw_c:
        lines.append(
            f"- Cold, every block streamed, both methods are bound by the disk: bloomtui is at "
            f"{bt_c.decode / raw_c.decode:.2f}x the raw read time of its bytes, the seed's method at "
            f"{seed_c.decode / raw_c.decode:.2f}x of the same bytes (it also re-reads the embedding for the head "
            "and unpickles every shard). No reader of these bytes can be 3x faster than the seed here; warm "
            "(bytes in RAM, as for the compute-bound part of a big model) the gap is the method's own cost."
        )
    acc = get("bf16", "accelerate disk offload")
    if acc:
        budget = raw["budgets"]["quarter_bf16"]
        lines.append(
            f"- Accelerate disk offload with `max_memory={{'cpu': {format_size(budget)}}}` put the whole model on "
            f"'disk' (safetensors mapped in place) and peaked at {format_size(acc.peak_rss)} RSS: mapped pages "
            "count, so the budget does not bound its memory; bloomtui's streaming runs stay within theirs."
        )
    big = raw.get("big") or {}
    st = (big.get("stream") or {}).get("runs") or []
    if st and st[0].get("engine_peak_rss") and st[0]["engine_peak_rss"] < 0.9 * st[0]["peak_rss"]:
        r = st[0]
        lines.append(
            f"- 176B-width streaming: the process peaked at {format_size(r['peak_rss'])} RSS (VmHWM) while the "
            f"engine's own `Done.peak_rss` reported {format_size(r['engine_peak_rss'])}: it samples RSS after a "
            "block's pages are released, so it misses the peak the UI should show."
        )
    return lines


def _shape(folder: str) -> tuple[str, str]:
    """(title, description) of a demo checkpoint from its config.json."""
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text())
        h, n, heads, v = cfg["hidden_size"], cfg["n_layer"], cfg["n_head"], cfg["vocab_size"]
    except (OSError, ValueError, KeyError):
        return Path(folder).name, "shape unknown"
    title = "bloom-560m shape" if (h, n, heads, v) == (1024, 24, 16, 250880) else f"demo model, hidden {h}"
    return title, f"{n} blocks, hidden {h}, {heads} heads, {v}-row tied embedding, random weights"


def markdown(raw: dict, chart: Path | None) -> str:
    jobs = [Summary(j) for j in raw["jobs"]]
    by = {(s.group, s.name): s for s in jobs}
    m = raw["machine"]
    st = raw["settings"]
    membw_job = by.get(("floor", "memory bandwidth"))
    membw = _med([r["bandwidth"] for r in membw_job.runs]) if membw_job and membw_job.ok else math.nan
    budgets = raw["budgets"]
    parallel = f" ({st['parallel']} at once)" if st.get("parallel", 1) > 1 else ""
    out: list[str] = [
        "# bloomtui benchmarks"
        + (" (quick mode: tiny checkpoints, one torch thread per process, numbers mean little)" if st["quick"] else ""),
        "",
        "Generated by `" + " ".join(raw["argv"]) + f"` in {raw['total_s'] / 60:.1f} min "
        f"(checkpoint build {raw['build_s']:.0f} s, cached). Every contender ran in its own process; "
        f"contenders ran round-robin{parallel}, "
        f"{st['repeats']} repeat(s); numbers are medians. Prompt: the seed "
        f"article's SQL prompt; greedy; {st['tokens']} new tokens (seed method {st['seed_tokens']}, "
        f"Accelerate {st['accelerate_tokens']}). Decode s/token excludes the first token (prefill = time to "
        "first token) and load time; it is the median of a run's per-token times (robust to the shared "
        "machine's spikes), then the median over repeats (min–max of the repeats in brackets).",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores (torch threads {m['torch_threads']}); family: "
        f"{m.get('cpu_family', 'not recorded')} (the figures below are this family's)",
        f"- RAM: {format_size(m['ram'])}; disk: {m['disk']}",
        f"- {m['os']}, Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, "
        f"accelerate {m['accelerate']}",
        f"- load average (1/5/15 min) at start {', '.join(f'{x:.2f}' for x in m['load_start'])}, "
        f"at end {', '.join(f'{x:.2f}' for x in m['load_end'])} (a shared machine: other jobs ran beside)",
        f"- memory copy bandwidth (torch copy of {format_size(st['membw_bytes'])}, read + write bytes): "
        f"{membw / 1e9:.1f} GB/s",
        "",
        "## Goals",
        "",
        "| goal | measured | target | met |",
        "|---|---|---|---|",
    ]
    get = Lookup(by)
    extra = prefill.prefill_goals(get, raw) + sections.quality_goals(get) + drafting.draft_goals(get)
    if raw.get("big"):
        extra += sections.int4_projection_goal(raw)
    for goal, measured, target, met in goals(get) + extra:
        verdict = "(info)" if goal.startswith("(not") else "n/a" if met is None else "yes" if met else "**no**"
        out.append(f"| {goal} | {measured} | {target} | {verdict} |")
    findings = _findings(get, raw, membw) + sections.findings(get, raw)
    if findings:
        out += ["", "## What the numbers say", "", *findings]
    models = raw["models"]
    for group, title in (("bf16", "bfloat16"), ("fp32", "float32")):
        hf = by.get((group, "transformers"))
        vs = hf.decode if hf and hf.ok else None
        out += [
            "",
            f"## {_shape(models[group])[0]} ({title}), `{Path(models[group]).name}`",
            "",
            f"{_shape(models[group])[1]}; bloomtui holds "
            f"{format_size(budgets['full_' + group])} fully resident"
            + (f"; streaming budget {format_size(budgets['quarter_bf16'])} (~1/4)." if group == "bf16" else "."),
            "",
            GEN_HEADER,
        ]
        for s in jobs:
            if s.group != group:
                continue
            if s.kind in GEN_KINDS:
                note = ""
                if s.kind == "accelerate" and s.ok:
                    note = "placement " + ", ".join(f"{k}: {v}" for k, v in s.runs[0].get("placement", {}).items())
                out.append(_gen_row(s, hf, vs, note))
            elif s.kind == "rawread" and s.ok:
                out.append(_floor_row(f"floor: {s.name} of the streamed bytes", s.decode, _size(s.bytes_per_token)))
        weights = budgets["full_" + group]
        if not math.isnan(membw):
            out.append(_floor_row("floor: resident weights / memory bandwidth", weights / membw, _size(weights)))
    seed_rows = [s for s in jobs if s.group == "seed"]
    hf16 = by.get(("bf16", "transformers"))
    out += [
        "",
        f"## The seed article's method vs bloomtui, every block streamed (`{Path(models['seed']).name}`)",
        "",
        "bigscience layout (one `.bin` per block, as bigscience/bloom), bf16. Seed method: per token, "
        "`torch.load` + `load_state_dict` into one reused transformers `BloomBlock` for every block, the whole "
        "sequence re-run, embeddings and LM head re-read (benchmarks/seed.py). bloomtui: the minimum budget "
        f"({format_size(budgets['min_seed'])}: two block buffers), so every block and the LM head stream.",
        "",
        GEN_HEADER,
    ]
    for s in seed_rows:
        if s.kind in GEN_KINDS:
            out.append(_gen_row(s, hf16, hf16.decode if hf16 and hf16.ok else None))
        elif s.kind == "rawread" and s.ok:
            out.append(_floor_row(f"floor: {s.name} of the streamed bytes", s.decode, _size(s.bytes_per_token)))
    out += ["", "## Where streamed decode time goes (bloomtui, per decode token, medians)", ""]
    out += [
        "| run | s/token | block compute | compute stalled on reads | prefetch read/populate time (blocks) | "
        "other (head chunks, sampling, events) |",
        "|---|---|---|---|---|---|",
    ]
    for s in jobs:
        if s.kind == "bloomtui" and s.ok and s.group != "draft":  # drafted passes yield several tokens each
            comp, wait, read = s.phase("compute"), s.phase("wait"), s.phase("read")
            other = s.decode - comp - wait
            out.append(f"| {s.group}: {s.name} | {_s(s.decode)} | {_s(comp)} | {_s(wait)} | {_s(read)} | {_s(other)} |")
    out += [""]
    if "bf16_int4" in models:
        out += sections.compressed_section(get, raw, GEN_HEADER, _gen_row, _floor_row)
    if any(s.group.startswith("prefill") for s in jobs):
        out += prefill.long_prompt_section(get, raw)
    if any(s.group == "quality" for s in jobs):
        out += sections.quality_section(get, raw)
    if any(s.group == "draft" for s in jobs):
        out += drafting.draft_section(get, raw)
    if not st["skip_big"]:
        out += big_section(raw, membw)
    if chart is not None:
        out += ["## Chart", "", f"![decode seconds per token]({chart.as_posix()})", ""]
    out += [
        "## Method notes",
        "",
        "- Cold: before a cold run the checkpoint files are evicted with `posix_fadvise(POSIX_FADV_DONTNEED)`; "
        "during a cold bloomtui run the harness evicts each streamed block's bytes right after the block is "
        "used (and the LM head's after each token), as the engine itself does when a model does not fit in "
        "RAM, so every token reads from the disk again. The eviction's own time is subtracted. The seed "
        "method's cold run evicts every shard before each token. On this VM the virtual disk may itself be "
        "cached by the host: cold means cold for this guest's kernel, at whatever speed the host gives.",
        "- Raw read floor: the very byte ranges bloomtui's prefetcher reads per decode token (same budget, "
        "same plan), read with `os.preadv` in 32 MiB chunks into one preallocated buffer, in the same cache "
        "state. Memory floor: resident weight bytes / copy bandwidth. For prepared (int8/int4) folders the floor "
        "and the cold eviction cover what they stream: blocks' `.qweight`/`.scales`, the int8 LM head's chunks "
        "with their scales, embedding rows with their scales.",
        "- transformers and Accelerate: `generate(do_sample=False, eos_token_id=None)`, default DynamicCache; "
        "per-token times are stamped by a LogitsProcessor (called right after each forward pass). Accelerate: "
        "`from_pretrained(device_map='auto', max_memory={'cpu': budget}, offload_folder=...)`, page cache "
        "warm.",
        f"- Environment: bloomtui's runs get `{' '.join(f'{k}={v}' for k, v in OPENMP_DEFAULTS.items())}`, which "
        "its CLI and app set before torch loads (a short OpenMP spin before waiters sleep; on a busy 2-core "
        "machine long-spinning waiters stall whole scheduler slices, see bloomtui/openmp.py). transformers "
        "runs once as its users run it (default environment) and once "
        "with the same setting; the resident goal is judged against the faster of the two. bloomtui resident "
        "also runs once without it, to show what the setting costs on a quiet machine.",
        "- Peak RSS is the high-water mark of the contender's own process (`VmHWM`, Python, torch and the "
        "tokenizer included; not `ru_maxrss`, which keeps the RSS the harness had when it started the worker).",
        "- Greedy ids are compared with transformers' in the same dtype; in bf16, different but equally valid "
        "operation orders may round differently and pick another token after a near tie.",
        "",
        "## Exact commands",
        "",
        "```sh",
        "# from the repository root; checkpoints are built by the harness (bloomtui.demo) under --work",
    ]
    for s in jobs:
        out.append(f"{s.command}  # {s.group}: {s.name}")
    if raw.get("big"):
        for part in ("bigblock", "stream", "bigblock_int4", "stream_int4"):
            if part in raw["big"]:
                out.append(f"{raw['big'][part]['command']}  # {raw['big'][part]['name']}")
    out += ["```", ""]
    return "\n".join(out)


# bloomtui blue, transformers and Accelerate orange, the seed's method red, floors grey.
_COLORS = {"bloomtui": "#1f77b4", "hf": "#ff7f0e", "accelerate": "#ff7f0e", "seed": "#d62728"}


def chart(raw: dict, path: Path) -> Path | None:
    """A bar chart of decode seconds per token (log scale), if matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = []
    for job in raw["jobs"]:
        s = Summary(job)
        if s.ok and (s.kind in GEN_KINDS or s.kind == "rawread"):
            rows.append((f"{s.group}: {s.name}", s.decode, _COLORS.get(s.kind, "#7f7f7f")))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.2))
    labels, values, colors = zip(*rows, strict=True)
    ax.barh(range(len(rows)), values, color=colors)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("decode seconds per token (median, log scale; lower is better); grey: floors")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
