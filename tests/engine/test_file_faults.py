"""Model files changing under an open model: the run ends with an error naming the file, never a crash.

Three streaming paths are covered: float32 checkpoints computed in float32 are streamed from a file mapping
(where a truncated file would raise SIGBUS on touch), float16 ones are read with pread into buffers, and
float32 ones again with direct I/O into aligned buffers (`--reads direct`).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bloomtui.engine import Engine, EngineOptions, SamplingParams, events
from bloomtui.engine.plan.residency import budget_for
from bloomtui.engine.weights.checkpoint import Checkpoint
from bloomtui.errors import CheckpointError
from tests.checkpoints import write_checkpoint

PATHS = ("mapped", "read", "direct")
READS = {"mapped": "cached", "read": "cached", "direct": "direct"}


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faults")
    return {
        "mapped": write_checkpoint(root / "f32", preset="small", dtype="float32").path,
        "read": write_checkpoint(root / "f16", preset="small", dtype="float16").path,
        "direct": write_checkpoint(root / "f32-direct", preset="small", dtype="float32").path,
    }


def _copy(originals: dict[str, Path], path: str, tmp_path: Path) -> Path:
    dst = tmp_path / path
    shutil.copytree(originals[path], dst)
    return dst


def _streaming_budget(model: Path) -> int:
    """Keeps one of the four blocks resident: three stream every token."""
    return budget_for(Checkpoint.open(model), 4, resident_blocks=1)


def _weights(model: Path) -> Path:
    return model / "model.safetensors"


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _rewrite(path: Path) -> None:
    data = path.read_bytes()
    with open(path, "wb") as handle:  # O_TRUNC, then the same bytes again: as a copy over the file does
        handle.write(data[:1000])
        handle.flush()
        handle.write(data[1000:])


def _replace(path: Path) -> None:
    tmp = path.with_suffix(".part")
    shutil.copyfile(path, tmp)
    os.replace(tmp, path)  # as a re-download does


FAULTS = {"truncate": _truncate, "delete": os.unlink, "rewrite": _rewrite, "replace": _replace}


@pytest.mark.parametrize("fault", ["truncate", "delete"])
@pytest.mark.parametrize("path", PATHS)
def test_cli_run_survives_file_fault(originals: dict[str, Path], tmp_path: Path, path: str, fault: str) -> None:
    model = _copy(originals, path, tmp_path)
    budget = str(_streaming_budget(model))
    cmd = [sys.executable, "-m", "bloomtui", "generate", str(model), "Hello", "--max-new-tokens", "100000"]
    child = subprocess.Popen(
        [*cmd, "--ignore-eos", "--ram-budget", budget, "--reads", READS[path], "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        lines = []
        assert child.stdout is not None
        streamed = 0
        while streamed < 20:  # well into the run: several tokens of streamed blocks
            line = child.stdout.readline()
            assert line, child.stderr.read().decode() if child.stderr else "no output"
            lines.append(line)
            event = json.loads(line)
            streamed += event["event"] == "block" and event["bytes"] > 0
        FAULTS[fault](_weights(model))
        out, err = child.communicate(timeout=120)
    finally:
        child.kill()
    events_after = [json.loads(x) for x in out.decode().splitlines()]
    stderr = err.decode().strip().splitlines()
    assert child.returncode == 2, err.decode()
    assert len(stderr) == 1 and stderr[0].startswith("error: "), stderr
    assert str(_weights(model)) in stderr[0]
    assert events_after[-1]["event"] == "error" and str(_weights(model)) in events_after[-1]["message"]


@pytest.fixture
def engine_on(originals: dict[str, Path], tmp_path: Path):  # noqa: ANN201
    opened: list[Engine] = []

    def open_copy(path: str) -> tuple[Engine, Path]:
        model = _copy(originals, path, tmp_path)
        engine = Engine.open(model, EngineOptions(ram_budget=_streaming_budget(model), reads=READS[path]))
        assert engine.store.reads.direct == (path == "direct")
        opened.append(engine)
        return engine, model

    yield open_copy
    for engine in opened:
        engine.close()


PARAMS = SamplingParams(max_new_tokens=3, ignore_eos=True)


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("path", PATHS)
def test_file_changed_between_runs_then_reopen(engine_on, path: str, fault: str) -> None:  # noqa: ANN001
    engine, model = engine_on(path)
    assert engine.store.zero_copy == (path == "mapped")
    first = engine.generate("Hello", PARAMS)
    original = _weights(model).read_bytes()
    FAULTS[fault](_weights(model))
    seen: list[events.Event] = []
    with pytest.raises(CheckpointError, match=str(_weights(model))):
        engine.generate("Hello", PARAMS, on_event=seen.append)
    assert isinstance(seen[-1], events.Error) and str(_weights(model)) in seen[-1].message
    engine.close()
    _weights(model).write_bytes(original)  # the download finished: reopening works again
    again = Engine.open(model, EngineOptions(ram_budget=_streaming_budget(model), reads=READS[path]))
    try:
        assert again.generate("Hello", PARAMS).token_ids == first.token_ids
    finally:
        again.close()


def _leases_on(path: Path) -> int:
    inode = path.stat().st_ino
    return sum(" LEASE " in line and f":{inode} " in line for line in Path("/proc/locks").read_text().splitlines())


def test_mapped_run_holds_leases_only_while_it_runs(engine_on) -> None:  # noqa: ANN001
    engine, model = engine_on("mapped")
    during: list[int] = []

    def sink(event: events.Event) -> None:
        if isinstance(event, events.BlockDone) and not event.resident and not during:
            during.append(_leases_on(_weights(model)))

    engine.generate("Hello", PARAMS, on_event=sink)
    assert during == [1]
    assert _leases_on(_weights(model)) == 0  # a writer after the run does not wait on us


def test_writer_during_mapped_run_waits_for_the_block_then_the_run_stops(engine_on) -> None:  # noqa: ANN001
    engine, model = engine_on("mapped")
    writer_done = threading.Event()
    computing_after_writer: list[bool] = []

    def write() -> None:
        _truncate(_weights(model))
        writer_done.set()

    def sink(event: events.Event) -> None:
        if isinstance(event, events.BlockDone) and not event.resident:
            if event.token_index == 1 and not computing_after_writer:
                threading.Thread(target=write, daemon=True).start()
                # The writer must be held off while mapped pages are in use: give it every chance to run.
                computing_after_writer.append(writer_done.wait(0.5))

    with pytest.raises(CheckpointError, match="another program is writing"):
        engine.generate("Hello", SamplingParams(max_new_tokens=50, ignore_eos=True), on_event=sink)
    assert computing_after_writer == [False]
    assert writer_done.wait(10)


@pytest.mark.parametrize(("path", "module"), [("read", "reader"), ("direct", "direct")])
def test_read_error_names_the_file(engine_on, monkeypatch: pytest.MonkeyPatch, path: str, module: str) -> None:  # noqa: ANN001
    engine, model = engine_on(path)

    def failing_preadv(*_args: object) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(f"bloomtui.engine.io.{module}.os.preadv", failing_preadv)
    with pytest.raises(CheckpointError, match=rf"{_weights(model)}: read failed \(Input/output error\)"):
        engine.generate("Hello", PARAMS)


def test_populate_error_names_the_file(engine_on, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    engine, model = engine_on("mapped")
    monkeypatch.setattr("bloomtui.engine.io.mapped.MADV_POPULATE_READ", -1)  # madvise fails (EINVAL) like a bad disk
    with pytest.raises(CheckpointError, match=rf"{_weights(model)}: read failed"):
        engine.generate("Hello", PARAMS)
