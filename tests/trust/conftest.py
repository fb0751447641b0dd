"""Fixtures of the trust tests: a REAL redis-server on a free port (one per module, flushed per
test), and backups made of real files in a real BackupStore."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.runner.conftest import rds, redis_url  # noqa: F401 (the same real redis-server fixtures)


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    return tmp_path / "backups"
