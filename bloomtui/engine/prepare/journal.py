"""The journal of a hub prepare (`OUT.partial/journal.json`): which repo commit and options it runs with, which
shards are fetched and checked, which are done with (deleted), which files of the output are finished and which
parts of a file spread over several shards are staged. It is rewritten atomically after every step, so a rerun
after Ctrl+C, a crash, a lost connection or a reboot knows exactly what is left."""

from __future__ import annotations

import json
import os
import shutil
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bloomtui.errors import UsageError

JOURNAL = "journal.json"
SOURCE_DIR = "source"
"""Fetched shards and small files, inside OUT.partial: each shard is deleted once every tensor in it is written."""
STAGED_DIR = "staged"
"""Parts of output files whose tensors lie in several shards, until the last part arrives."""


@dataclass
class Journal:
    repo_id: str
    commit: str
    options: dict[str, object]
    fetched: list[str] = field(default_factory=list)
    shards_done: list[str] = field(default_factory=list)
    units_done: list[str] = field(default_factory=list)
    parts: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._path: Path | None = None

    @classmethod
    def open(cls, partial: Path, repo_id: str, commit: str, options: dict[str, object], flags: str) -> Journal:
        """The journal in `partial`, checked against this run (same repo, commit and options, else UsageError
        with the reason), or a fresh one in a fresh `partial` (a folder there without a journal is the leftover of
        a local prepare, which restarts from nothing anyway)."""
        path = partial / JOURNAL
        if path.is_file():
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
                journal = cls(**raw)
            except (OSError, ValueError, TypeError) as exc:
                raise UsageError(f"{path}: unreadable ({exc}); delete {partial} to start over") from None
            if journal.repo_id != repo_id:
                raise UsageError(f"{partial} holds a prepare of {journal.repo_id}; delete it to prepare {repo_id}")
            if journal.options != options:
                raise UsageError(
                    f"{partial} was started with other options ({_flags(journal.options)}); rerun with them, or "
                    f"delete it to start over with {flags}"
                )
            if journal.commit != commit:
                raise UsageError(
                    f"{repo_id} changed on the hub since this prepare began ({journal.commit[:10]} -> {commit[:10]}): "
                    f"add --revision {journal.commit} to finish it, or delete {partial} to start over"
                )
        else:
            shutil.rmtree(partial, ignore_errors=True)
            journal = cls(repo_id, commit, options)
        journal._path = path
        (partial / SOURCE_DIR).mkdir(parents=True, exist_ok=True)
        (partial / STAGED_DIR).mkdir(exist_ok=True)
        journal.save()
        return journal

    def save(self) -> None:
        assert self._path is not None
        with self._lock:
            data = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
            tmp = self._path.with_name(JOURNAL + ".tmp")
            tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, self._path)

    def note(self, kind: str, name: str, unit: str | None = None) -> None:
        """Record one step and save: 'fetched' a shard, a shard 'done' (deleted), a 'unit' finished, a 'part' of
        `unit` staged from shard `name`."""
        with self._lock:
            if kind == "fetched":
                self.fetched.append(name)
            elif kind == "done":
                self.shards_done.append(name)
                self.fetched = [f for f in self.fetched if f != name]
            elif kind == "unit":
                self.units_done.append(name)
                self.parts.pop(name, None)
            elif kind == "part" and unit is not None:
                self.parts.setdefault(unit, []).append(name)
        self.save()


def _flags(options: dict[str, object]) -> str:
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items() if v is not None)
