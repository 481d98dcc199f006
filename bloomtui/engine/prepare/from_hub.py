"""`bloomtui prepare REPO_ID OUT` for a model not in the local cache: fetch its shards in order and prepare each
as it lands, deleting it once every tensor in it is written, so the source never needs more than two shards of
disk (one being fetched while the one before it is converted). Resumable through OUT.partial/journal.json.

A prepared file whose tensors lie in one shard is written whole; one spread over several (BLOOM-176B's
embeddings in its first shard and ln_f in its last; a block split by a size-sharded checkpoint) is staged part
by part and assembled when its last part arrives, so no shard waits on disk for another."""

from __future__ import annotations

import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from bloomtui.engine.io.reader import TensorReader
from bloomtui.engine.prepare.convert import Unit, choose_scheme, convert, output_bytes, source_shape, units
from bloomtui.engine.prepare.convert import write_safetensors as write_file
from bloomtui.engine.prepare.folder import COPIED_FILES, card, check_space, check_target, finish, partial_path
from bloomtui.engine.prepare.journal import SOURCE_DIR, STAGED_DIR, Journal
from bloomtui.engine.prepare.local import metadata
from bloomtui.engine.weights.config import BloomConfig, Scheme
from bloomtui.engine.weights.hub_fetch import INCOMPLETE, ChecksumMismatch, HubProgress, fetch_file
from bloomtui.engine.weights.hub_repo import SMALL_FILES, RepoListing, check_bloom_config, list_repo, weight_map
from bloomtui.engine.weights.tensorfile import TensorRef, index_file
from bloomtui.errors import BloomtuiError, CancelRequested, CheckpointError
from bloomtui.sizes import format_size

SHARDS_ON_DISK = 2
PROGRESS_EVERY = 0.25


@dataclass(frozen=True)
class HubPlan:
    listing: RepoListing
    config: dict
    shards: tuple[str, ...]
    """Weight files in fetch order."""
    shard_keys: dict[str, tuple[str, ...]] | None
    """Per shard, the bare keys the index assigns to it; None for a single weight file (all of them)."""
    fetch_bytes: int
    write_bytes: int
    need_bytes: int

    def describe(self, free: int) -> str:
        n = len(self.shards)
        return (
            f"{self.listing.repo_id}: {n} shard{'s' * (n != 1)}, {format_size(self.fetch_bytes)} to fetch, "
            f"{format_size(self.write_bytes)} to write; needs {format_size(self.need_bytes)} free, "
            f"you have {format_size(free)}"
        )


def _bare(key: str) -> str:
    return key.removeprefix("transformer.")


def _index_shards(index: Path, listing: RepoListing, needed: set[str]) -> dict[str, tuple[str, ...]]:
    """Per shard, the needed tensors (bare keys) the index puts there; every needed one must be somewhere."""
    keys: dict[str, list[str]] = {}
    for key, shard in weight_map(listing, index).items():
        if _bare(key) in needed:
            keys.setdefault(shard, []).append(_bare(key))
    missing = sorted(needed - {k for ks in keys.values() for k in ks})
    if missing:
        raise CheckpointError(f"{listing.repo_id}: {index.name} has no tensor {missing[0]}")
    return {shard: tuple(keys[shard]) for shard in sorted(keys)}


def plan(
    listing: RepoListing, source: Path, journal: Journal, out_dir: Path, options: dict
) -> tuple[HubPlan, BloomConfig, Scheme]:
    """Fetch the small files, check the model is a BLOOM, and work out the shards, sizes and free space needed.
    Returns (HubPlan, BloomConfig, Scheme)."""
    weight_file = listing.weight_file()
    for name in (*SMALL_FILES, weight_file if weight_file.endswith(".json") else None):
        if name and name in listing.files and not (source / name).is_file():
            fetch_file(listing, name, source / name)
    if not (source / "config.json").is_file():
        raise CheckpointError(f"{listing.repo_id}: the repo has no config.json")
    raw = check_bloom_config(source / "config.json", listing.repo_id)
    config = BloomConfig.from_dict(raw, f"{listing.repo_id}/config.json")
    scheme = choose_scheme(config, options["weights"], options["group_size"], options["head"])
    needed = {k for u in units(config) for k in u.keys}
    if weight_file.endswith(".json"):
        shard_keys: dict[str, tuple[str, ...]] | None = _index_shards(source / weight_file, listing, needed)
        # In the order the output files need them: a file spread over the first and last shards (bigscience's
        # embeddings and ln_f) is finished early, while later shards are still being fetched.
        first_use = {k: i for i, u in enumerate(units(config)) for k in u.keys}
        shards = tuple(sorted(shard_keys, key=lambda s: (min(first_use[k] for k in shard_keys[s]), s)))
    else:
        shard_keys, shards = None, (weight_file,)
    left = [s for s in shards if s not in journal.shards_done]
    on_disk = sum(_size_on_disk(source / s) for s in left)
    fetch_bytes = sum(listing.files[s].size for s in left) - on_disk
    block, embed = output_bytes(config, scheme)
    written = sum(_size_on_disk(out_dir / u.file) for u in units(config) if u.file in journal.units_done)
    write_bytes = config.n_layer * block + embed - written
    largest = sorted((listing.files[s].size for s in left), reverse=True)[:SHARDS_ON_DISK]
    need = max(0, write_bytes + sum(largest) - on_disk)
    return HubPlan(listing, raw, shards, shard_keys, fetch_bytes, write_bytes, need), config, scheme


def _size_on_disk(path: Path) -> int:
    total = 0
    for p in (path, path.with_name(path.name + INCOMPLETE)):
        if p.is_file():
            total += p.stat().st_size
    return total


class _Fetcher(threading.Thread):
    """Fetches the shards in order, never more than SHARDS_ON_DISK on disk: a slot is taken before a fetch and
    given back when the converter deletes a shard."""

    def __init__(self, listing: RepoListing, shards: list[str], source: Path, journal: Journal) -> None:
        super().__init__(name="bloomtui-hub-fetch", daemon=True)
        self.listing, self.shards, self.source, self.journal = listing, shards, source, journal
        self.slots = threading.Semaphore(SHARDS_ON_DISK)
        self.ready: queue.Queue[tuple[str, Path] | BaseException] = queue.Queue()
        self.stop = threading.Event()
        self.fetched = 0
        self.current = 0

    def _count(self, n: int) -> None:
        self.fetched += n

    def run(self) -> None:
        try:
            for i, shard in enumerate(self.shards):
                while not self.slots.acquire(timeout=0.1):
                    if self.stop.is_set():
                        return
                self.current = i
                path = self.source / shard
                if shard not in self.journal.fetched or not path.is_file():
                    self._fetch(shard, path)
                    self.journal.note("fetched", shard)
                self.ready.put((shard, path))
        except BaseException as exc:  # handed to the converter, which raises it
            self.ready.put(exc)

    def _fetch(self, shard: str, path: Path) -> None:
        for attempt in (1, 2):
            try:
                fetch_file(self.listing, shard, path, self._count, self.stop.is_set)
                return
            except ChecksumMismatch as exc:
                if attempt == 2:
                    raise CheckpointError(
                        f"{self.listing.repo_id}: {exc}, twice; the hub's copy may be damaged"
                    ) from None


def prepare_from_hub(
    repo_id: str,
    out: Path,
    weights: str,
    group_size: int | None = None,
    force: bool = False,
    on_progress: Callable[[HubProgress], None] = lambda _p: None,
    should_stop: Callable[[], bool] = lambda: False,
    *,
    head: str = "int8",
    revision: str | None = None,
    on_plan: Callable[[str], None] = lambda _s: None,
    endpoint: str | None = None,
) -> Path:
    """Prepare `repo_id` at `revision` into `out` straight from the hub (see the module's docstring). Raises
    CheckpointError/ConfigError/UsageError with one clear line; CancelRequested keeps OUT.partial for a rerun."""
    out = Path(out).expanduser()
    check_target(out, force)
    listing = list_repo(repo_id, revision, endpoint)
    partial = partial_path(out)
    options = {"weights": weights, "group_size": group_size, "head": head}
    flags = f"--weights {weights}" + (f" --group-size {group_size}" if group_size else "") + f" --head {head}"
    journal = Journal.open(partial, repo_id, listing.commit, options, flags)
    source, staged = partial / SOURCE_DIR, partial / STAGED_DIR
    fresh = not (journal.fetched or journal.shards_done)
    try:
        the_plan, config, scheme = plan(listing, source, journal, partial, options)
        on_plan(the_plan.describe(shutil.disk_usage(partial).free))
        check_space(partial, the_plan.need_bytes, f"{repo_id}'s prepare")
    except (BloomtuiError, CancelRequested):
        if fresh:  # nothing worth keeping for a rerun: no shard fetched yet
            shutil.rmtree(partial, ignore_errors=True)
        raise

    plan_units = units(config)
    key_unit = {k: u for u in plan_units for k in u.keys}
    left = [s for s in the_plan.shards if s not in journal.shards_done]
    fetcher = _Fetcher(listing, left, source, journal)
    reader = TensorReader(drop_cache=False)
    started = time.perf_counter()
    last_progress = 0.0
    shards_before = len(the_plan.shards) - len(left)
    block_bytes, embed_bytes = output_bytes(config, scheme)
    planned = {u.file: block_bytes if u.file.startswith("block-") else embed_bytes for u in plan_units}
    done_before = set(journal.units_done)

    def progress(force: bool = False) -> None:
        nonlocal last_progress
        now = time.perf_counter()
        if force or now - last_progress >= PROGRESS_EVERY:
            last_progress = now
            shard = min(len(the_plan.shards), shards_before + fetcher.current + 1)
            written = sum(planned[f] for f in journal.units_done if f not in done_before)
            on_progress(
                HubProgress(
                    shard, len(the_plan.shards), fetcher.fetched, the_plan.fetch_bytes,
                    len(journal.units_done), len(plan_units), now - started, written, the_plan.write_bytes,
                )
            )  # fmt: skip

    def read(ref: TensorRef, key: str) -> Tensor:
        if should_stop():
            raise CancelRequested
        if ref.shape != source_shape(key, config) or not ref.dtype.is_floating_point:
            raise CheckpointError(
                f"{repo_id}: {key} is {ref.dtype} {list(ref.shape)}, config.json implies a float "
                f"{list(source_shape(key, config))}"
            )
        t = torch.empty(ref.shape, dtype=torch.float32)
        reader.read(ref, t, should_stop)
        return t

    shards_of = _unit_shards(the_plan, plan_units)

    def complete(unit: Unit) -> None:
        """Assemble a file spread over shards once all its parts are staged (on a resume too: a run may have
        stopped between staging the last part and assembling)."""
        if unit.file in journal.units_done or set(journal.parts.get(unit.file, ())) != set(shards_of[unit.file]):
            return
        _assemble(unit, shards_of[unit.file], staged, partial, weights)
        journal.note("unit", unit.file)
        for s in shards_of[unit.file]:
            (staged / f"{unit.file}.{s}").unlink(missing_ok=True)

    def convert_shard(shard: str, path: Path) -> None:
        refs = {_bare(k): r for k, r in index_file(path).items()}
        assigned = the_plan.shard_keys[shard] if the_plan.shard_keys is not None else tuple(key_unit)
        missing = [k for k in assigned if k not in refs]
        if missing:
            raise CheckpointError(f"{repo_id}: {shard} lacks {missing[0]}")
        for unit in plan_units:
            keys = [k for k in unit.keys if k in assigned]
            if not keys or unit.file in journal.units_done:
                continue
            if shard not in journal.parts.get(unit.file, ()):
                tensors: dict[str, Tensor] = {}
                for key in keys:
                    tensors |= convert(key, read(refs[key], key), scheme)
                    progress()
                whole = shards_of[unit.file] == (shard,)
                _write_atomic(partial / unit.file if whole else staged / f"{unit.file}.{shard}", tensors, weights)
                del tensors
                if whole:
                    journal.note("unit", unit.file)
                else:
                    journal.note("part", shard, unit.file)
            complete(unit)

    for unit in plan_units:
        complete(unit)
    fetcher.start()
    try:
        for _ in left:
            while True:
                if should_stop():
                    raise CancelRequested
                try:
                    item = fetcher.ready.get(timeout=PROGRESS_EVERY)
                    break
                except queue.Empty:
                    progress()
            if isinstance(item, BaseException):
                raise item
            shard, path = item
            convert_shard(shard, path)
            journal.note("done", shard)
            path.unlink(missing_ok=True)
            fetcher.slots.release()
            progress(force=True)
    finally:
        fetcher.stop.set()
        fetcher.join()
        reader.close()

    for name in COPIED_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, partial / name)
    weight_map: dict[str, str] = {}
    for unit in plan_units:
        weight_map |= dict.fromkeys(index_file(partial / unit.file), unit.file)
    written = sum((partial / u.file).stat().st_size for u in plan_units)
    kind = "safetensors" if the_plan.shards[0].endswith(".safetensors") else "pytorch .bin"
    stored = f"fetched from the hub one shard at a time: {kind}, {len(the_plan.shards)} file(s)"
    readme = card(f"{repo_id}@{listing.commit[:10]}", stored, scheme, config, block_bytes, embed_bytes)
    for leftover in (source, staged):
        shutil.rmtree(leftover)
    (partial / "journal.json").unlink()
    return finish(partial, out, the_plan.config, scheme, weight_map, written, None, readme)


def _unit_shards(the_plan: HubPlan, plan_units: tuple[Unit, ...]) -> dict[str, tuple[str, ...]]:
    """Per output file, the shards its tensors lie in, in fetch order."""
    if the_plan.shard_keys is None:
        return {u.file: the_plan.shards for u in plan_units}
    where = {k: s for s, keys in the_plan.shard_keys.items() for k in keys}
    return {
        u.file: tuple(dict.fromkeys(sorted((where[k] for k in u.keys), key=the_plan.shards.index))) for u in plan_units
    }


def _write_atomic(path: Path, tensors: dict[str, Tensor], weights: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write_file(tmp, tensors, metadata(weights))
    os.replace(tmp, path)


def _assemble(unit: Unit, shards: tuple[str, ...], staged: Path, partial: Path, weights: str) -> None:
    """The output file from its staged parts, its tensors in the order the unit stores them."""
    from safetensors.torch import load_file

    parts: dict[str, Tensor] = {}
    for shard in shards:
        parts |= load_file(str(staged / f"{unit.file}.{shard}"))
    order = {k: i for i, k in enumerate(unit.keys)}
    names = sorted(parts, key=lambda name: order[_source_key(name, order)])
    _write_atomic(partial / unit.file, {n: parts[n] for n in names}, weights)


def _source_key(name: str, order: dict[str, int]) -> str:
    """The source key a stored tensor came from: itself, or its matrix for `.qweight` / `.scales`."""
    if name in order:
        return name
    return name.rsplit(".", 1)[0] + ".weight"
