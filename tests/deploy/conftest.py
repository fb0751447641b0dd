"""Finding the real tools (helm, hadolint) and rendering the chart with them.

A test that needs a tool skips only on a developer's machine without it; under CI (env CI set)
a missing tool is a failure, so a green CI always means the chart and the Dockerfile were checked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "etcdbot"
RELEASE = "etcdbot"
NAMESPACE = "etcdbot"


def find_tool(name: str, *, env_var: str, extra: Iterable[Path] = ()) -> str:
    """Path of a tool: $env_var, then PATH, then the places our install scripts put it.

    Missing: skip on a developer's machine, fail under CI.
    """
    explicit = os.environ.get(env_var)
    candidates = [Path(explicit)] if explicit else []
    found = shutil.which(name)
    if found:
        candidates.append(Path(found))
    candidates += [Path(sys.executable).parent / name, *extra]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    message = f"{name} not found (set {env_var}, or put it on PATH)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}: CI must install it", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def helm() -> str:
    return find_tool(
        "helm",
        env_var="HELM",
        extra=(REPO / ".venv" / "tools" / "helm",),
    )


@pytest.fixture(scope="session")
def hadolint() -> str:
    return find_tool("hadolint", env_var="HADOLINT")


class UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys: the API server would reject such a manifest."""


def _construct_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def run_helm(helm: str, *args: str, values: dict[str, Any] | None = None, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    cmd = [helm, *args]
    tmp_path.mkdir(parents=True, exist_ok=True)
    if values is not None:
        values_file = tmp_path / "values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        cmd += ["-f", str(values_file)]
    env = {**os.environ, "HELM_CACHE_HOME": str(tmp_path / "cache"), "HELM_CONFIG_HOME": str(tmp_path / "config"),
           "HELM_DATA_HOME": str(tmp_path / "data")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)


def render(helm: str, values: dict[str, Any], tmp_path: Path) -> list[dict[str, Any]]:
    """`helm template` with these values; the objects, each checked for duplicate keys."""
    result = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, values=values,
                      tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.load_all(result.stdout, Loader=UniqueKeyLoader) if d]
    assert docs, "helm template rendered nothing"
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), doc
    return docs
