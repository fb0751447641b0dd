"""Health and metrics on their own port (ETCDBOT_HEALTH_PORT), in Socket Mode and HTTP mode alike.

Why a separate server: in Socket Mode the bot has no inbound HTTP at all, yet Kubernetes needs
probes and Prometheus a scrape target; and in HTTP mode the Slack port is the one exposed by the
Route, which should carry Slack's requests and nothing else.

- `/healthz`: the process and its event loop answer (liveness: a restart would help).
- `/readyz`: Redis answers PING and Slack answers `auth.test`, each within a timeout; 503 names
  the one that did not (readiness: a restart would not help, traffic should wait). Its `access`
  says whether anyone may run commands: a bot closed by default (no allowed users or group) is
  ready, since it must answer each command with the refusal that names the setting, and says
  "closed" with that setting here.
- `/metrics`: prometheus-client's text format (bot/metrics.py).

Failures are reported by kind (exception type, Slack error code), never by message: a Redis
error can carry its URL, and a URL can carry a password.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from aiohttp import web
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot import metrics
from bot.log import get_logger

log = get_logger("etcdbot.health")

DEFAULT_TIMEOUT = 2.0


class HealthServer:
    def __init__(
        self,
        *,
        redis_url: str,
        slack: AsyncWebClient,
        port: int,
        host: str = "0.0.0.0",
        timeout: float = DEFAULT_TIMEOUT,
        access: str = "",
        redis_password: str = "",
    ) -> None:
        self._access = access
        self._redis = aioredis.from_url(redis_url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                        **({"password": redis_password} if redis_password else {}))
        self._slack = slack
        self._host = host
        self.port = port
        self._timeout = timeout
        self._runner: web.AppRunner | None = None

    def web_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def start(self) -> None:
        """Binds the port (0 picks a free one; `port` holds it afterwards)."""
        self._runner = web.AppRunner(self.web_app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host=self._host, port=self.port)
        await site.start()
        if self.port == 0:
            self.port = self._runner.addresses[0][1]
        log.info("health.listening", port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._redis.aclose()

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(self, _request: web.Request) -> web.Response:
        redis_state, slack_state = await asyncio.gather(
            self._check(self._ping_redis), self._check(self._auth_test)
        )
        checks = {"redis": redis_state, "slack": slack_state}
        failed = sorted(name for name, state in checks.items() if state != "ok")
        if failed:
            log.warning("health.not_ready", **checks)
        body: dict[str, object] = {"ready": not failed, "failed": failed, "checks": checks}
        if self._access:
            body["access"] = self._access
        return web.json_response(body, status=503 if failed else 200)

    async def metrics(self, _request: web.Request) -> web.Response:
        body, content_type = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _check(self, probe: Callable[[], Awaitable[None]]) -> str:
        try:
            async with asyncio.timeout(self._timeout):
                await probe()
        except TimeoutError:
            return f"timeout after {self._timeout:g} s"
        except SlackApiError as exc:
            return f"error: {metrics.slack_error_code(exc.response.get('error'))}"
        except Exception as exc:  # any failure means not ready; its type says enough
            return f"error: {type(exc).__name__}"
        return "ok"

    async def _ping_redis(self) -> None:
        await self._redis.ping()

    async def _auth_test(self) -> None:
        await self._slack.auth_test()
