"""bot/health.py against dead dependencies: /readyz says which one failed, within its timeout;
/healthz and /metrics still answer. (Ready against live ones: tests/e2e/test_http_mode.py.)"""

from __future__ import annotations

import socket
import time

import aiohttp
from slack_sdk.web.async_client import AsyncWebClient

from bot.health import HealthServer


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_not_ready_names_what_failed() -> None:
    slack = AsyncWebClient(token="xoxb-unit-secret", base_url=f"http://127.0.0.1:{closed_port()}/api/")
    redis_url = f"redis://:hunter2-password@127.0.0.1:{closed_port()}/0"
    health = HealthServer(redis_url=redis_url, slack=slack, port=0, host="127.0.0.1", timeout=1.0)
    await health.start()
    try:
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{health.port}") as http:
            started = time.monotonic()
            async with http.get("/readyz") as response:
                body = await response.json()
                assert response.status == 503
            assert time.monotonic() - started < 5
            assert body["failed"] == ["redis", "slack"] and not body["ready"]
            assert "hunter2" not in str(body) and "xoxb" not in str(body)
            async with http.get("/healthz") as response:
                assert response.status == 200
            async with http.get("/metrics") as response:
                assert response.status == 200 and response.content_type == "text/plain"
                assert "etcdbot_commands_total" in await response.text()
    finally:
        await health.stop()
