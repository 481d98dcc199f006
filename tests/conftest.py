"""Fixtures shared by every test package."""

from __future__ import annotations

import pytest

from tests.checkpoints import Written, write_checkpoint


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Written:
    return write_checkpoint(tmp_path_factory.mktemp("tiny") / "model", preset="small", dtype="float16")
