"""Number formatting shared by the report's sections: medians that skip missing values, and n/a for them."""

from __future__ import annotations

import math
import statistics

from bloomtui.sizes import format_size


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
