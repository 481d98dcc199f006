"""OpenMP settings bloomtui's CLI and app apply before torch loads.

libgomp's threads spin-wait at every barrier; when anything else wants a core (the app's UI thread, a
browser, another torch program) the spinning starves the very thread it waits for. Measured on this
project's 2-core machine, bloom-560m shape, bf16, decode per token: quiet 0.062 s with the default spin,
0.067 s with a short spin, 0.082 s with sleeping waiters (OMP_WAIT_POLICY=PASSIVE); beside one busy process
1.2-1.4 s with the default spin, 0.15-0.27 s with a short spin (a team of 2; the engine now sizes its team
to the cores other programs leave, engine/compute/cpu_share.py). So a short spin is the default; `bloomtui
measure-openmp` times the three on this machine (quiet, and beside a program that takes half a core in
bursts, which no team size avoids) and keeps the best, which later runs then apply. A user's own OpenMP
settings win.

Nothing here imports torch: it must run before torch loads, and cheaply.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import MutableMapping
from dataclasses import dataclass
from importlib import metadata

POLICIES: dict[str, dict[str, str]] = {
    "short spin": {"GOMP_SPINCOUNT": "10000"},
    "default spin": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
}
"""Wait policies, by name: the environment each sets (the default spin sets nothing)."""
DEFAULT_POLICY = "short spin"
DEFAULTS = POLICIES[DEFAULT_POLICY]
PROFILE_FILE = "openmp-profile.json"
OWN = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
"""The variables a user may set to decide for themselves."""


@dataclass(frozen=True)
class Choice:
    policy: str
    measured: bool
    detail: str = ""
    """How the measurement came out, for `info`."""

    @property
    def environment(self) -> dict[str, str]:
        return POLICIES[self.policy]

    def describe(self) -> str:
        env = " ".join(f"{k}={v}" for k, v in self.environment.items()) or "libgomp's own"
        if self.measured:
            return f"{self.policy} ({env}), measured here: {self.detail}"
        return f"{self.policy} ({env}), not measured on this machine (bloomtui measure-openmp does, in ~30 s)"


def machine_key() -> str:
    """What the best policy depends on: the CPU, its core count, and torch's build."""
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "?"
    return f"{_cpu_name()} | {os.cpu_count()} cores | torch {torch}"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _profile_path():  # noqa: ANN202 - a Path
    from bloomtui.locations import cache_dir

    return cache_dir() / PROFILE_FILE


def chosen() -> Choice:
    """The measured policy for this machine, else the default."""
    try:
        saved = json.loads(_profile_path().read_text())[machine_key()]
        if saved["policy"] in POLICIES:
            return Choice(saved["policy"], True, str(saved.get("detail", "")))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return Choice(DEFAULT_POLICY, False)


def save(choice: Choice) -> None:
    path = _profile_path()
    try:
        saved = json.loads(path.read_text())
        saved = saved if isinstance(saved, dict) else {}
    except (OSError, ValueError):
        saved = {}
    saved[machine_key()] = {"policy": choice.policy, "detail": choice.detail}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(saved, indent=2) + "\n")


def user_set(environ: MutableMapping[str, str] = os.environ) -> bool:
    return any(key in environ for key in OWN)


_applied: Choice | None = None
"""What apply_defaults set in this process (None: nothing, the user's own variables were there)."""


def apply_defaults(environ: MutableMapping[str, str] = os.environ) -> None:
    global _applied
    if not user_set(environ):
        _applied = chosen()
        environ.update(_applied.environment)


def users_own(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Whether the user's own OpenMP wait variables are in effect (not the ones apply_defaults set)."""
    return _applied is None and user_set(environ)


def describe_in_effect(environ: MutableMapping[str, str] = os.environ) -> str:
    """The wait policy this process runs with, for `info`."""
    if _applied is not None:
        return _applied.describe()
    own = " ".join(f"{key}={environ[key]}" for key in OWN if key in environ)
    return f"as set here: {own}" if own else chosen().describe()
