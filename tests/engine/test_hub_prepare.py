"""`prepare` straight from the hub, against a stand-in hub on 127.0.0.1 (tests/hub_standin.py): the same folder as
a prepare of a local copy, never more than two shards of source on disk, resumable after a cancel or a hub that
dies mid-shard, a corrupted shard caught, and each refusal one clear error."""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import pytest

from bloomtui.engine.prepare import from_hub, prepare
from bloomtui.engine.prepare.from_hub import prepare_from_hub
from bloomtui.engine.prepare.journal import SOURCE_DIR
from bloomtui.errors import CancelRequested, CheckpointError, ConfigError, UsageError
from tests.checkpoints import write_checkpoint
from tests.hub_standin import HubStandIn

REPO = "bigscience/bloom-standin"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no token from this machine's login
    monkeypatch.delenv("HF_TOKEN", raising=False)
    stand_in = HubStandIn()
    yield stand_in
    stand_in.close()


def _source(tmp_path: Path, layout: str, **kwargs: object) -> Path:
    return write_checkpoint(tmp_path / f"src-{layout}", layout=layout, dtype="float16", **kwargs).path


def _shards(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".safetensors"))


def _same_folder(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        if name != "README.md":  # the card names its source
            assert filecmp.cmp(a / name, b / name, shallow=False), name


@pytest.mark.parametrize(("layout", "weights"), [("bigscience", "int4"), ("safetensors-sharded", "int8")])
def test_hub_prepare_equals_local_and_holds_two_shards_at_most(
    hub: HubStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str, weights: str
) -> None:
    source = _source(tmp_path, layout, untied=layout == "bigscience")
    hub.add(REPO, source)
    peaks: list[int] = []
    real_fetch = from_hub.fetch_file

    def fetch_and_measure(listing, name, dest, *args):  # noqa: ANN001, ANN002, ANN202
        path = real_fetch(listing, name, dest, *args)
        if name.endswith((".bin", ".safetensors")):  # the moment a shard lands is when the most is on disk
            peaks.append(sum(p.stat().st_size for p in dest.parent.iterdir() if p.suffix != ".json"))
        return path

    monkeypatch.setattr(from_hub, "fetch_file", fetch_and_measure)
    plans: list[str] = []
    out = prepare_from_hub(REPO, tmp_path / "hub-out", weights, endpoint=hub.url, on_plan=plans.append)
    _same_folder(out, prepare(source, tmp_path / "local-out", weights))
    assert not (tmp_path / "hub-out.partial").exists()
    shards = _shards(source)
    assert len(peaks) == len(shards) >= 3
    sizes = sorted(((source / s).stat().st_size for s in shards), reverse=True)
    assert max(peaks) <= sizes[0] + sizes[1]
    assert plans and plans[0].startswith(f"{REPO}: {len(shards)} shards")
    assert all(hub.fetched(s) == 1 for s in shards)


def test_cancelled_prepare_resumes_without_fetching_done_shards(hub: HubStandIn, tmp_path: Path) -> None:
    source = _source(tmp_path, "bigscience")
    hub.add(REPO, source)
    out = tmp_path / "out"
    with pytest.raises(CancelRequested):
        prepare_from_hub(REPO, out, "int8", endpoint=hub.url, should_stop=lambda: hub.fetched(_shards(source)[2]) > 0)
    journal = json.loads((tmp_path / "out.partial" / "journal.json").read_text())
    assert journal["shards_done"] and len(journal["shards_done"]) < len(_shards(source))
    prepare_from_hub(REPO, out, "int8", endpoint=hub.url)
    assert all(hub.fetched(s) == 1 for s in journal["shards_done"] + journal["fetched"])
    _same_folder(out, prepare(source, tmp_path / "local", "int8"))


def test_hub_dying_mid_shard_gives_an_error_and_a_later_run_resumes_there(
    hub: HubStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)  # written as it comes, as a real shard's 10 MB chunks
    source = _source(tmp_path, "bigscience")
    hub.add(REPO, source)
    victim = _shards(source)[1]
    half = (source / victim).stat().st_size // 2
    hub.faults.die_after[victim] = half
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="run the same command again to resume"):
        prepare_from_hub(REPO, out, "int4", endpoint=hub.url)
    kept = out.with_name("out.partial") / SOURCE_DIR / (victim + ".incomplete")
    resume_at = kept.stat().st_size
    assert 0 < resume_at <= half
    again = HubStandIn()  # the hub back, at another address
    try:
        again.add(REPO, source)
        prepare_from_hub(REPO, out, "int4", endpoint=again.url)
        ranges = [r for m, p, r in again.requests if m == "GET" and p.endswith(victim)]
        assert ranges == [f"bytes={resume_at}-"]
        assert again.fetched(_shards(source)[0]) == 0  # done before the hub died
    finally:
        again.close()
    _same_folder(out, prepare(source, tmp_path / "local", "int4"))


def test_a_run_stopped_between_the_last_part_and_its_assembly_resumes(
    hub: HubStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bigscience's embeddings file is staged from shards 1 and N: a crash after staging the second part and
    before assembling must not leave the file for ever unassembled on resume."""
    source = _source(tmp_path, "bigscience")
    hub.add(REPO, source)
    real = from_hub._assemble

    def crash(*_args: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(from_hub, "_assemble", crash)
    with pytest.raises(OSError, match="power cut"):
        prepare_from_hub(REPO, tmp_path / "out", "int8", endpoint=hub.url)
    monkeypatch.setattr(from_hub, "_assemble", real)
    prepare_from_hub(REPO, tmp_path / "out", "int8", endpoint=hub.url)
    _same_folder(tmp_path / "out", prepare(source, tmp_path / "local", "int8"))


def test_a_corrupted_shard_is_fetched_again_once_then_refused(hub: HubStandIn, tmp_path: Path) -> None:
    source = _source(tmp_path, "safetensors-sharded")
    hub.add(REPO, source)
    shard = _shards(source)[0]
    hub.faults.corrupt[shard] = 1
    prepare_from_hub(REPO, tmp_path / "once", "int8", endpoint=hub.url)
    assert hub.fetched(shard) == 2
    hub.faults.corrupt[shard] = 2
    with pytest.raises(CheckpointError, match=f"{shard}: sha256 .* twice"):
        prepare_from_hub(REPO, tmp_path / "twice", "int8", endpoint=hub.url)
    assert not (tmp_path / "twice").exists()


def test_a_changed_revision_or_other_options_are_refused_on_resume(hub: HubStandIn, tmp_path: Path) -> None:
    source = _source(tmp_path, "bigscience")
    repo = hub.add(REPO, source)
    out = tmp_path / "out"
    with pytest.raises(CancelRequested):
        prepare_from_hub(REPO, out, "int8", endpoint=hub.url, should_stop=lambda: hub.fetched(_shards(source)[1]) > 0)
    with pytest.raises(UsageError, match="other options"):
        prepare_from_hub(REPO, out, "int4", endpoint=hub.url)
    old = repo.commit
    repo.commit = "f" * 40
    with pytest.raises(UsageError, match=f"changed on the hub.*--revision {old}"):
        prepare_from_hub(REPO, out, "int8", endpoint=hub.url)
    assert (tmp_path / "out.partial" / "journal.json").is_file()  # kept for the user to choose


def test_refusals_leave_nothing_behind(hub: HubStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _source(tmp_path, "safetensors")
    config = json.loads((source / "config.json").read_text())
    other = tmp_path / "not-bloom"
    shutil.copytree(source, other)
    (other / "config.json").write_text(json.dumps(config | {"model_type": "gpt2"}))
    hub.add("someone/gpt", other)
    hub.add("someone/gated", source, gated=True)
    hub.add(REPO, source)
    with pytest.raises(ConfigError, match="not a BLOOM model"):
        prepare_from_hub("someone/gpt", tmp_path / "a", "int8", endpoint=hub.url)
    with pytest.raises(CheckpointError, match="gated.*hf auth login"):
        prepare_from_hub("someone/gated", tmp_path / "b", "int8", endpoint=hub.url)
    with pytest.raises(CheckpointError, match="no such model on the hub"):
        prepare_from_hub("someone/missing", tmp_path / "c", "int8", endpoint=hub.url)
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    with pytest.raises(UsageError, match="needs"):
        prepare_from_hub(REPO, tmp_path / "d", "int8", endpoint=hub.url)
    assert {p.name for p in tmp_path.iterdir()} - {"hf-home"} == {"not-bloom", "src-safetensors"}
