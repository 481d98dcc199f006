"""Regenerate the screenshots: the real app on the built-in demo model, mid-generation, after cancel, and
drafting with the shipped trained-draft (caught mid verify pass, its guesses dimmed).

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
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZE = (140, 45)
PROMPT = "A list comprehension is"
DRAFT_PROMPT = "The os.path module"


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
        await pilot.pause(0.6)  # one more panel redraw (every ~0.45 s while a run goes), so it matches the text
        app.save_screenshot("app-mid-generation.svg", str(HERE))
        await pilot.press("escape")
        while app.running:
            await pilot.pause(0.02)
        while app._notifications:  # let the "Cancelling" toast expire
            await pilot.pause(0.1)
        await pilot.pause(0.2)
        app.save_screenshot("app-after-cancel.svg", str(HERE))


class _PauseMidVerify:
    """Wraps the real engine handle: the first verify pass after `after` tokens waits at block 4 until
    released, so the screenshot shows a draft's guesses on screen and the engine mid-pass (as they are for
    most of a real run's time), not a race with a fast demo model."""

    def __init__(self, inner, after: int) -> None:  # noqa: ANN001 - a RealEngine
        self.inner, self.info, self.baseline_rss = inner, inner.info, inner.baseline_rss
        self.after = after
        self.paused, self.release = threading.Event(), threading.Event()

    def generate(self, prompt, params, on_event, cancel, draft=None):  # noqa: ANN001, ANN201
        def sink(event) -> None:  # noqa: ANN001
            on_event(event)
            if (
                getattr(event, "kind", None) == "verify"
                and event.index == 3
                and event.token_index >= self.after
                and not self.release.is_set()
            ):
                self.paused.set()
                self.release.wait(30)

        return self.inner.generate(prompt, params, sink, cancel, draft)

    def draft_name(self, draft):  # noqa: ANN001, ANN201
        return self.inner.draft_name(draft)

    def rss(self) -> int:
        return self.inner.rss()

    def close(self) -> None:
        self.inner.close()


async def _drafting() -> None:
    from bloomtui.settings import Settings
    from bloomtui.tui.app import BloomApp
    from bloomtui.tui.engine_handle import DEMO

    app = BloomApp(DEMO, find_models=list, cursor_blink=False, draft="trained-draft")
    app.settings = Settings(max_new_tokens=1000, repetition_penalty=1.2)
    opener, paused = app.opener, []

    def pausing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        paused.append(_PauseMidVerify(opener(*args, **kwargs), after=60))
        return paused[-1]

    app.opener = pausing
    async with app.run_test(size=SIZE) as pilot:
        while app.handle is None:
            await pilot.pause(0.05)
        app.insert_prompt(DRAFT_PROMPT)
        await pilot.press("ctrl+j")
        while not paused[0].paused.is_set():
            await pilot.pause(0.02)
        await pilot.pause(0.8)  # the guesses and a panel redraw arrive
        app.save_screenshot("app-drafting.svg", str(HERE))
        paused[0].release.set()
        await pilot.press("escape")
        while app.running:
            await pilot.pause(0.02)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("CONFIG", "DATA", "CACHE"):
            os.environ[f"BLOOMTUI_{name}_DIR"] = str(Path(tmp) / name.lower())
        asyncio.run(_main())
        asyncio.run(_drafting())
    converter = shutil.which("rsvg-convert")
    if converter is None:
        print("rsvg-convert not found (apt-get install librsvg2-bin): SVGs only", file=sys.stderr)
        return 0
    for svg in ("app-mid-generation.svg", "app-after-cancel.svg", "app-drafting.svg"):
        subprocess.run([converter, str(HERE / svg), "-o", str(HERE / svg.replace(".svg", ".png"))], check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
