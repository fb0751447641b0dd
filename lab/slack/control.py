"""The `/_lab/` endpoints: act as a person (command, press) and read what happened.

Used by the `etcdbot-lab slack` CLI and by tests, never by the bot. No auth: the workspace binds
to loopback and these endpoints refuse any other peer. Every answer carries `cursor` (the newest
record's seq) so a caller can ask "what happened since I sent this".
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from aiohttp import web

from lab.slack import directory
from lab.slack.delivery import Dispatcher
from lab.slack.records import Recorder
from lab.slack.socket_mode import SocketModeServer
from lab.slack.view import find_button, transcript, view_for

LOOPBACK = ("127.0.0.1", "::1")


def _error(error: str, *, status: int = 400) -> web.Response:
    return web.json_response({"ok": False, "error": error}, status=status)


@web.middleware
async def loopback_only(request: web.Request, handler):  # type: ignore[no-untyped-def]
    if request.path.startswith("/_lab/") and request.remote not in LOOPBACK:
        return _error("loopback_only", status=403)
    return await handler(request)


class LabControl:
    def __init__(
        self,
        *,
        recorder: Recorder,
        dispatcher: Dispatcher,
        socket: SocketModeServer,
        set_http_delivery: Callable[[str | None], None] | None = None,
    ) -> None:
        self._recorder = recorder
        self._dispatcher = dispatcher
        self._socket = socket
        self._set_http_delivery = set_http_delivery

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/_lab/command", self.command),
            web.post("/_lab/press", self.press),
            web.get("/_lab/transcript", self.transcript),
            web.get("/_lab/quiet", self.quiet),
            web.get("/_lab/view", self.view),
            web.post("/_lab/disconnect", self.disconnect),
            web.get("/_lab/status", self.status),
            web.post("/_lab/http-delivery", self.http_delivery),
        ]

    async def command(self, request: web.Request) -> web.Response:
        """{user, channel, text: "/cmd args"} -> {ok, id, cursor}; `cursor` is from before the command."""
        body = await _json(request)
        user = directory.find_user(str(body.get("user", "")))
        channel = directory.find_channel(str(body.get("channel") or "incident"))
        text = str(body.get("text", "")).strip()
        if user is None or user.is_bot:
            return _error("user_not_found")
        if channel is None:
            return _error("channel_not_found")
        if not text.startswith("/") or len(text) < 2:
            return _error("not_a_command")
        cursor = self._recorder.cursor
        delivery = await self._dispatcher.command(user=user, channel=channel, text=text)
        return web.json_response({"ok": True, "id": delivery.id, "cursor": cursor})

    async def press(self, request: web.Request) -> web.Response:
        """{user, button_text | action_id, message_ts?, channel?} -> {ok, id, cursor, message_ts, action_id}."""
        body = await _json(request)
        user = directory.find_user(str(body.get("user", "")))
        if user is None or user.is_bot:
            return _error("user_not_found")
        channel_ref = body.get("channel")
        channel = directory.find_channel(str(channel_ref)) if channel_ref else None
        if channel_ref and channel is None:
            return _error("channel_not_found")
        if not body.get("button_text") and not body.get("action_id"):
            return _error("button_text_or_action_id_required")
        found = find_button(
            self._recorder,
            user=user.id,
            button_text=body.get("button_text"),
            action_id=body.get("action_id"),
            message_ts=body.get("message_ts"),
            channel=channel.id if channel else None,
        )
        if found is None:
            return _error("button_not_found", status=404)
        message, button = found
        message_channel = directory.find_channel(message.channel)
        assert message_channel is not None  # messages are only stored for known channels
        cursor = self._recorder.cursor
        delivery = await self._dispatcher.press(
            user=user, channel=message_channel, message=message, button=button
        )
        return web.json_response(
            {
                "ok": True,
                "id": delivery.id,
                "cursor": cursor,
                "message_ts": message.ts,
                "action_id": button.action_id,
            }
        )

    async def transcript(self, request: web.Request) -> web.Response:
        channel = self._channel_query(request)
        if isinstance(channel, web.Response):
            return channel
        records = transcript(self._recorder, since=_int(request, "since"), channel=channel)
        return web.json_response({"ok": True, "cursor": self._recorder.cursor, "records": records})

    async def quiet(self, request: web.Request) -> web.Response:
        """Wait until nothing happened for `quiet` seconds and no ack is outstanding (or `timeout`)."""
        quiet = float(request.query.get("quiet", "1.0"))
        timeout = float(request.query.get("timeout", "30"))
        settled = await self._recorder.wait_quiet(
            quiet=quiet, give_up_after=timeout, busy=self._dispatcher.busy
        )
        return web.json_response({"ok": True, "quiet": settled, "cursor": self._recorder.cursor})

    async def view(self, request: web.Request) -> web.Response:
        user = directory.find_user(request.query.get("user", ""))
        if user is None:
            return _error("user_not_found")
        channel = self._channel_query(request)
        if isinstance(channel, web.Response):
            return channel
        view = view_for(self._recorder, user=user.id, since=_int(request, "since"), channel=channel)
        return web.json_response({"ok": True, **view})

    async def disconnect(self, request: web.Request) -> web.Response:
        body = await _json(request)
        sent = await self._socket.disconnect_all(reason=str(body.get("reason") or "refresh_requested"))
        return web.json_response({"ok": True, "sent": sent})

    async def http_delivery(self, request: web.Request) -> web.Response:
        """{url: "http://127.0.0.1:3000/slack/events"} delivers as Slack's signed HTTP requests from
        now on; {url: null} goes back to Socket Mode. What a Slack admin does on the app's page."""
        body = await _json(request)
        url = body.get("url")
        if url is not None:
            parts = urlsplit(str(url))
            if parts.scheme not in ("http", "https") or not parts.hostname:
                return _error("invalid_url")
            url = str(url)
        if self._set_http_delivery is None:
            return _error("not_supported")
        self._set_http_delivery(url)
        return web.json_response({"ok": True, "http_delivery": url is not None, "cursor": self._recorder.cursor})

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "ok": True,
                "cursor": self._recorder.cursor,
                "socket_connections": self._socket.connected,
                "http_delivery": self._dispatcher.http_url is not None,
                "ratelimited": self._recorder.count("ratelimited"),
                "failures": self._recorder.count("failure"),
            }
        )

    @staticmethod
    def _channel_query(request: web.Request) -> str | None | web.Response:
        ref = request.query.get("channel")
        if not ref:
            return None
        channel = directory.find_channel(ref)
        return channel.id if channel else _error("channel_not_found")


async def _json(request: web.Request) -> dict:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(
            text='{"ok": false, "error": "invalid_json"}', content_type="application/json"
        ) from None
    return body if isinstance(body, dict) else {}


def _int(request: web.Request, name: str) -> int:
    try:
        return int(request.query.get(name) or 0)
    except ValueError:
        raise web.HTTPBadRequest(
            text=f'{{"ok": false, "error": "bad_{name}"}}', content_type="application/json"
        ) from None
