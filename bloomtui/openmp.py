"""OpenMP settings bloomtui's CLI and app apply before torch loads.

libgomp's threads spin-wait at every barrier; when anything else wants a core (the app's UI thread, a
browser, another torch program) the spinning starves the very thread it waits for. Measured on this
project's 2-core machine, bloom-560m shape, bf16, decode per token: quiet 0.062 s with the default spin,
0.067 s with a short spin, 0.082 s with sleeping waiters (OMP_WAIT_POLICY=PASSIVE); beside one busy process
1.2-1.4 s with the default spin, 0.15-0.27 s with a short spin. A user's own OpenMP settings win.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

DEFAULTS = {"GOMP_SPINCOUNT": "10000"}


def apply_defaults(environ: MutableMapping[str, str] = os.environ) -> None:
    if "OMP_WAIT_POLICY" not in environ:
        for key, value in DEFAULTS.items():
            environ.setdefault(key, value)
