"""`bloomtui prepare REPO_ID` and `bloomtui download REPO_ID` as a user runs them, against the stand-in hub
(HF_ENDPOINT), and `download`'s resume in the Hugging Face cache's own layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bloomtui.engine.weights.hub_download import download_model
from bloomtui.errors import CheckpointError
from tests.checkpoints import write_checkpoint
from tests.hub_standin import HubStandIn

REPO = "bigscience/bloom-standin"


@pytest.fixture
def hub(tmp_path: Path):
    stand_in = HubStandIn()
    stand_in.add(REPO, write_checkpoint(tmp_path / "src", layout="bin-sharded", dtype="float16").path)
    yield stand_in
    stand_in.close()


def _env(tmp_path: Path, endpoint: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_HUB_OFFLINE")}
    return env | {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf"), **extra}


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bloomtui", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_prepare_from_the_hub_with_json_events(hub: HubStandIn, tmp_path: Path) -> None:
    env = _env(tmp_path, hub.url)
    run = _run(env, "prepare", REPO, str(tmp_path / "out"), "--weights", "int4", "--json")
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    assert events[0]["event"] == "plan" and events[0]["text"].startswith(f"{REPO}: 3 shards")
    final = [e for e in events if e["event"] == "progress"][-1]
    assert final["units_done"] == final["units"] and final["fetched"] == final["to_fetch"] > 0
    assert events[-1] == {"event": "done", "out": str(tmp_path / "out"), "weights": "int4"}
    info = _run(env, "info", str(tmp_path / "out"), "--json")
    assert info.returncode == 0 and json.loads(info.stdout)["weights"] == "int4", info.stderr


def test_prepare_fails_at_once_when_the_hub_cannot_be_reached(tmp_path: Path) -> None:
    start = time.monotonic()
    run = _run(
        _env(tmp_path, "http://127.0.0.1:9"), "prepare", "bigscience/bloom", str(tmp_path / "o"), "--weights", "int4"
    )
    assert run.returncode == 2 and run.stderr.startswith("error: cannot reach 127.0.0.1:9"), run.stderr
    assert time.monotonic() - start < 20 and not (tmp_path / "o.partial").exists()


def test_download_fills_the_cache_that_other_commands_read(hub: HubStandIn, tmp_path: Path) -> None:
    env = _env(tmp_path, hub.url)
    run = _run(env, "download", REPO)
    assert run.returncode == 0, run.stderr
    assert "3 weight files" in run.stderr
    again = _run(env, "download", REPO)  # everything there: nothing fetched
    assert again.returncode == 0 and again.stdout == run.stdout
    assert all(hub.fetched(f"pytorch_model-0000{i}-of-00003.bin") == 1 for i in (1, 2, 3))
    offline = _run(env | {"HF_HUB_OFFLINE": "1"}, "info", REPO, "--json")  # huggingface_hub finds it in its cache
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout)["n_layer"] == 2


def test_download_resumes_a_half_fetched_file(hub: HubStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    victim = "pytorch_model-00002-of-00003.bin"
    hub.faults.die_after[victim] = 20000
    with pytest.raises(CheckpointError, match="run the same command again"):
        download_model(REPO, endpoint=hub.url)
    again = HubStandIn()
    try:
        again.add(REPO, hub.repos[REPO].folder)
        snapshot = download_model(REPO, endpoint=again.url)
        ranges = [r for m, p, r in again.requests if m == "GET" and p.endswith(victim)]
        assert (
            len(ranges) == 1
            and ranges[0].startswith("bytes=")
            and again.fetched("pytorch_model-00001-of-00003.bin") == 0
        )
    finally:
        again.close()
    for name in ("config.json", victim):
        assert (snapshot / name).read_bytes() == (hub.repos[REPO].folder / name).read_bytes()
