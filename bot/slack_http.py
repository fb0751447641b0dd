"""Slack's HTTP mode: one endpoint (`POST /slack/events`) that Slack signs and the bot verifies.

Why a check in front of Bolt when Bolt verifies too: a refused request must do nothing, and say
why in the log and in `/metrics` (missing headers, a stale timestamp, a bad signature) without
echoing what it carried. The check uses slack_sdk's `SignatureVerifier` (the class Bolt's own
`AsyncRequestVerification` uses), and Bolt's verification stays on behind it, so a request that
reaches a listener has passed both. Requests older than five minutes are refused: a captured
request cannot be replayed later.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from enum import StrEnum

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp
from slack_sdk.signature import Clock, SignatureVerifier

from bot import metrics
from bot.acks import ACKS
from bot.log import get_logger

log = get_logger("etcdbot.http")

PATH = "/slack/events"
MAX_AGE_SECONDS = 5 * 60
BACKLOG = 1024
TIMESTAMP_HEADER = "X-Slack-Request-Timestamp"
SIGNATURE_HEADER = "X-Slack-Signature"


class Refusal(StrEnum):
    MISSING_HEADERS = "missing_headers"
    STALE_TIMESTAMP = "stale_timestamp"
    BAD_SIGNATURE = "bad_signature"


def make_verifier(signing_secret: str, *, clock: Clock | None = None) -> SignatureVerifier:
    """`clock` is for tests of Slack's documented example, whose timestamp is from 2018."""
    return SignatureVerifier(signing_secret=signing_secret, clock=clock or Clock())


def check_request(*, verifier: SignatureVerifier, headers: Mapping[str, str], body: str | bytes) -> Refusal | None:
    """None when Slack signed this body within the last five minutes; otherwise why not."""
    timestamp = (headers.get(TIMESTAMP_HEADER) or "").strip()
    signature = (headers.get(SIGNATURE_HEADER) or "").strip()
    if not timestamp or not signature:
        return Refusal.MISSING_HEADERS
    if not timestamp.isdigit() or abs(verifier.clock.now() - int(timestamp)) > MAX_AGE_SECONDS:
        return Refusal.STALE_TIMESTAMP
    if not verifier.is_valid(body=body, timestamp=timestamp, signature=signature):
        return Refusal.BAD_SIGNATURE
    return None


def build_web_app(app: AsyncApp, *, verifier: SignatureVerifier) -> web.Application:
    """The aiohttp application of HTTP mode (separate from `serve` so tests can mount it)."""

    async def events(request: web.Request) -> web.Response:
        started = time.monotonic()
        with ACKS.request():
            response = await _events(request)
        metrics.ack_sent(time.monotonic() - started)
        return response

    async def _events(request: web.Request) -> web.Response:
        body = await request.text()
        refusal = check_request(verifier=verifier, headers=request.headers, body=body)
        if refusal is not None:
            metrics.http_refused(refusal.value)
            # The remote address and the reason only: never the body, headers or signature.
            log.warning("http.refused", reason=refusal.value, remote=request.remote)
            return web.json_response({"ok": False, "error": "invalid_request"}, status=401)
        # aiohttp keeps the body it read: Bolt's adapter gets the same bytes that were verified.
        response = await app.async_dispatch(await to_bolt_request(request))
        return await to_aiohttp_response(response)

    web_app = web.Application()
    web_app.router.add_post(PATH, events)
    return web_app


async def serve(app: AsyncApp, *, signing_secret: str, port: int, host: str = "0.0.0.0") -> None:
    """Serves HTTP mode until cancelled."""
    runner = web.AppRunner(build_web_app(app, verifier=make_verifier(signing_secret)), access_log=None)
    await runner.setup()
    # A burst of commands opens many connections at once; asyncio's default backlog (100) would
    # drop the rest of them, and each dropped SYN comes back a second later.
    await web.TCPSite(runner, host=host, port=port, backlog=BACKLOG).start()
    log.info("http.listening", port=port, path=PATH)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
