"""Regenerate the remote-view screenshot: the real app driving a real `transformers serve` on this machine.

    python screenshots/make_remote_screenshot.py   # writes screenshots/app-remote.svg, and .png if rsvg-convert exists

Serves a copy of the built-in demo model (small, trained on the Python docs) as `bloom-demo` on 127.0.0.1,
greedy with the model's own repetition penalty (its generation_config.json, which the server honours), opens the
app on its URL and saves the screen mid-stream.
Needs `pip install 'transformers[serving]'`. Uses throw-away config/data/cache dirs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
SIZE = (140, 45)
PROMPT = "The most important thing to remember about lists is that"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _shoot(url: str) -> None:
    from bloomtui.settings import Settings
    from bloomtui.tui.app import BloomApp
    from bloomtui.tui.engine_handle import ModelSpec

    app = BloomApp(ModelSpec(url), find_models=list, cursor_blink=False)
    app.settings = Settings(max_new_tokens=1000, sample=False)
    async with app.run_test(size=SIZE) as pilot:
        while app.handle is None:
            await pilot.pause(0.05)
        app.insert_prompt(PROMPT)
        await pilot.press("ctrl+j")
        while app.running and app.tracker.snapshot().tokens < 100:
            await pilot.pause(0.01)
        await pilot.pause(0.6)  # one more panel redraw, so the panel matches the text
        app.save_screenshot("app-remote.svg", str(HERE))
        await pilot.press("escape")
        while app.running:
            await pilot.pause(0.02)


def main() -> int:
    from bloomtui.tui.engine_handle import ensure_demo_model

    with tempfile.TemporaryDirectory() as tmp:
        for name in ("CONFIG", "DATA", "CACHE"):
            os.environ[f"BLOOMTUI_{name}_DIR"] = str(Path(tmp) / name.lower())
        served = Path(tmp) / "bloom-demo"  # the server names the model by the path it was given
        shutil.copytree(ensure_demo_model(), served)
        port = _free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1"}
        command = [sys.executable, "-m", "transformers.cli.transformers", "serve", served.name]
        server = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", "float32"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=tmp,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.25)
            asyncio.run(_shoot(url))
        finally:
            server.terminate()
            server.wait(10)
    converter = shutil.which("rsvg-convert")
    if converter is None:
        print("rsvg-convert not found (apt-get install librsvg2-bin): SVG only", file=sys.stderr)
        return 0
    subprocess.run([converter, str(HERE / "app-remote.svg"), "-o", str(HERE / "app-remote.png")], check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
