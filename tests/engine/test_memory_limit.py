"""Memory cgroup limits (containers): budgets and read choices plan within the limit, not the host's RAM."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bloomtui.engine.plan import memory_guard

GB = 1000**3


def _fake_v1(tmp_path: Path, limits: dict[str, int | None], usage: int, inactive: int) -> None:
    """A cgroup v1 memory hierarchy: the process in /a/b, `limits` per directory ('' is the mount's root)."""
    mount = tmp_path / "cg" / "memory"
    for rel, limit in limits.items():
        d = mount / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "memory.limit_in_bytes").write_text(f"{limit if limit is not None else 9223372036854771712}\n")
        (d / "memory.usage_in_bytes").write_text(f"{usage}\n")
        (d / "memory.stat").write_text(f"cache 5\ninactive_file 1\ntotal_inactive_file {inactive}\n")
    (tmp_path / "self_cgroup").write_text("9:name=systemd:/\n4:memory:/a/b\n1:cpu:/\n0::/\n")


def _point_at(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(memory_guard, "CGROUP_ROOT", tmp_path / "cg")
    monkeypatch.setattr(memory_guard, "PROC_CGROUP", tmp_path / "self_cgroup")


def test_v1_limit_of_an_ancestor_counts_less_its_reclaimable_cache(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    _fake_v1(tmp_path, {"": None, "a": 4 * GB, "a/b": None}, usage=3 * GB, inactive=1 * GB)
    _point_at(monkeypatch, tmp_path)
    assert memory_guard.cgroup_memory() == (4 * GB, 2 * GB)  # 4 GB limit, 3 GB used of which 1 GB cache
    assert memory_guard.total_memory() <= 4 * GB and memory_guard.available_memory() <= 2 * GB


def test_v2_limit_and_a_namespaced_cgroup(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    root = tmp_path / "cg"
    root.mkdir()
    (root / "memory.max").write_text(f"{3 * GB}\n")
    (root / "memory.current").write_text(f"{GB}\n")
    (root / "memory.stat").write_text(f"anon 5\ninactive_file {GB // 2}\n")
    # Inside a cgroup namespace the process's cgroup is "/" and is the mount itself.
    (tmp_path / "self_cgroup").write_text("0::/\n")
    _point_at(monkeypatch, tmp_path)
    assert memory_guard.cgroup_memory() == (3 * GB, 3 * GB - GB // 2)
    (root / "memory.max").write_text("max\n")
    assert memory_guard.cgroup_memory() is None


def test_no_cgroup_information_means_no_limit(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    _point_at(monkeypatch, tmp_path)  # neither file exists
    assert memory_guard.cgroup_memory() is None
    assert memory_guard.total_memory() > 0


def _writable_v1_memory_cgroup() -> Path | None:
    try:
        line = next(ln for ln in Path("/proc/self/cgroup").read_text().splitlines() if ":memory:" in ln)
    except (OSError, StopIteration):
        return None
    own = Path("/sys/fs/cgroup/memory") / line.split(":", 2)[2].strip("/")
    return own if own.is_dir() and os.access(own, os.W_OK) else None


def test_a_real_memory_limit_lowers_the_default_budget(tmp_path) -> None:  # noqa: ANN001
    parent = _writable_v1_memory_cgroup()
    if parent is None:
        pytest.skip("no writable cgroup v1 memory controller here")
    child = parent / f"bloomtui-test-{os.getpid()}"
    child.mkdir()
    try:
        (child / "memory.limit_in_bytes").write_text(str(2 * GB))
        code = (
            "import os, sys; open(sys.argv[1] + '/cgroup.procs', 'w').write(str(os.getpid()));"
            "from bloomtui.engine.plan.residency import default_budget;"
            "from bloomtui.engine.plan import memory_guard as m;"
            "print(m.total_memory(), default_budget(), m.fit_budget(600_000_000)[0], m.headroom(m.total_memory()))"
        )
        out = subprocess.run([sys.executable, "-c", code, str(child)], capture_output=True, text=True, check=True)
        total, budget, fitted, headroom = map(int, out.stdout.split())
    finally:
        child.rmdir()
    assert total <= 2 * GB
    # The runtime (~0.3 GB) already counts against the limit; the rest is this process's alone.
    assert 0.5 * GB < budget <= 0.75 * 2 * GB
    assert fitted == 600_000_000  # a 600 MB budget fits a 2 GB container (the host's 1.5 GB reserve would not)
    assert headroom <= 0.1 * GB
