"""Builds the Bolt AsyncApp and runs it, in Socket Mode or over HTTP.

Every Slack call (Web API and Socket Mode's `apps.connections.open`) goes to
ETCDBOT_SLACK_API_URL: that one setting is what points the production bot at the lab's workspace.

Why the start does some work up front: an incident channel sends many commands at once, and
Slack waits 3 s for each ack. Bolt, given a token, calls `auth.test` on the first request (every
request of the first burst, since none has the answer yet); here the bot's identity is resolved
once at start and handed to Bolt through `authorize`, which then answers from memory. The Slack
clients share one HTTP session (one connection pool instead of a new one per call), the SSH
connections to the masters are opened and kept warm (`Clusters.keep_warm`), and the thread pool
that carries the Kubernetes client's blocking calls is sized for a status's parallel calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import async_default_handlers
from slack_sdk.web.async_client import AsyncWebClient

import handlers
from bot.acks import ACKS
from bot.auth import CLOSED_REASON, Authorizer
from bot.clusters import Clusters
from bot.config import Settings
from bot.health import HealthServer
from bot.log import get_logger
from bot.metrics import SlackApiObserver
from bot.services import Services, build_services
from bot.tasks import cancel_and_wait

log = get_logger("etcdbot.app")

# Threads for blocking calls (the kubernetes client): a status runs about ten at once, and
# asyncio's default (CPUs + 4) would queue them on a small machine.
WORKER_THREADS = 32
IDENTITY_TIMEOUT = 10.0


class Identity:
    """The bot's own identity (`auth.test`), resolved once and served to Bolt from memory.

    `resolve()` at start; if Slack did not answer then, the first request that needs it asks
    (one call shared by every request waiting), and the answer is kept.
    """

    def __init__(self, client: AsyncWebClient) -> None:
        self._client = client
        self._result: dict[str, Any] | None = None
        self._pending: asyncio.Future[dict[str, Any]] | None = None

    async def resolve(self) -> dict[str, Any]:
        if self._result is not None:
            return self._result
        if self._pending is None or (self._pending.done() and self._pending.exception() is not None):
            self._pending = asyncio.ensure_future(self._ask())
        return await asyncio.shield(self._pending)

    async def _ask(self) -> dict[str, Any]:
        response = await asyncio.wait_for(self._client.auth_test(), timeout=IDENTITY_TIMEOUT)
        self._result = dict(response.data) if isinstance(response.data, dict) else {}
        return self._result

    def authorize_function(self) -> Callable[..., Awaitable[AuthorizeResult]]:
        """Bolt's `authorize` (a plain function: Bolt passes arguments by their names); no I/O
        once resolved."""

        async def authorize(enterprise_id: str | None, team_id: str | None, user_id: str | None) -> AuthorizeResult:
            found = self._result if self._result is not None else await self.resolve()
            return AuthorizeResult(
                enterprise_id=found.get("enterprise_id") or enterprise_id,
                team_id=found.get("team_id") or team_id,
                bot_user_id=found.get("user_id"),
                bot_id=found.get("bot_id"),
                bot_token=self._client.token,
                user_id=user_id,
            )

        return authorize


def build_app(settings: Settings, *, clusters: Clusters | None = None, services: Services | None = None,
              session: aiohttp.ClientSession | None = None, identity: Identity | None = None,
              authorizer: Authorizer | None = None) -> AsyncApp:
    """The app with every handler registered; nothing is connected yet. With `identity`, Bolt
    asks it (from memory) instead of calling `auth.test` itself."""
    token = settings.slack_bot_token.get_secret_value()
    # The observer counts Slack API errors and 429s for /metrics; Bolt copies retry handlers to
    # the client it makes per request, so every call is seen. Bolt's per-request clients also
    # share this client's session.
    client = AsyncWebClient(token=token, base_url=settings.slack_api_url, session=session,
                            retry_handlers=[SlackApiObserver(), *async_default_handlers()])
    signing_secret = settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else ""
    app = AsyncApp(
        client=client,
        signing_secret=signing_secret,
        # Socket Mode needs no request verification; HTTP mode checks signatures (the default).
        request_verification_enabled=settings.slack_mode == "http",
        authorize=identity.authorize_function() if identity is not None else None,
    )
    authorizer = authorizer or make_authorizer(settings)
    if authorizer.closed:
        log.warning("auth.closed", detail=f"every command is refused: {CLOSED_REASON}")
    handlers.register(app, settings=settings, clusters=clusters or Clusters(settings), authorizer=authorizer,
                      services=services)
    return app


def make_authorizer(settings: Settings) -> Authorizer:
    return Authorizer(allowed_users=settings.allowed_users, allowed_usergroup=settings.allowed_usergroup)


@contextlib.asynccontextmanager
async def _slack_session() -> AsyncIterator[aiohttp.ClientSession]:
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30),
                                    connector=aiohttp.TCPConnector(limit=100, keepalive_timeout=30))
    try:
        yield session
    finally:
        await session.close()


async def _resolve_identity(identity: Identity) -> None:
    try:
        found = await identity.resolve()
        log.info("slack.identity", team=found.get("team_id"), bot_user=found.get("user_id"))
    except (SlackApiError, OSError, TimeoutError, aiohttp.ClientError) as exc:  # asked again on the first request
        log.warning("slack.identity_unresolved", error=type(exc).__name__)


def _freeze_startup_heap() -> None:
    """Moves what start-up built (the kubernetes client's models alone are ~170 000 objects) out
    of the garbage collector's sight: a full collection otherwise walks it all, 100+ ms with the
    event loop stopped, in the middle of a burst of acks. Nothing here is garbage: it lives as
    long as the process."""
    gc.collect()
    gc.freeze()


async def run(settings: Settings) -> None:
    """Runs until cancelled (SIGINT/SIGTERM in `bot.main`)."""
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="etcdbot"))
    clusters = Clusters(settings)
    services = build_services(settings, clusters=clusters)
    await services.open()  # also offers Resume/Abort for runs a dead bot left (recover_interrupted)
    async with _slack_session() as session:
        identity_client = AsyncWebClient(token=settings.slack_bot_token.get_secret_value(),
                                         base_url=settings.slack_api_url, session=session)
        identity = Identity(identity_client)
        warm = asyncio.create_task(clusters.keep_warm(), name="etcdbot-ssh-warm")
        authorizer = make_authorizer(settings)
        await asyncio.gather(_resolve_identity(identity), authorizer.refresh(identity_client))
        app = build_app(settings, clusters=clusters, services=services, session=session, identity=identity,
                        authorizer=authorizer)
        log.info("app.start", mode=settings.slack_mode, clusters=list(settings.cluster_names),
                 slack_api_url=settings.slack_api_url)
        health = HealthServer(redis_url=settings.redis_url, slack=app.client, port=settings.health_port,
                              access=f"closed: {CLOSED_REASON}" if settings.closed else "open to the allowed users",
                              redis_password=settings.redis_options().get("password", ""))
        await health.start()
        _freeze_startup_heap()
        try:
            if settings.slack_mode == "socket":
                await _run_socket_mode(app, settings)
            else:
                await _run_http(app, settings)
        finally:
            await health.stop()
            await cancel_and_wait(warm)
            await services.close()
            await clusters.aclose()
            log.info("app.stop")


async def _run_socket_mode(app: AsyncApp, settings: Settings) -> None:
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
    from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
    from slack_sdk.socket_mode.request import SocketModeRequest

    class Handler(AsyncSocketModeHandler):  # type: ignore[misc]
        """Counts each message as a request waiting for its ack (`bot.acks`)."""

        async def handle(self, client: AsyncBaseSocketModeClient, req: SocketModeRequest) -> None:
            with ACKS.request():
                await super().handle(client, req)

    assert settings.slack_app_token is not None  # Settings refuses socket mode without it
    # web_client=app.client: apps.connections.open must go to the same base_url as everything else.
    handler = Handler(app, settings.slack_app_token.get_secret_value(), web_client=app.client)
    await handler.connect_async()
    try:
        await asyncio.Event().wait()
    finally:
        await handler.close_async()


async def _run_http(app: AsyncApp, settings: Settings) -> None:
    from bot import slack_http

    assert settings.slack_signing_secret is not None  # Settings refuses HTTP mode without it
    await slack_http.serve(app, signing_secret=settings.slack_signing_secret.get_secret_value(),
                           port=settings.http_port)
