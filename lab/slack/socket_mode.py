"""Socket Mode: the WebSocket the bot's `AsyncSocketModeClient` holds open to receive work.

As in Slack: apps.connections.open (app token) hands out a one-time `ws://.../socket?ticket=...`
URL; on connect the server says `hello`; work arrives as envelopes (`slash_commands`,
`interactive`) with an `envelope_id`; the app acks with `{"envelope_id": ..., "payload": ...}`.
`disconnect` asks the app to reconnect (slack_sdk then opens a new URL). Pings are answered by
aiohttp itself, as slack_sdk checks its connection with ping/pong. This module only moves
envelopes; what an ack means is `delivery`'s business.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable

from aiohttp import WSMsgType, web

from lab.slack.directory import APP_ID
from lab.slack.records import Recorder

log = logging.getLogger(__name__)

AckHandler = Callable[[str, dict | None], None]


class SocketModeServer:
    def __init__(self, *, recorder: Recorder, ws_base: str, on_ack: AckHandler) -> None:
        self._recorder = recorder
        self.ws_base = ws_base
        self._on_ack = on_ack
        self._tickets: set[str] = set()
        self._connections: list[web.WebSocketResponse] = []
        self._ids: dict[int, int] = {}
        self._next_id = 0

    @property
    def connected(self) -> int:
        return sum(1 for ws in self._connections if not ws.closed)

    def open_url(self) -> str:
        """apps.connections.open: a fresh one-time URL."""
        ticket = secrets.token_urlsafe(16)
        self._tickets.add(ticket)
        return f"{self.ws_base}/socket?ticket={ticket}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self._tickets:
            return web.Response(status=401, text="invalid_ticket")
        self._tickets.discard(ticket)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._next_id += 1
        conn_id = self._next_id
        self._ids[id(ws)] = conn_id
        self._connections.append(ws)
        self._recorder.record("connection", event="open", connection=conn_id)
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": self.connected,
                "debug_info": {
                    "host": "applink-lab",
                    "build_number": 1,
                    "approximate_connection_time": 18060,
                },
                "connection_info": {"app_id": APP_ID},
            }
        )
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    self._receive(message.data, conn_id=conn_id)
                elif message.type == WSMsgType.ERROR:
                    break
        finally:
            self._connections.remove(ws)
            self._ids.pop(id(ws), None)
            self._recorder.record("connection", event="closed", connection=conn_id)
        return ws

    async def send(self, envelope: dict) -> bool:
        """Send to the newest open connection; False when the app is not connected."""
        for ws in reversed(self._connections):
            if ws.closed:
                continue
            try:
                await ws.send_str(json.dumps(envelope))
            except ConnectionError:
                continue
            return True
        return False

    async def disconnect_all(self, *, reason: str = "refresh_requested") -> int:
        """Ask every connected app to reconnect, as Slack does a few times an hour."""
        sent = 0
        for ws in list(self._connections):
            if not ws.closed:
                await ws.send_json(
                    {"type": "disconnect", "reason": reason, "debug_info": {"host": "applink-lab"}}
                )
                sent += 1
        self._recorder.record("connection", event="disconnect_requested", reason=reason, count=sent)
        return sent

    async def close(self) -> None:
        for ws in list(self._connections):
            await ws.close(code=1001, message=b"workspace stopping")

    def _receive(self, data: str, *, conn_id: int) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            self._recorder.record("socket_garbage", connection=conn_id, data=data[:200])
            return
        envelope_id = message.get("envelope_id") if isinstance(message, dict) else None
        if not envelope_id:
            self._recorder.record("socket_garbage", connection=conn_id, data=data[:200])
            return
        payload = message.get("payload")
        self._on_ack(str(envelope_id), payload if isinstance(payload, dict) else None)
