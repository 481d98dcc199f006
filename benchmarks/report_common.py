"""What the report's sections share: number formatting (medians that skip missing values, n/a for them), a job's
summary over its repeats, runs looked up by (group, name), and the goal rows more than one section judges."""

from __future__ import annotations

import math
import statistics

from bloomtui.sizes import format_size

Goal = tuple[str, str, str, bool | None]
"""(goal, measured, target, met: None when a run is missing)."""
FLOOR_TARGET = 1.15  # streaming s/token <= 1.15x max(raw read of the streamed bytes, resident s/token)


def med(values) -> float:  # noqa: ANN001 - any iterable of numbers or None
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else math.nan


def num(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


def ratio(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.2f}x"


def size(n: float | None) -> str:
    return "n/a" if n is None or (isinstance(n, float) and math.isnan(n)) else format_size(n)


class Summary:
    """Medians over the repeats of one job."""

    def __init__(self, job: dict) -> None:
        self.name: str = job["name"]
        self.group: str = job["group"]
        self.kind: str = job["args"][0]
        self.runs: list[dict] = job["runs"]
        self.errors: list[str] = job["errors"]
        self.command: str = job["command"]

    @property
    def ok(self) -> bool:
        return bool(self.runs)

    def med(self, key: str) -> float:
        return med([r.get(key) for r in self.runs])

    @property
    def decode(self) -> float:
        """Seconds per decode token (for floors: per token's worth of reads or copies)."""
        if self.kind == "rawread":
            return med([med(r["token_s"]) for r in self.runs])
        return self.med("decode_s")

    @property
    def decode_range(self) -> tuple[float, float]:
        if self.kind == "rawread":
            values = [med(r["token_s"]) for r in self.runs]
        else:
            values = [r["decode_s"] for r in self.runs if r.get("decode_s") is not None]
        return (min(values), max(values)) if values else (math.nan, math.nan)

    @property
    def peak_rss(self) -> float:
        return max((r["peak_rss"] for r in self.runs), default=math.nan)

    @property
    def ids(self) -> list[int] | None:
        return self.runs[0].get("ids") if self.runs else None

    def phase(self, key: str) -> float:
        """Median over runs of the per-decode-token median of a BlockDone sum (compute, wait, read, bytes)."""
        return med([med([b[key] for b in r["blocks"][1:]]) for r in self.runs if r.get("blocks")])

    @property
    def bytes_per_token(self) -> float:
        if self.kind == "rawread":
            return self.med("bytes")
        if self.kind == "bloomtui":
            return med([r["bytes_read"] / len(r["token_s"]) for r in self.runs if r.get("bytes_read") is not None])
        return math.nan


class Lookup:
    """Finds successful job summaries by (group, name)."""

    def __init__(self, by: dict[tuple[str, str], Summary]) -> None:
        self.by = by

    def __call__(self, group: str, name: str) -> Summary | None:
        s = self.by.get((group, name))
        return s if s is not None and s.ok else None

    def run(self, group: str, name: str) -> dict | None:
        s = self(group, name)
        return s.runs[0] if s else None


def agreement(ids: list[int] | None, ref: list[int] | None) -> str:
    """How far two greedy id sequences agree: the equal prefix and equal positions."""
    if not ids or not ref:
        return "n/a"
    n = min(len(ids), len(ref))
    prefix = next((i for i in range(n) if ids[i] != ref[i]), n)
    same = sum(a == b for a, b in zip(ids[:n], ref[:n], strict=True))
    return f"all {n} equal" if prefix == n else f"first {prefix}/{n} equal, {same}/{n} positions"


def ratio_goal(
    goal: str, ours: float, ref: float, target: float, at_most: bool = False, unit: str = "s/token", note: str = ""
) -> Goal:
    """A goal on two runs' seconds, measured with both: ref ÷ ours >= target (ours is that much faster), or with
    `at_most`, ours ÷ ref <= target."""
    r = ours / ref if at_most else ref / ours
    shown = f"{r:.2f}x ({num(ours)} vs {num(ref)} {unit}{note})"
    return goal, shown, f"{'<=' if at_most else '>='} {target}x", r <= target if at_most else r >= target


def floor_goal(goal: str, stream: Summary | None, raw: Summary | None, resident: Summary | None, missing: str) -> Goal:
    """Streaming s/token against its floor, max(raw read of the streamed bytes, resident s/token); the `missing`
    row when a run failed."""
    if not (stream and raw and resident):
        return missing, "missing run", f"<= {FLOOR_TARGET}x", None
    r = stream.decode / max(raw.decode, resident.decode)
    shown = f"{r:.2f}x ({num(stream.decode)} vs max({num(raw.decode)}, {num(resident.decode)}) s)"
    return goal, shown, f"<= {FLOOR_TARGET}x", r <= FLOOR_TARGET
