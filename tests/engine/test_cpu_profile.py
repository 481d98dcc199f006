"""The per-machine choice of multiply paths: measured once, cached, and re-measured when the cache is stale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bloomtui.engine.compute import cpu_profile as cp
from bloomtui.engine.compute.matmul import Matmul


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BLOOMTUI_CACHE_DIR", str(tmp_path))
    cp.cpu_profile.cache_clear()
    yield tmp_path / "cpu-profile.json"
    cp.cpu_profile.cache_clear()


def test_profile_is_measured_once_then_read_from_the_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = cp.cpu_profile()
    assert first.bf16_gflops > 0 and first.gemv_us > 0 and first.linear_us > 0
    assert "one bf16 row by" in first.describe()
    cp.cpu_profile.cache_clear()
    monkeypatch.setattr(cp, "measure", lambda: pytest.fail("measured again despite the cache"))
    assert cp.cpu_profile() == first


def test_a_cache_entry_from_an_older_version_is_measured_again(cache: Path) -> None:
    key = f"{cp.cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads"
    cache.write_text(json.dumps({key: {"bf16_gflops": 1.0, "fp32_gflops": 2.0}}))  # no one-row fields
    profile = cp.cpu_profile()
    assert profile.gemv_us > 0 and json.loads(cache.read_text())[key]["linear_us"] == profile.linear_us


@pytest.mark.parametrize("one_row_linear", [False, True])
def test_one_bf16_row_takes_the_chosen_path(one_row_linear: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(96, 64, generator=gen).bfloat16()
    b = torch.randn(96, generator=gen).bfloat16()
    x = torch.randn(1, 64, generator=gen).bfloat16()
    got = Matmul(one_row_linear=one_row_linear)(x, w, b)
    want = F.linear(x, w, b) if one_row_linear else torch.addmv(b, w, x[0]).unsqueeze(0)
    assert torch.equal(got, want)
    assert torch.allclose(got.float(), x.float() @ w.float().T + b.float(), atol=0.1)
    # fp32 rows always take addmv (the two paths cost the same there).
    x32, w32 = x.float(), w.float()
    assert torch.equal(Matmul(one_row_linear=True)(x32, w32), torch.mv(w32, x32[0]).unsqueeze(0))
