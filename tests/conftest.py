"""Shared fixtures: `lab` starts one lab per test module (on free ports, so modules run in
parallel) and stops it afterwards, checking that no process is left behind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.labfixture import Lab, start_lab, stop_lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Lab]:
    extra = getattr(request.module, "LAB_ARGS", ("--clock-speed", "30"))
    running = start_lab(tmp_path_factory.mktemp("lab") / "lab", *extra)
    try:
        yield running
    finally:
        stop_lab(running)
