"""Regenerate the screenshots: the real app on the built-in demo model, mid-generation and after cancel.

    python screenshots/make_screenshots.py        # writes screenshots/*.svg, and *.png if rsvg-convert exists

Runs headless in throw-away config/data/cache dirs, so it neither reads nor changes a user's settings. The
demo model is the small one trained on the Python docs; the panel numbers are this machine's real ones.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZE = (140, 45)
PROMPT = "A list comprehension is"


async def _main() -> None:
    from bloomtui.settings import Settings
    from bloomtui.tui.app import BloomApp
    from bloomtui.tui.engine_handle import DEMO

    app = BloomApp(DEMO, find_models=list, cursor_blink=False)
    # Greedy with a repetition penalty: a model this small otherwise loops on its favourite phrase.
    app.settings = Settings(max_new_tokens=1000, repetition_penalty=1.2)
    async with app.run_test(size=SIZE) as pilot:
        while app.handle is None:
            await pilot.pause(0.05)
        app.insert_prompt(PROMPT)
        await pilot.press("ctrl+j")
        while app.tracker.snapshot().tokens < 60:
            await pilot.pause(0.01)
        await pilot.pause(0.2)  # one more panel poll (8 Hz), so the panel matches the text
        app.save_screenshot("app-mid-generation.svg", str(HERE))
        await pilot.press("escape")
        while app.running:
            await pilot.pause(0.02)
        while app._notifications:  # let the "Cancelling" toast expire
            await pilot.pause(0.1)
        await pilot.pause(0.2)
        app.save_screenshot("app-after-cancel.svg", str(HERE))


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("CONFIG", "DATA", "CACHE"):
            os.environ[f"BLOOMTUI_{name}_DIR"] = str(Path(tmp) / name.lower())
        asyncio.run(_main())
    converter = shutil.which("rsvg-convert")
    if converter is None:
        print("rsvg-convert not found (apt-get install librsvg2-bin): SVGs only", file=sys.stderr)
        return 0
    for svg in ("app-mid-generation.svg", "app-after-cancel.svg"):
        subprocess.run([converter, str(HERE / svg), "-o", str(HERE / svg.replace(".svg", ".png"))], check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
