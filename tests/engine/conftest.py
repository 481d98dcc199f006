"""Fixtures shared by the native kernels' tests."""

from __future__ import annotations

import pytest

from bloomtui.engine.compute import native

BUILDS = {family: arch for family, (arch, _needs) in native.FAMILIES.items()}
"""Every CPU family's build (an AVX-512 BF16 machine runs all three): between them they compile every path of
the C sources, which pick their path by the instructions a build may use, as this machine's own build does."""


@pytest.fixture(scope="module", params=list(BUILDS))
def kernels(request: pytest.FixtureRequest) -> native.NativeKernels:
    """The kernels of one CPU family, built for it; skipped where this CPU cannot run that family."""
    arch = native.family_arch(request.param)
    built = arch if isinstance(arch, str) else native.build(arch)
    if isinstance(built, str):
        pytest.skip(f"the native kernels cannot run on this machine: {built}")
    return built
