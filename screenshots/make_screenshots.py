"""Regenerate the screenshots: the real app on the built-in demo model, mid-generation, after cancel,
drafting with the shipped trained-draft (caught mid verify pass, its guesses dimmed), and four samples of one
prompt streaming side by side (caught mid decode pass).

    python screenshots/make_screenshots.py           # writes screenshots/*.svg, and *.png if rsvg-convert exists
    python screenshots/make_screenshots.py samples   # only some: main (mid-generation, after cancel), drafting,
                                                     # samples

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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bloomtui.settings import Settings

HERE = Path(__file__).resolve().parent
SIZE = (140, 45)
PROMPT = "A list comprehension is"
DRAFT_PROMPT = "The os.path module"
SAMPLES_PROMPT = "The most important thing to remember about lists is that"
SHOTS = {
    "main": ("app-mid-generation.svg", "app-after-cancel.svg"),
    "drafting": ("app-drafting.svg",),
    "samples": ("app-samples.svg",),
}


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


class _PauseMidPass:
    """Wraps the real engine handle: the first pass of `kind` after `after` tokens waits at block 4 until
    released, so the screenshot shows the engine mid-pass (as it is for most of a real run's time) with what it
    streams on screen (a draft's guesses, four samples), not a race with a fast demo model."""

    multi_sequence = True

    def __init__(self, inner, after: int, kind: str) -> None:  # noqa: ANN001 - a RealEngine
        self.inner, self.info, self.baseline_rss = inner, inner.info, inner.baseline_rss
        self.after, self.kind = after, kind
        self.paused, self.release = threading.Event(), threading.Event()

    def _sink(self, on_event):  # noqa: ANN001, ANN202
        def sink(event) -> None:  # noqa: ANN001
            on_event(event)
            if (
                getattr(event, "kind", None) == self.kind
                and event.index == 3
                and event.token_index >= self.after
                and not self.release.is_set()
            ):
                self.paused.set()
                self.release.wait(30)

        return sink

    def generate(self, prompt, params, on_event, cancel, draft=None):  # noqa: ANN001, ANN201
        return self.inner.generate(prompt, params, self._sink(on_event), cancel, draft)

    def generate_many(self, prompts, params, on_event, cancel, draft=None):  # noqa: ANN001, ANN201
        return self.inner.generate_many(prompts, params, self._sink(on_event), cancel, draft)

    def draft_name(self, draft):  # noqa: ANN001, ANN201
        return self.inner.draft_name(draft)

    def rss(self) -> int:
        return self.inner.rss()

    def close(self) -> None:
        self.inner.close()


async def _paused_shot(
    name: str, prompt: str, settings: Settings, kind: str, after: int, draft: str | None = None, settle: float = 0.8
) -> None:
    """The demo app with `settings`, caught in the first `kind` pass after `after` tokens: saved as `name`."""
    from bloomtui.tui.app import BloomApp
    from bloomtui.tui.engine_handle import DEMO

    app = BloomApp(DEMO, find_models=list, cursor_blink=False, draft=draft)
    app.settings = settings
    opener, paused = app.opener, []

    def pausing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        paused.append(_PauseMidPass(opener(*args, **kwargs), after, kind))
        return paused[-1]

    app.opener = pausing
    async with app.run_test(size=SIZE) as pilot:
        while app.handle is None:
            await pilot.pause(0.05)
        app.insert_prompt(prompt)
        await pilot.press("ctrl+j")
        while not paused[0].paused.is_set():
            await pilot.pause(0.02)
        await pilot.pause(settle)  # the last pieces and a panel redraw arrive
        app.save_screenshot(name, str(HERE))
        paused[0].release.set()
        await pilot.press("escape")
        while app.running:
            await pilot.pause(0.02)


async def _drafting() -> None:
    from bloomtui.settings import Settings

    settings = Settings(max_new_tokens=1000, repetition_penalty=1.2)
    await _paused_shot("app-drafting.svg", DRAFT_PROMPT, settings, "verify", 60, draft="trained-draft")


async def _samples() -> None:
    from bloomtui.settings import Settings

    # Samples sample (the demo's own default is greedy): at its 0.8 / top-k 50 / top-p 0.95, seeds 3..6.
    settings = Settings(max_new_tokens=1000, repetition_penalty=1.2, samples=4, seed=3)
    await _paused_shot("app-samples.svg", SAMPLES_PROMPT, settings, "decode", 70)


def main(names: list[str]) -> int:
    unknown = set(names) - set(SHOTS)
    if unknown:
        print(f"unknown shots {sorted(unknown)}; choose from {', '.join(SHOTS)}", file=sys.stderr)
        return 2
    names = names or list(SHOTS)
    makers = {"main": _main, "drafting": _drafting, "samples": _samples}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("CONFIG", "DATA", "CACHE"):
            os.environ[f"BLOOMTUI_{name}_DIR"] = str(Path(tmp) / name.lower())
        for name in names:
            asyncio.run(makers[name]())
    converter = shutil.which("rsvg-convert")
    if converter is None:
        print("rsvg-convert not found (apt-get install librsvg2-bin): SVGs only", file=sys.stderr)
        return 0
    for svg in (svg for name in names for svg in SHOTS[name]):
        subprocess.run([converter, str(HERE / svg), "-o", str(HERE / svg.replace(".svg", ".png"))], check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
