"""ETCDBOT_REDIS_PASSWORD against a REAL redis-server that requires a password (as the chart's
bundled Redis does): the bot's Redis connections authenticate with it, and without it Redis
refuses them (so /readyz reports redis failed, never the password)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bot.clusters import Clusters
from bot.config import load_settings
from bot.services import build_services
from tests.runner.conftest import free_port

PASSWORD = "kit-redis-pw-0123456789"


@pytest.fixture
def protected_redis(tmp_path: Path) -> Iterator[str]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                "--dir", str(tmp_path), "--requirepass", PASSWORD],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        client = redis.Redis(port=port, password=PASSWORD)
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline and process.poll() is None, "redis-server did not start"
                time.sleep(0.02)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def settings_for(url: str, tmp_path: Path, **extra: str):
    (tmp_path / "kubeconfig").write_text("x")
    clusters = [{"name": "lab", "kubeconfig": str(tmp_path / "kubeconfig")}]
    return load_settings(environ={"ETCDBOT_SLACK_BOT_TOKEN": "xoxb-x", "ETCDBOT_SLACK_APP_TOKEN": "xapp-x",
                                  "ETCDBOT_CLUSTERS": json.dumps(clusters), "ETCDBOT_REDIS_URL": url,
                                  "ETCDBOT_BACKUP_DIR": str(tmp_path / "store"), **extra})


async def test_the_bot_authenticates_with_the_password(protected_redis: str, tmp_path: Path) -> None:
    with_password = settings_for(protected_redis, tmp_path, ETCDBOT_REDIS_PASSWORD=PASSWORD)
    assert PASSWORD in with_password.secret_values()  # redacted from every log line
    services = build_services(with_password, clusters=Clusters(with_password))
    try:
        assert await services.redis.ping()
    finally:
        await services.redis.aclose()
        await services.sender.close()

    without = settings_for(protected_redis, tmp_path)
    refused = build_services(without, clusters=Clusters(without))
    try:
        with pytest.raises(redis.exceptions.AuthenticationError):
            await refused.redis.ping()
    finally:
        await refused.redis.aclose()
        await refused.sender.close()
