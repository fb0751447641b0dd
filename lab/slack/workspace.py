"""The local Slack workspace: Web API, Socket Mode, response URLs and lab controls on one port.

The bot is pointed at `base_url` exactly as at Slack (`AsyncWebClient(base_url=...)`, and its
Socket Mode client gets a `ws://` URL from apps.connections.open), so nothing in the bot knows it
is in the lab. Everything that happens is recorded (`records`): tests and people read it through
`/_lab/` or the `recorder` attribute. Tokens and the signing secret are held, compared and used
to sign, never logged or recorded.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from lab.slack.control import LabControl, loopback_only
from lab.slack.delivery import Dispatcher
from lab.slack.ratelimit import ChannelRateLimiter
from lab.slack.records import Recorder
from lab.slack.replies import ResponseUrls
from lab.slack.socket_mode import SocketModeServer
from lab.slack.webapi import WebApi


class SlackWorkspace:
    """A local Slack: Web API over HTTP + Socket Mode over a real WebSocket + HTTP-mode delivery, recording everything."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int,
        bot_token: str,
        app_token: str,
        signing_secret: str,
        record_file: Path | None = None,
        ack_deadline: float = 3.0,
        rate_limit_per_channel: tuple[int, float] = (5, 5.0),
    ) -> None:
        """`port=0` picks a free port at start; `base_url` is valid after `start()`."""
        self.host = host
        self.port = port
        self.recorder = Recorder(record_file=record_file)
        self.rate_limiter = ChannelRateLimiter(limit=rate_limit_per_channel)
        self._responses = ResponseUrls(recorder=self.recorder, base=self._root)
        self._socket = SocketModeServer(recorder=self.recorder, ws_base=self._ws_root, on_ack=self._on_ack)
        self.dispatcher = Dispatcher(
            recorder=self.recorder,
            socket=self._socket,
            responses=self._responses,
            signing_secret=signing_secret,
            ack_deadline=ack_deadline,
        )
        self._webapi = WebApi(
            recorder=self.recorder,
            bot_token=bot_token,
            app_token=app_token,
            rate_limiter=self.rate_limiter,
            open_connection=self._socket.open_url,
        )
        self._control = LabControl(recorder=self.recorder, dispatcher=self.dispatcher, socket=self._socket,
                                   set_http_delivery=self.set_http_delivery)
        self._runner: web.AppRunner | None = None

    @property
    def _root(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def _ws_root(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What slack_sdk's `AsyncWebClient(base_url=...)` takes: `http://HOST:PORT/api/`."""
        return f"{self._root}/api/"

    @property
    def lab_url(self) -> str:
        """Root of the `/_lab/` endpoints."""
        return f"{self._root}/_lab/"

    @property
    def ack_deadline(self) -> float:
        return self.dispatcher.ack_deadline

    @property
    def ratelimited_count(self) -> int:
        return self.recorder.count("ratelimited")

    @property
    def socket_connections(self) -> int:
        return self._socket.connected

    def set_http_delivery(self, url: str | None) -> None:
        """Deliver commands and presses as Slack's signed HTTP requests to `url`; None: back to Socket Mode."""
        self.dispatcher.http_url = url
        self.recorder.record("delivery_mode", mode="http" if url else "socket_mode", url=url)

    async def disconnect_apps(self, *, reason: str = "refresh_requested") -> int:
        """Send Socket Mode `disconnect` to every connection (the app should reconnect)."""
        return await self._socket.disconnect_all(reason=reason)

    async def start(self) -> None:
        app = web.Application(middlewares=[loopback_only])
        app.add_routes(
            [
                web.route("*", "/api/{method}", self._webapi.handle),
                web.get("/socket", self._socket.handle),
                web.post("/hooks/{kind}/{team}/{num}/{secret}", self._responses.handle),
                *self._control.routes(),
            ]
        )
        self.recorder.open()
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = self._runner.addresses[0][1]
            self._socket.ws_base = self._ws_root
            self._responses.base = self._root
        self.recorder.record("workspace", event="started", base_url=self.base_url)

    async def stop(self) -> None:
        """Close the app's WebSockets, cancel deadlines and HTTP deliveries, stop serving, close the record."""
        await self._socket.close()
        await self.dispatcher.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.recorder.record("workspace", event="stopped")
        self.recorder.close()

    def _on_ack(self, envelope_id: str, payload: dict | None) -> None:
        self.dispatcher.on_ack(envelope_id, payload)
