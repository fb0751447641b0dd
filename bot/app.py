"""Builds the Bolt AsyncApp and runs it, in Socket Mode or over HTTP.

Every Slack call (Web API and Socket Mode's `apps.connections.open`) goes to
ETCDBOT_SLACK_API_URL: that one setting is what points the production bot at the lab's workspace.
"""

from __future__ import annotations

import asyncio

from slack_bolt.async_app import AsyncApp
from slack_sdk.http_retry.builtin_async_handlers import async_default_handlers
from slack_sdk.web.async_client import AsyncWebClient

import handlers
from bot.auth import CLOSED_REASON, Authorizer
from bot.clusters import Clusters
from bot.config import Settings
from bot.health import HealthServer
from bot.log import get_logger
from bot.metrics import SlackApiObserver
from bot.services import Services, build_services

log = get_logger("etcdbot.app")


def build_app(settings: Settings, *, clusters: Clusters | None = None, services: Services | None = None) -> AsyncApp:
    """The app with every handler registered; nothing is connected yet."""
    token = settings.slack_bot_token.get_secret_value()
    # The observer counts Slack API errors and 429s for /metrics; Bolt copies retry handlers to
    # the client it makes per request, so every call is seen.
    client = AsyncWebClient(token=token, base_url=settings.slack_api_url,
                            retry_handlers=[SlackApiObserver(), *async_default_handlers()])
    signing_secret = settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else ""
    app = AsyncApp(
        client=client,
        signing_secret=signing_secret,
        # Socket Mode needs no request verification; HTTP mode checks signatures (the default).
        request_verification_enabled=settings.slack_mode == "http",
    )
    authorizer = Authorizer(allowed_users=settings.allowed_users, allowed_usergroup=settings.allowed_usergroup)
    if authorizer.closed:
        log.warning("auth.closed", detail=f"every command is refused: {CLOSED_REASON}")
    handlers.register(app, settings=settings, clusters=clusters or Clusters(settings), authorizer=authorizer,
                      services=services)
    return app


async def run(settings: Settings) -> None:
    """Runs until cancelled (SIGINT/SIGTERM in `bot.main`)."""
    clusters = Clusters(settings)
    services = build_services(settings, clusters=clusters)
    await services.open()  # also offers Resume/Abort for runs a dead bot left (recover_interrupted)
    app = build_app(settings, clusters=clusters, services=services)
    log.info("app.start", mode=settings.slack_mode, clusters=list(settings.cluster_names),
             slack_api_url=settings.slack_api_url)
    health = HealthServer(redis_url=settings.redis_url, slack=app.client, port=settings.health_port,
                          access=f"closed: {CLOSED_REASON}" if settings.closed else "open to the allowed users",
                          redis_password=settings.redis_options().get("password", ""))
    await health.start()
    try:
        if settings.slack_mode == "socket":
            await _run_socket_mode(app, settings)
        else:
            await _run_http(app, settings)
    finally:
        await health.stop()
        await services.close()
        clusters.close()
        log.info("app.stop")


async def _run_socket_mode(app: AsyncApp, settings: Settings) -> None:
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

    assert settings.slack_app_token is not None  # Settings refuses socket mode without it
    # web_client=app.client: apps.connections.open must go to the same base_url as everything else.
    handler = AsyncSocketModeHandler(app, settings.slack_app_token.get_secret_value(), web_client=app.client)
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
