"""Builds the Bolt AsyncApp and runs it, in Socket Mode or over HTTP.

Every Slack call (Web API and Socket Mode's `apps.connections.open`) goes to
ETCDBOT_SLACK_API_URL: that one setting is what points the production bot at the lab's workspace.
"""

from __future__ import annotations

import asyncio

from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

import handlers
from bot.auth import Authorizer
from bot.clusters import Clusters
from bot.config import Settings
from bot.log import get_logger

log = get_logger("etcdbot.app")


def build_app(settings: Settings, *, clusters: Clusters | None = None) -> AsyncApp:
    """The app with every handler registered; nothing is connected yet."""
    token = settings.slack_bot_token.get_secret_value()
    client = AsyncWebClient(token=token, base_url=settings.slack_api_url)
    app = AsyncApp(
        client=client,
        signing_secret=settings.slack_signing_secret.get_secret_value(),
        # Socket Mode needs no request verification; HTTP mode checks signatures (the default).
        request_verification_enabled=settings.slack_mode == "http",
    )
    authorizer = Authorizer(allowed_users=settings.allowed_users, allowed_usergroup=settings.allowed_usergroup)
    if authorizer.open_to_all:
        log.warning("auth.open", detail="neither ETCDBOT_ALLOWED_USERS nor ETCDBOT_ALLOWED_USERGROUP is set: "
                                        "everyone in the workspace may run commands")
    handlers.register(app, settings=settings, clusters=clusters or Clusters(settings), authorizer=authorizer)
    return app


async def run(settings: Settings) -> None:
    """Runs until cancelled (SIGINT/SIGTERM in `bot.main`)."""
    clusters = Clusters(settings)
    app = build_app(settings, clusters=clusters)
    log.info("app.start", mode=settings.slack_mode, clusters=list(settings.cluster_names),
             slack_api_url=settings.slack_api_url)
    try:
        if settings.slack_mode == "socket":
            await _run_socket_mode(app, settings)
        else:
            await _run_http(app, settings)
    finally:
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
    from aiohttp import web
    from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request

    async def events(request: web.Request) -> web.Response:
        body = await request.text()
        response = await app.async_dispatch(to_bolt_request(request, body))
        return await to_aiohttp_response(response)

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    web_app = web.Application()
    web_app.router.add_post("/slack/events", events)
    web_app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(web_app)
    await runner.setup()
    site = web.TCPSite(runner, host="0.0.0.0", port=settings.http_port)
    await site.start()
    log.info("http.listening", port=settings.http_port, path="/slack/events")
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
