"""Starting and quitting as a user sees them: the app's modules import without torch (the window comes first, the
engine loads behind it), and ctrl+q ends the process even while a worker is stuck in a long engine call."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.tui.test_signals import PtyApp, _env, _wait

REPO = Path(__file__).resolve().parents[2]


def test_the_app_imports_without_torch() -> None:
    check = (
        "import sys, bloomtui.cli, bloomtui.tui.app; "
        "heavy = sorted(m for m in ('torch', 'transformers', 'bloomtui.engine.generate') if m in sys.modules); "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, f"imported at start-up: {done.stdout.strip()} {done.stderr[-2000:]}"


STUCK_APP = """
import sys, threading
from bloomtui.tui import app as app_module
from tests.tui.fakes import ScriptedEngine, ScriptedOpener

class Stuck(ScriptedEngine):
    def generate_many(self, prompts, params, on_event, cancel, draft=None):
        # A block that never ends and never looks at the cancel flag (reading one of a huge model's blocks from
        # a slow disk is like this for seconds).
        open(sys.argv[2], "w").close()
        threading.Event().wait()

init = app_module.BloomApp.__init__
app_module.BloomApp.__init__ = lambda self, model, options, **kw: init(
    self, model, options, opener=ScriptedOpener(Stuck()), **kw
)
from bloomtui.cli import main
sys.exit(main(sys.argv[1:2]))
"""


def test_quit_does_not_wait_for_a_stuck_run(tmp_path: Path) -> None:
    started = tmp_path / "started"
    env = {**_env(tmp_path), "PYTHONPATH": str(REPO)}  # for tests.tui.fakes
    app = PtyApp([sys.executable, "-c", STUCK_APP, "bigscience/bloom-560m", str(started)], env)
    try:
        _wait(lambda: not app.cooked(), 60, "raw mode", app)
        # Keys sent before the editor has focus are lost: type and submit until the run is under way.
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline and app.proc.poll() is None:
            app.write(b"Hello\n")
            time.sleep(1.0)
        assert started.exists(), "the run never started"
        app.write(b"\x11")  # ctrl+q
        app.proc.wait(timeout=30)  # before this change: forever (the loop's shutdown joined the worker thread)
        assert app.proc.returncode == 0
        assert app.cooked(), "terminal left in raw mode"
    finally:
        app.close()
