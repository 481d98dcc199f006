"""Report sections for compressed weights, long prompts, quality and BLOOM-176B int4 (used by report.py)."""

from __future__ import annotations

import math
from pathlib import Path

from benchmarks import projection as proj
from benchmarks.report_format import num as _s
from benchmarks.report_format import ratio as _r
from bloomtui.sizes import format_size

Goal = tuple[str, str, str, bool | None]

SCHEMES = ("bf16", "int8", "int4")
INT4_PROJECTION_TARGET = 13.0  # s/token, BLOOM-176B int4, 10 GB budget, 7 GB/s (issue 8)
PREFILL_VS_HF = 2.5  # issue 12: prefill >= 2.5x transformers' bf16 forward
PREFILL_VS_FP32_PEAK = 0.7  # ... and >= 0.7x the fp32 GEMM peak
NOT_SLOWER = 1.05  # "not slower than today", with 5% for a shared machine's noise
CANCEL_TARGET = 1.0
PPL_TARGETS = {"int8": 1.01, "int4": 1.06}
DESKTOP_GFLOPS = (150, 300, 600)


def agreement(ids: list[int] | None, ref: list[int] | None) -> str:
    """How far two greedy id sequences agree: the equal prefix and equal positions."""
    if not ids or not ref:
        return "n/a"
    n = min(len(ids), len(ref))
    prefix = next((i for i in range(n) if ids[i] != ref[i]), n)
    same = sum(a == b for a, b in zip(ids[:n], ref[:n], strict=True))
    return f"all {n} equal" if prefix == n else f"first {prefix}/{n} equal, {same}/{n} positions"


class Lookup:
    """Finds successful job summaries by (group, name)."""

    def __init__(self, by: dict) -> None:  # (group, name) -> report.Summary
        self.by = by

    def __call__(self, group: str, name: str):  # noqa: ANN204 - a report.Summary or None
        s = self.by.get((group, name))
        return s if s is not None and s.ok else None

    def run(self, group: str, name: str) -> dict | None:
        s = self(group, name)
        return s.runs[0] if s else None


# --- compressed weights ----------------------------------------------------------------------------------


def compressed_goals(get: Lookup) -> list[Goal]:
    rows: list[Goal] = []
    bf = get("bf16", "bloomtui resident")
    for scheme, target in (("int8", 1.5), ("int4", 2.0)):
        q = get(scheme, "bloomtui resident")
        if bf and q:
            r = bf.decode / q.decode
            rows.append(
                (
                    f"compressed, fully in RAM decode: {scheme} tokens/s ÷ bf16 tokens/s (bloomtui, same shape)",
                    f"{r:.2f}x ({_s(q.decode)} vs {_s(bf.decode)} s/token)",
                    f">= {target}x",
                    r >= target,
                )
            )
        else:
            rows.append((f"compressed, fully in RAM decode, {scheme}", "missing run", f">= {target}x", None))
    bw, qw = get("bf16", "bloomtui stream warm"), get("int4", "bloomtui stream warm")
    if bw and qw:
        r = bw.decode / qw.decode
        rows.append(
            (
                "compressed, RAM budget 1/4 of the bf16 model, warm: int4 tokens/s ÷ bf16 tokens/s",
                f"{r:.2f}x ({_s(qw.decode)} vs {_s(bw.decode)} s/token)",
                ">= 2x",
                r >= 2,
            )
        )
    bc, qc = get("bf16", "bloomtui stream cold"), get("int4", "bloomtui stream cold")
    if bc and qc:
        r = qc.decode / bc.decode
        rows.append(
            (
                "compressed, RAM budget 1/4 of the bf16 model, cold: int4 s/token ÷ bf16 s/token",
                f"{r:.2f}x ({_s(qc.decode)} vs {_s(bc.decode)} s/token)",
                "<= 0.35x",
                r <= 0.35,
            )
        )
    for scheme in ("int8", "int4"):
        resident = get(scheme, "bloomtui resident")
        for state in ("warm", "cold"):
            st, raw = get(scheme, f"bloomtui stream {state}"), get(scheme, f"raw read {state}")
            if st and raw and resident:
                floor = max(raw.decode, resident.decode)
                r = st.decode / floor
                rows.append(
                    (
                        f"compressed {scheme}, RAM budget 1/4 of the bf16 model, {state}: s/token ÷ max(raw read of "
                        "its streamed bytes, its resident s/token)",
                        f"{r:.2f}x ({_s(st.decode)} vs max({_s(raw.decode)}, {_s(resident.decode)}) s)",
                        "<= 1.15x",
                        r <= 1.15,
                    )
                )
            else:
                rows.append((f"compressed {scheme}, streaming {state}", "missing run", "<= 1.15x", None))
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


def compressed_section(get: Lookup, raw: dict, gen_header: str, gen_row, floor_row) -> list[str]:  # noqa: ANN001
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
        group = scheme
        res, w, c = (
            get(group, "bloomtui resident"),
            get(group, "bloomtui stream warm"),
            get(group, "bloomtui stream cold"),
        )
        rw, rc = get(group, "raw read warm"), get(group, "raw read cold")
        seed_group = "seed" if scheme == "bf16" else scheme
        aw, ac = get(seed_group, "bloomtui all streamed warm"), get(seed_group, "bloomtui all streamed cold")

        def floor(x, raw_read, res=res):  # noqa: ANN001, ANN202 - report.Summary or None
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


# --- long prompts ----------------------------------------------------------------------------------------


def _peaks(get: Lookup) -> tuple[float, float]:
    g = get.run("prefill", "GEMM peak")
    return (g["float32_gflops"], g["bfloat16_gflops"]) if g else (math.nan, math.nan)


def _model_shape(folder: str) -> tuple[int, int]:
    import json

    cfg = json.loads((Path(folder) / "config.json").read_text())
    return cfg["n_layer"], cfg["hidden_size"]


def _prefill_groups(raw: dict) -> list[tuple[int, str]]:
    return [(n, f"prefill {n}") for n in raw["settings"].get("prompt_lengths", ())]


def _path_label(run: dict) -> str:
    if run.get("dtype") == "float32":
        return "fp32 GEMM"
    if run.get("upcast") is None:
        return "engine's own"
    return "fp32 tiles (upcast)" if run["upcast"] else "bf16 GEMM (native)"


def prefill_goals(get: Lookup, raw: dict) -> list[Goal]:
    rows: list[Goal] = []
    fp32_peak, _ = _peaks(get)
    n_layer, hidden = _model_shape(raw["models"]["bf16"])
    for tokens, group in _prefill_groups(raw):
        bt, hf = get.run(group, "bloomtui bf16, path it chooses"), get.run(group, "transformers bf16 forward")
        if bt and hf:
            r = hf["prefill_s"] / bt["prefill_s"]
            rows.append(
                (
                    f"prefill of {bt['prompt_tokens']} tokens, bf16 560m shape: transformers' forward s ÷ bloomtui "
                    "s (the path bloomtui chooses)",
                    f"{r:.2f}x ({_s(bt['prefill_s'])} vs {_s(hf['prefill_s'])} s; {_path_label(bt)})",
                    f">= {PREFILL_VS_HF}x",
                    r >= PREFILL_VS_HF,
                )
            )
            gflops = proj.prefill_flops(bt["prompt_tokens"], n_layer, hidden) / bt["prefill_s"] / 1e9
            r = gflops / fp32_peak
            rows.append(
                (
                    f"prefill of {bt['prompt_tokens']} tokens, bf16: FLOPS achieved ÷ this machine's fp32 GEMM peak",
                    f"{r:.2f}x ({gflops:.0f} vs {fp32_peak:.0f} GFLOPS)",
                    f">= {PREFILL_VS_FP32_PEAK}x",
                    r >= PREFILL_VS_FP32_PEAK if not math.isnan(r) else None,
                )
            )
        else:
            rows.append((f"prefill of ~{tokens} tokens, bf16", "missing run", f">= {PREFILL_VS_HF}x", None))
        new, old = get.run(group, "bloomtui fp32"), get.run(group, "bloomtui fp32, engine before chunked prefill")
        if new and old:
            r = new["prefill_s"] / old["prefill_s"]
            rows.append(
                (
                    f"prefill of {new['prompt_tokens']} tokens, fp32 560m shape: bloomtui s ÷ the engine before "
                    "chunked prefill s (not slower than today)",
                    f"{r:.2f}x ({_s(new['prefill_s'])} vs {_s(old['prefill_s'])} s)",
                    f"<= {NOT_SLOWER}x",
                    r <= NOT_SLOWER,
                )
            )
    cancel = get.run("prefill", "cancel during a long prefill")
    if cancel:
        worst = max(cancel["latency_s"])
        rows.append(
            (
                f"cancel during a {cancel['prompt_tokens']}-token prefill (set {cancel['after_s']:g} s in): time until "
                "generate returns, worst of "
                f"{len(cancel['latency_s'])}",
                f"{_s(worst)} s ({', '.join(_s(x) for x in cancel['latency_s'])}; returned Cancelled: "
                f"{sum(cancel['cancelled'])}/{len(cancel['cancelled'])})",
                f"<= {CANCEL_TARGET:g} s",
                worst <= CANCEL_TARGET and all(cancel["cancelled"]),
            )
        )
    else:
        rows.append(("cancel during a long prefill", "missing run", f"<= {CANCEL_TARGET:g} s", None))
    return rows


def long_prompt_section(get: Lookup, raw: dict) -> list[str]:
    fp32_peak, bf16_peak = _peaks(get)
    gemm = get.run("prefill", "GEMM peak")
    n_layer, hidden = _model_shape(raw["models"]["bf16"])
    chooses = next((r for _, g in _prefill_groups(raw) if (r := get.run(g, "bloomtui bf16, path it chooses"))), None)
    out = [
        "## Long prompts: prefill",
        "",
        f"Prompts of the held-out English sample (training/heldout-sample.txt) cut to N tokens, on "
        f"`{Path(raw['models']['bf16']).name}` and `{Path(raw['models']['fp32']).name}`, fully resident. bloomtui: "
        "time to first token of `generate(max_new_tokens=1)` (embedding, every block in row chunks of "
        "`PREFILL_ROWS`, ln_f, the head for the last row, sampling), after a 64-token warm-up in the same process. "
        "transformers: one `model(input_ids, logits_to_keep=1)` call on the same ids (the head for the last row "
        "only, as bloomtui and transformers' own `generate` do), after a warm-up.",
        "",
        "FLOPs counted: `2 * P * T + n_layer * 2 * H * T * (T + 1)` with P = parameters in the blocks "
        f"({n_layer} x (12 H^2 + 13 H), H = {hidden}), T prompt tokens; the second term is attention's QK^T and PV "
        "over the causal pairs. Embedding, head and softmax are not counted.",
        "",
        f"- GEMM peak on this machine (torch.matmul, {gemm['size'] if gemm else '?'}^3, best of 3): "
        f"**fp32 {_s(fp32_peak)} GFLOPS, bf16 {_s(bf16_peak)} GFLOPS**.",
        f"- The path bloomtui chooses here (`cpu_profile()`, cached per machine; `bloomtui info` prints it): "
        f"{chooses['profile'] if chooses else 'n/a'}. "
        + (
            "This CPU has native bf16 arithmetic (AVX512-BF16), so the bf16 GEMM wins and the fp32-tile (upcast) "
            "path is not chosen; it is still measured below, forced."
            if chooses and chooses.get("chosen_upcast") is False
            else "The other path is measured below, forced."
        ),
        "",
        "| prompt tokens | contender | multiply path | prefill s (runs) | GFLOPS | ÷ fp32 peak | ÷ bf16 peak "
        "| transformers bf16 s ÷ this |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _tokens, group in _prefill_groups(raw):
        hf = get.run(group, "transformers bf16 forward")
        for s in get.by.values():
            if s.group != group:
                continue
            if not s.ok:
                out.append(f"| | {s.name} | failed: {'; '.join(dict.fromkeys(s.errors))} | | | | | |")
                continue
            r = s.runs[0]
            label = _path_label(r) if s.kind == "prefill" else ("bf16" if "bf16" in s.name else "fp32")
            gflops = proj.prefill_flops(r["prompt_tokens"], n_layer, hidden) / r["prefill_s"] / 1e9
            out.append(
                f"| {r['prompt_tokens']} | {s.name} | {label} | {_s(r['prefill_s'])} "
                f"({', '.join(_s(x) for x in r['runs_s'])}) | {gflops:.0f} | {_r(gflops / fp32_peak)} | "
                f"{_r(gflops / bf16_peak)} | {_r(hf['prefill_s'] / r['prefill_s']) if hf else 'n/a'} |"
            )
    cancel = get.run("prefill", "cancel during a long prefill")
    if cancel:
        out += [
            "",
            f"Cancel: `generate` of a {cancel['prompt_tokens']}-token prompt in a thread, the cancel event set "
            f"{cancel['after_s']:g} s in (mid-prefill), time until `generate` returns: "
            f"{', '.join(_s(x) for x in cancel['latency_s'])} s "
            f"(returned `Cancelled` {sum(cancel['cancelled'])}/{len(cancel['cancelled'])}).",
        ]
    out += [
        "",
        "Projection, BLOOM-176B prefill (compute-bound: FLOPs / sustained GFLOPS; the 352 GB of bf16 weights are "
        "also read once, 50 s at 7 GB/s, overlapped). The seed's desktop (i5 11th gen, 6 cores, AVX-512 without "
        "BF16, 16 GB): an assumed sustained fp32 GEMM rate of 150 / 300 / 600 GFLOPS (its theoretical fp32 peak is "
        "~800 GFLOPS; bloomtui multiplies in fp32 tiles there, as its bf16 GEMM is slower).",
        "",
        "| prompt tokens | FLOPs | at 150 GFLOPS | at 300 GFLOPS | at 600 GFLOPS | at the rate bloomtui reached here "
        "(longest prompt above, bf16) |",
        "|---|---|---|---|---|---|",
    ]
    measured = [r for _, g in _prefill_groups(raw) if (r := get.run(g, "bloomtui bf16, path it chooses"))]
    here = measured[-1] if measured else None  # the longest prompt's rate
    rate = proj.prefill_flops(here["prompt_tokens"], n_layer, hidden) / here["prefill_s"] if here else math.nan
    for tokens in (1000, 3000):
        flops = proj.prefill_flops(tokens)
        cells = [f"{flops / g / 1e9 / 60:.0f} min" for g in DESKTOP_GFLOPS]
        out.append(
            f"| {tokens} | {flops:.3g} | {' | '.join(cells)} | {flops / rate / 3600:.1f} h ({rate / 1e9:.0f} GFLOPS) |"
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
    chosen = other = None
    for _tokens, group in _prefill_groups(raw):
        chosen, other = (
            get.run(group, "bloomtui bf16, path it chooses"),
            get.run(group, "bloomtui bf16, other path forced"),
        )
    if chosen and other:
        lines.append(
            f"- Prefill of {chosen['prompt_tokens']} tokens, bf16: the path bloomtui chooses here "
            f"({_path_label(chosen)}) takes {_s(chosen['prefill_s'])} s, the other path forced ({_path_label(other)}) "
            f"{_s(other['prefill_s'])} s ({other['prefill_s'] / chosen['prefill_s']:.2f}x)."
        )
    times = {s: get.run("quality", QUALITY_NAMES[s]) for s in SCHEMES}
    if all(times.values()):
        lines.append(
            "- Scoring the held-out sample (many-row passes) took "
            + " / ".join(f"{_s(times[s]['seconds'])} s" for s in SCHEMES)
            + " for bf16 / int8 / int4 on the trained demo model."
        )
    return lines
