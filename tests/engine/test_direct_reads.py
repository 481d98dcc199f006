"""Direct I/O for streamed weights: exact results in every layout, nothing left in (or taken from) the page
cache, files whose filesystem refuses O_DIRECT read the ordinary way, and the per-model choice."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bloomtui.engine import Engine, EngineOptions, SamplingParams
from bloomtui.engine.io import direct as direct_io
from bloomtui.engine.io.direct import ALIGN, DirectReader, Piece, span_layout
from bloomtui.engine.plan.disk_profile import DiskProfile, disk_profile
from bloomtui.engine.plan.machine import Machine
from bloomtui.engine.plan.model_plan import plan_model
from bloomtui.engine.plan.read_choice import ReadChoice, read_choice, read_mode
from bloomtui.engine.plan.residency import minimum_budget, plan_residency, streamed_refs
from bloomtui.engine.plan.slots import direct_layouts, slot_extra
from bloomtui.engine.weights.checkpoint import Checkpoint
from bloomtui.engine.weights.tensorfile import TensorRef
from bloomtui.errors import UsageError
from tests.checkpoints import write_checkpoint
from tests.engine.test_parity import PROMPT, assert_parity
from tests.pagecache import cached_pages, evict, on_tmpfs

PARAMS = SamplingParams(max_new_tokens=6, ignore_eos=True)


def _all_streamed(path: Path, reads: str, itemsize: int = 4) -> EngineOptions:
    """Every block streamed: the smallest budget, with room for direct I/O's aligned slots."""
    ckpt = Checkpoint.open(path)
    extra = slot_extra(ckpt, itemsize) if reads == "direct" else 0
    return EngineOptions(ram_budget=minimum_budget(ckpt, itemsize, extra), reads=reads)


def test_spans_mirror_the_file_and_views_hold_the_tensors(tmp_path: Path) -> None:
    written = write_checkpoint(tmp_path / "m", preset="small", dtype="float32")
    ckpt = Checkpoint.open(written.path)
    stored = load_file(str(written.path / "model.safetensors"))
    pieces = [Piece(name, ref) for name, ref in ckpt.blocks[1].items()]
    head = ckpt.head
    pieces.append(Piece("rows", head, 5 * head.shape[1], 3 * head.shape[1]))  # rows 5..7 of the head
    layout = span_layout(pieces)
    assert all(s.start % ALIGN == 0 and s.length % ALIGN == 0 and s.at % ALIGN == 0 for s in layout.spans)
    assert layout.nbytes >= layout.payload
    buffer = direct_io.aligned_buffer(layout.nbytes)
    assert buffer.data_ptr() % ALIGN == 0
    reader = DirectReader({written.path / "model.safetensors": True}, drop_cache=False)
    try:
        got = reader.read_spans(layout.spans, buffer, lambda: False)
    finally:
        reader.close()
    assert got >= layout.payload
    views = layout.views(buffer)
    for name in ckpt.blocks[1]:
        key = next(k for k in stored if k.endswith(name) and ".1." in k)
        assert torch.equal(views[name], stored[key]), name
    head_key = next(k for k in stored if k.endswith("lm_head.weight"))
    assert torch.equal(views["rows"].view(3, -1), stored[head_key][5:8])


def test_tensors_at_odd_offsets_get_aligned_spans(tmp_path: Path) -> None:
    data = os.urandom(3 * ALIGN + 100)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    pieces = [
        Piece("a", TensorRef(path, 10, torch.uint8, (50,))),
        Piece("b", TensorRef(path, 2 * ALIGN + 7, torch.uint8, (90,))),
    ]
    layout = span_layout(pieces)
    assert len(layout.spans) == 1  # near enough to read as one span
    buffer = direct_io.aligned_buffer(layout.nbytes)
    reader = DirectReader({path: True}, drop_cache=False)
    try:
        reader.read_spans(layout.spans, buffer, lambda: False)
    finally:
        reader.close()
    views = layout.views(buffer)
    assert bytes(views["a"].numpy()) == data[10:60]
    assert bytes(views["b"].numpy()) == data[2 * ALIGN + 7 : 2 * ALIGN + 97]  # ends in the file's last, partial page


@pytest.mark.parametrize(
    ("dtype", "layout", "untied", "path"),
    [
        ("float32", "safetensors", True, "direct"),  # in place, head streamed in chunks
        ("float16", "safetensors-sharded", True, "direct-staged"),  # converted to float32 on the way in
        ("float32", "bin-sharded", True, "direct"),  # PyTorch zip files
        ("float32", "bigscience", False, "direct"),  # tied head streamed
    ],
)
def test_direct_reads_match_transformers(tmp_path: Path, dtype: str, layout: str, untied: bool, path: str) -> None:
    written = write_checkpoint(tmp_path / "m", preset="small", dtype=dtype, layout=layout, untied=untied)
    options = _all_streamed(written.path, "direct")
    engine = Engine.open(written.path, options)
    reads, plan = engine.store.reads, engine.model_plan.plan
    engine.close()
    assert reads.path == path and not reads.refused
    assert len(plan.streamed_blocks) == plan.n_blocks and not plan.head_resident
    assert_parity(written, PROMPT, n=12, options=options)


@pytest.mark.parametrize(("weights", "head", "preset"), [("int8", "int8", "small"), ("int4", "int4", "tiny")])
def test_prepared_folders_stream_directly_with_the_same_ids(
    tmp_path: Path, weights: str, head: str, preset: str
) -> None:
    from bloomtui.engine.prepare import prepare

    written = write_checkpoint(tmp_path / "m", preset=preset, dtype="bfloat16")  # int4: hidden a multiple of 64
    out = tmp_path / weights
    prepare(written.path, out, weights, head=head)
    ids = {}
    for reads in ("cached", "direct"):
        engine = Engine.open(out, _all_streamed(out, reads, itemsize=2))
        try:
            assert engine.store.reads.direct == (reads == "direct")
            assert not engine.model_plan.plan.head_resident  # head rows with their scales, in chunks
            ids[reads] = engine.generate(PROMPT, PARAMS).token_ids
        finally:
            engine.close()
    assert ids["direct"] == ids["cached"]


@pytest.fixture
def disk_model(tmp_path: Path) -> Path:
    if on_tmpfs(tmp_path):
        pytest.skip("the test folder is on tmpfs, whose files are their page cache")
    return write_checkpoint(tmp_path / "m", preset="small", dtype="float32").path


def _streamed_pages(engine: Engine) -> tuple[int, int]:
    """(cached, total) pages inside the streamed tensors' byte ranges."""
    counts = [
        cached_pages(ref.path, ref.offset, ref.offset + ref.nbytes)
        for ref in streamed_refs(engine.model_plan.checkpoint, engine.model_plan.plan)
    ]
    return sum(c for c, _ in counts), sum(n for _, n in counts)


@pytest.mark.parametrize("start", ["cold", "warm"])
def test_direct_run_leaves_the_page_cache_as_it_found_it(disk_model: Path, start: str) -> None:
    weights = disk_model / "model.safetensors"
    engine = Engine.open(disk_model, _all_streamed(disk_model, "direct"))
    try:
        assert engine.store.reads.path == "direct"
        evict(weights)
        if start == "warm":
            weights.read_bytes()
        before, total = _streamed_pages(engine)
        assert total > 100 and before == (0 if start == "cold" else total)
        engine.generate(PROMPT, PARAMS)
        assert _streamed_pages(engine) == (before, total)
    finally:
        engine.close()


def test_cached_reads_fill_the_page_cache(disk_model: Path) -> None:
    """The contrast that shows the page count above can see a run's reads."""
    engine = Engine.open(disk_model, _all_streamed(disk_model, "cached"))
    try:
        assert engine.store.reads.path == "mapped" and not engine.store.drop_cache
        evict(disk_model / "model.safetensors")
        engine.generate(PROMPT, PARAMS)
        cached, total = _streamed_pages(engine)
        assert cached == total
    finally:
        engine.close()


def test_a_file_that_refuses_o_direct_is_read_with_pread(disk_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = disk_model / "model.safetensors"
    real_open = os.open

    def refusing_open(path, flags, *args):  # noqa: ANN001, ANN202 - as a FUSE or network mount answers
        if flags & os.O_DIRECT and Path(path) == weights:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real_open(path, flags, *args)

    monkeypatch.setattr(direct_io.os, "open", refusing_open)
    options = _all_streamed(disk_model, "direct")
    engine = Engine.open(disk_model, options)
    try:
        assert engine.store.reads.refused == (weights,)
        assert "refuse O_DIRECT" in engine.store.reads.describe()
        got = engine.generate(PROMPT, PARAMS).token_ids
    finally:
        engine.close()
    monkeypatch.undo()
    reference = Engine.open(disk_model, _all_streamed(disk_model, "cached"))
    try:
        assert reference.generate(PROMPT, PARAMS).token_ids == got
    finally:
        reference.close()


def test_a_model_on_tmpfs_streams_directly_or_falls_back(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm on this machine")
    folder = shm / f"bloomtui-test-{os.getpid()}-{tmp_path.name}"
    try:
        written = write_checkpoint(folder, preset="tiny", dtype="float32")
        weights = written.path / "model.safetensors"
        engine = Engine.open(written.path, _all_streamed(written.path, "direct"))
        try:
            # Kernels before 6.6 refuse O_DIRECT on tmpfs; later ones take it. Either way the run works.
            assert (weights in engine.store.reads.refused) == (not direct_io.probe_direct(weights))
            engine.generate(PROMPT, PARAMS)
        finally:
            engine.close()
        assert_parity(written, PROMPT, n=6, options=_all_streamed(written.path, "direct"))
    finally:
        for child in folder.glob("*"):
            child.unlink()
        folder.rmdir()


class Scarce(Machine):
    """A machine with `available` bytes free whose disk measures as `profile` (None: too small to tell)."""

    def __init__(self, available: int, profile: DiskProfile | None = None) -> None:
        self.available, self.profile = available, profile

    def available_memory(self) -> int:
        return self.available

    def disk_profile(self, path: Path, cached_reader: str) -> DiskProfile | None:
        return self.profile


def test_auto_chooses_direct_only_when_the_model_does_not_fit(tiny_model) -> None:  # noqa: ANN001
    ckpt = Checkpoint.open(tiny_model.path)
    plan = plan_residency(ckpt, 4, minimum_budget(ckpt, 4))

    def choose_reads(requested: str | None, machine: Machine = Machine()) -> ReadChoice:  # noqa: B008 - stateless
        return read_choice(ckpt, plan, torch.float32, read_mode(ckpt, plan, torch.float32, requested, machine), machine)

    assert choose_reads(None).path in ("mapped", "buffered")
    scarce = Scarce(ckpt.total_file_bytes // 2)
    choice = choose_reads("auto", scarce)
    assert choice.direct and choice.drop_cache and "exceed free memory" in choice.reason

    def profiled(direct_gbps: float, cached_gbps: float, cached_slowdown: float, compute_gbps: float) -> ReadChoice:
        profile = DiskProfile(
            "mapped", direct_gbps, cached_gbps, direct_gbps, cached_gbps, 1.1, cached_slowdown, compute_gbps
        )
        return choose_reads("auto", Scarce(scarce.available, profile))

    # Compute-bound (1e-6 GB/s): the pass goes as each reader slows compute, so the slower reader can win.
    assert profiled(0.7, 2.0, cached_slowdown=2.0, compute_gbps=1e-6).direct
    # Read-bound: as each reader reads beside compute; about as fast keeps direct I/O (it spares the cache).
    assert profiled(1.9, 2.0, cached_slowdown=2.0, compute_gbps=1e6).direct
    slow = profiled(0.7, 2.0, cached_slowdown=2.0, compute_gbps=1e6)
    assert not slow.direct and slow.drop_cache and slow.path in ("mapped", "buffered")
    assert "O_DIRECT 0.70 and 0.70 GB/s, compute 1.10x; mapped 2.00 and 2.00 GB/s, compute 2.00x" in slow.reason
    assert "through the page cache, dropped after use" in slow.reason
    assert choose_reads("direct", scarce).direct  # forcing it still forces it
    forced = choose_reads("cached", scarce)
    assert not forced.direct and forced.drop_cache  # what is cached is dropped again: it cannot stay
    resident = plan_residency(ckpt, 4, 10**10)
    assert read_mode(ckpt, resident, torch.float32, "direct", scarce) is None  # nothing to stream
    with pytest.raises(UsageError, match="--reads must be one of"):
        choose_reads("fast")


def test_cancel_lands_mid_direct_read(tmp_path: Path) -> None:
    import threading

    from bloomtui.engine import events as ev

    written = write_checkpoint(tmp_path / "m", preset="small", dtype="float32")
    engine = Engine.open(written.path, _all_streamed(written.path, "direct"))
    cancel = threading.Event()

    def on_event(event: ev.Event) -> None:
        if isinstance(event, ev.BlockDone) and event.token_index == 2 and event.index == 1:
            cancel.set()

    try:
        result = engine.generate(PROMPT, SamplingParams(max_new_tokens=50), on_event=on_event, cancel=cancel)
        assert isinstance(result, ev.Cancelled) and result.new_tokens == 2
        again = engine.generate(PROMPT, PARAMS)  # the slots are free again after the cancelled reads
        assert len(again.token_ids) == PARAMS.max_new_tokens
    finally:
        engine.close()


def test_the_disk_is_measured_once_per_filesystem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bloomtui.engine.plan import disk_profile as module

    monkeypatch.setenv("BLOOMTUI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(module, "SAMPLE_BYTES", 32 * 1024 * 1024)
    sample = tmp_path / "weights.bin"
    sample.write_bytes(os.urandom(32 * 1024 * 1024))
    evict(sample)  # written back and dropped: cold, as a model's files are
    first = disk_profile(sample, "mapped")
    if first is None:
        pytest.skip("this file system refuses O_DIRECT: there is nothing to measure")
    assert first.cached_reader == "mapped" and first.direct_gbps > 0 and first.cached_gbps > 0
    assert first.direct_loaded_gbps > 0 and first.cached_loaded_gbps > 0 and first.compute_gbps > 0
    assert first.direct_slowdown > 0 and first.cached_slowdown > 0
    buffered = module.measure(sample, "buffered")  # the other page-cache reader, as a converting run reads
    assert buffered is not None and buffered.cached_reader == "buffered" and buffered.cached_gbps > 0
    monkeypatch.setattr(module, "measure", lambda *_args: pytest.fail("measured twice"))
    assert disk_profile(sample, "mapped") == first
    assert cached_pages(sample)[0] == 0  # the measurement leaves the sample out of the page cache
    assert disk_profile(tmp_path / "cache" / "disk-profile.json", "mapped") == first  # same file system


def test_the_budget_holds_direct_reads_aligned_slots(tmp_path: Path) -> None:
    """A direct slot holds a unit's page-aligned spans, a little more than a block: the plan counts it, a
    block streams where the budget would not hold it else, and at the bare minimum `auto` reads through
    the page cache while a forced --reads direct is refused."""
    from bloomtui.errors import BudgetError

    model = write_checkpoint(tmp_path / "m", preset="small", dtype="float32").path
    ckpt = Checkpoint.open(model)
    least = minimum_budget(ckpt, 4)
    extra = slot_extra(ckpt, 4)
    assert extra > 0  # spans are rounded out to pages
    block = plan_residency(ckpt, 4, least).block_bytes
    one_resident = least + block  # a block resident, with room to spare for nothing else
    assert len(plan_residency(ckpt, 4, one_resident).resident_blocks) == 1
    made = plan_model(model, EngineOptions(ram_budget=one_resident, reads="direct"))
    assert made.reads.direct and made.plan.slot_extra >= extra and not made.plan.resident_blocks
    assert made.plan.total_bytes <= one_resident
    layouts = direct_layouts(ckpt, made.plan)
    assert max(layout.nbytes for layout in layouts.values()) <= made.plan.slot_bytes
    with pytest.raises(BudgetError, match="direct reads need page-aligned buffers"):
        plan_model(model, EngineOptions(ram_budget=least, reads="direct"))

    auto = plan_model(model, EngineOptions(ram_budget=least), Scarce(ckpt.total_file_bytes // 2))
    assert not auto.reads.direct and "aligned buffers" in auto.reads.reason and auto.plan.total_bytes <= least
