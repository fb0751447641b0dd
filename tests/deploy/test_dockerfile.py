"""The Dockerfile: clean under the real hadolint, and shaped as the deploy brief says (no Docker
daemon here, so the build itself is checked by reading the instructions)."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path

from tests.deploy.conftest import REPO

DOCKERFILE = REPO / "Dockerfile"


def test_hadolint_is_clean(hadolint: str) -> None:
    result = subprocess.run(
        [hadolint, "--no-color", "--format", "json", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


def test_hadolint_catches_a_bad_dockerfile(hadolint: str, tmp_path: Path) -> None:
    """The linter really runs: an unpinned apt install with apt lists left behind is reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:bookworm\nRUN apt-get update && apt-get install -y curl\n")
    result = subprocess.run([hadolint, "--no-color", "--format", "json", str(bad)],
                            capture_output=True, text=True, timeout=60, check=False)
    codes = {f["code"] for f in json.loads(result.stdout)}
    assert {"DL3008", "DL3009", "DL3015"} <= codes
    assert result.returncode != 0


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for inst in instructions():
        if inst[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(inst)
    return result


def args_of(stage: list[tuple[str, str]], word: str) -> list[str]:
    return [a for w, a in stage if w == word]


def test_multi_stage_on_python_311_slim() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim(-\w+)?$", text, re.M)
    builder, final = stages()
    assert args_of(builder, "FROM") == ["${PYTHON_IMAGE} AS builder"]
    assert args_of(final, "FROM") == ["${PYTHON_IMAGE}"]
    assert any("pip install" in a and "/src" in a for a in args_of(builder, "RUN"))
    assert "--from=builder /opt/venv /opt/venv" in args_of(final, "COPY")


def test_final_stage_tools_user_and_entrypoint() -> None:
    final = stages()[-1]
    runs = " ".join(args_of(final, "RUN"))
    for package in ("etcd-client", "etcd-server", "openssh-client"):
        assert re.search(rf"\b{package}=\S+", runs), f"{package} missing or unpinned"
    for build_tool in ("gcc", "build-essential", "make", "python3-dev", "libffi-dev"):
        assert not re.search(rf"\b{re.escape(build_tool)}\b", runs), build_tool
    assert "rm -rf /var/lib/apt/lists/*" in runs
    assert "--uid 10001" in runs
    assert args_of(final, "USER") == ["10001"]
    assert args_of(final, "ENTRYPOINT") == ['["etcdbot", "run"]']
    assert sorted(" ".join(args_of(final, "EXPOSE")).split()) == ["3000", "8080"]
    (healthcheck,) = args_of(final, "HEALTHCHECK")
    assert "CMD [" in healthcheck and "urllib.request" in healthcheck and "/healthz" in healthcheck
    assert "curl" not in healthcheck and "ETCDBOT_HEALTH_PORT', '8080'" in healthcheck
    envs = " ".join(args_of(final, "ENV"))
    assert "ETCDBOT_BACKUP_DIR=/var/lib/etcdbot/backups" in envs


def test_healthcheck_command_is_valid_python() -> None:
    (healthcheck,) = args_of(stages()[-1], "HEALTHCHECK")
    argv = json.loads(healthcheck[healthcheck.index("CMD ") + 4:])
    assert argv[:2] == ["python", "-c"]
    compile(argv[2], "<healthcheck>", "exec")


def test_dockerignore_sends_the_packages_and_nothing_else() -> None:
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*", "deny everything first, then allow what the build needs"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages, "pyproject lists its packages"
    assert packages | {"pyproject.toml"} <= allowed
    readme = pyproject["project"].get("readme")
    if isinstance(readme, str):
        assert readme in allowed
    for never in (".venv", ".git", "tests", ".lab", "helm"):
        assert never not in allowed


def test_entrypoint_script_is_declared() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "etcdbot" in pyproject["project"]["scripts"], "ENTRYPOINT runs `etcdbot run`"
