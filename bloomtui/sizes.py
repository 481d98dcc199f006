"""Human byte sizes: parse `800MB`, `12GiB`, `1.5G`; format 1234567 as `1.2 MB`."""

from __future__ import annotations

import re

from bloomtui.errors import UsageError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_size(text: str, option: str = "--ram-budget") -> int:
    """Parse a byte size; decimal units (MB, GB) and binary ones (MiB, GiB) are both accepted."""
    match = re.fullmatch(r"\s*([-+]?[0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise UsageError(f"{option}: cannot read {text!r} as a size (try 800MB, 12GiB or 1.5G)")
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if value < 1:  # also catches sizes that round down to no byte at all, such as 0.1B
        raise UsageError(f"{option}: size must be positive, got {text!r}")
    return int(value)


def format_size(n: float) -> str:
    """Format bytes with decimal units, 3 significant figures."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError("unreachable")
