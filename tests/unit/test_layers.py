"""The layers of DESIGN.md hold: import-linter's contracts (pyproject.toml) are kept, every module
of bot/ sits in exactly one layer, and a wrong arrow really fails the build (checked on a copy of
the code with one bad import added)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"]


def lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([*LINT, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["id"] == "layers"]
    return contract["layers"]


def test_the_contracts_are_kept() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_module_of_bot_is_in_one_layer() -> None:
    placed = [name.strip() for layer in layers() for name in re.split(r"[:|]", layer)]
    modules = {f"bot.{p.stem}" for p in (ROOT / "bot").glob("*.py") if p.stem != "__init__"} | {"bot.cluster"}
    unplaced = sorted(m for m in modules if m not in placed)
    assert not unplaced, (f"{unplaced} belong to no layer: add each to the engine or foundation layer in "
                          "pyproject.toml [tool.importlinter] (foundation only if it imports no engine module)")
    assert len(placed) == len(set(placed)), "a module is in two layers"


def test_a_wrong_arrow_fails(tmp_path: Path) -> None:
    for package in ("bot", "handlers", "procedures", "lab"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    facts = tmp_path / "procedures" / "facts.py"
    facts.write_text(facts.read_text() + "\nfrom bot import runner as _wrong  # noqa: E402\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    assert "procedures.facts -> bot.runner" in result.stdout, result.stdout
