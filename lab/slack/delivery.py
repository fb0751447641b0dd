"""Sending a person's slash command or button press to the app, and holding it to Slack's deadline.

Slack gives an app 3 seconds to ack; a later ack is ignored and the person sees
`/etcd-status failed with the error "operation_timeout"`. That deadline is the bot's hardest
Slack rule (ack first, work after), so every delivery here has a timer, every ack its latency,
and a miss becomes the message the person would see. Deliveries go over Socket Mode, or, when an
HTTP URL is set, as Slack's signed HTTP requests (form body for commands, `payload=` JSON for
interactions) where the HTTP response is the ack.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from urllib.parse import urlencode

import aiohttp

from lab.slack.directory import APP_ID, SLACKBOT_ID, TEAM_DOMAIN, TEAM_ID, Channel, User
from lab.slack.records import MessageVersion, Recorder
from lab.slack.render import Button
from lab.slack.replies import ReplyContext, ResponseUrls, apply_reply
from lab.slack.signing import signed_headers
from lab.slack.socket_mode import SocketModeServer

# Slack's deprecated verification token; Bolt ignores it, but payloads carry one.
VERIFICATION_TOKEN = "lab0verification0token"


@dataclass
class Delivery:
    """One envelope in flight: runtime state only, its history lives in the records."""

    id: str
    kind: str  # "slash_commands" | "interactive"
    label: str  # "/etcd-status" or "button Approve"
    context: ReplyContext
    sent_at: float = field(default_factory=time.monotonic)
    acked: bool = False
    failed: bool = False
    timer: asyncio.TimerHandle | None = None

    @property
    def settled(self) -> bool:
        return self.acked or self.failed


class Dispatcher:
    def __init__(
        self,
        *,
        recorder: Recorder,
        socket: SocketModeServer,
        responses: ResponseUrls,
        signing_secret: str,
        ack_deadline: float,
    ) -> None:
        self._recorder = recorder
        self._socket = socket
        self._responses = responses
        self._signing_secret = signing_secret
        self.ack_deadline = ack_deadline
        self.http_url: str | None = None
        self._deliveries: dict[str, Delivery] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def busy(self) -> bool:
        """True while some delivery waits for its ack (and its deadline has not passed)."""
        return any(not d.settled for d in self._deliveries.values())

    async def close(self) -> None:
        for delivery in self._deliveries.values():
            if delivery.timer is not None:
                delivery.timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def command(self, *, user: User, channel: Channel, text: str) -> Delivery:
        """`text` is what the person typed: `/etcd-status` or `/etcd-restore ip-10-0-1-2 --yes`."""
        command, _, argument = text.strip().partition(" ")
        context = ReplyContext(user=user.id, channel=channel.id, delivery=str(uuid.uuid4()))
        payload = {
            "token": VERIFICATION_TOKEN,
            "team_id": TEAM_ID,
            "team_domain": TEAM_DOMAIN,
            "channel_id": channel.id,
            "channel_name": "directmessage" if channel.is_im else channel.name,
            "user_id": user.id,
            "user_name": user.name,
            "command": command,
            "text": argument.strip(),
            "api_app_id": APP_ID,
            "is_enterprise_install": "false",
            "response_url": self._responses.issue(kind="commands", context=context),
            "trigger_id": _trigger_id(),
        }
        self._recorder.record(
            "command",
            delivery=context.delivery,
            user=user.id,
            channel=channel.id,
            command=command,
            text=payload["text"],
        )
        delivery = Delivery(id=context.delivery, kind="slash_commands", label=command, context=context)
        await self._send(delivery, payload=payload)
        return delivery

    async def press(
        self, *, user: User, channel: Channel, message: MessageVersion, button: Button
    ) -> Delivery:
        """A person presses a button on a message they can see."""
        context = ReplyContext(
            user=user.id, channel=channel.id, original=message.key, delivery=str(uuid.uuid4())
        )
        action = {**button.as_action(), "action_ts": f"{time.time():.6f}"}
        payload: dict = {
            "type": "block_actions",
            "user": {"id": user.id, "username": user.name, "name": user.name, "team_id": TEAM_ID},
            "api_app_id": APP_ID,
            "token": VERIFICATION_TOKEN,
            "container": {
                "type": "message",
                "message_ts": message.ts,
                "channel_id": channel.id,
                "is_ephemeral": message.ephemeral_for is not None,
            },
            "trigger_id": _trigger_id(),
            "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": channel.id, "name": "directmessage" if channel.is_im else channel.name},
            "state": {"values": {}},
            "response_url": self._responses.issue(kind="actions", context=context),
            "actions": [action],
        }
        if message.ephemeral_for is None:  # Slack leaves the message out for ephemeral ones
            payload["message"] = message.as_slack()
        self._recorder.record(
            "press",
            delivery=context.delivery,
            user=user.id,
            channel=channel.id,
            message_ts=message.ts,
            action_id=button.action_id,
            button=button.text,
            value=button.value,
        )
        delivery = Delivery(
            id=context.delivery, kind="interactive", label=f"button {button.text}", context=context
        )
        await self._send(delivery, payload=payload)
        return delivery

    def on_ack(self, envelope_id: str, payload: dict | None) -> None:
        """An ack arrived (Socket Mode message or HTTP response)."""
        delivery = self._deliveries.get(envelope_id)
        if delivery is None:
            self._recorder.record("ack", delivery=envelope_id, unknown=True, payload=payload)
            return
        latency = round(time.monotonic() - delivery.sent_at, 4)
        base = {"delivery": delivery.id, "user": delivery.context.user, "channel": delivery.context.channel}
        if delivery.acked:
            self._recorder.record("ack", **base, duplicate=True, latency=latency, payload=payload)
            return
        delivery.acked = True
        if delivery.failed:  # Slack ignores a late ack: the person already saw the failure
            self._recorder.record("ack", **base, late=True, latency=latency, payload=payload)
            return
        if delivery.timer is not None:
            delivery.timer.cancel()
        self._recorder.record("ack", **base, late=False, latency=latency, payload=payload)
        if payload and delivery.kind == "slash_commands":
            try:
                apply_reply(recorder=self._recorder, context=delivery.context, payload=payload, via="ack")
            except ValueError as error:
                self._recorder.record("ack_rejected", delivery=delivery.id, error=str(error))

    async def _send(self, delivery: Delivery, *, payload: dict) -> None:
        self._deliveries[delivery.id] = delivery
        delivery.timer = asyncio.get_running_loop().call_later(self.ack_deadline, self._expire, delivery)
        if self.http_url is not None:
            self._spawn(self._post(delivery, payload=payload, url=self.http_url))
            return
        envelope = {
            "envelope_id": delivery.id,
            "type": delivery.kind,
            "accepts_response_payload": delivery.kind == "slash_commands",
            "payload": payload,
        }
        if not await self._socket.send(envelope):
            self._fail(delivery, error="dispatch_failed", reason="no Socket Mode connection")

    async def _post(self, delivery: Delivery, *, payload: dict, url: str) -> None:
        """Slack's HTTP mode: a signed POST whose response is the ack."""
        if delivery.kind == "slash_commands":
            body = urlencode(payload)
        else:
            body = urlencode({"payload": json.dumps(payload)})
        headers = signed_headers(
            signing_secret=self._signing_secret,
            timestamp=int(time.time()),
            body=body,
            content_type="application/x-www-form-urlencoded",
        )
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(url, data=body.encode(), headers=headers) as response:
                text = await response.text()
                status, content_type = response.status, response.content_type
        except (aiohttp.ClientError, OSError) as error:
            self._fail(delivery, error="dispatch_failed", reason=type(error).__name__)
            return
        if status != 200:
            self._fail(delivery, error="http_service_error", reason=f"HTTP {status}")
            return
        self.on_ack(delivery.id, _http_ack(text=text, content_type=content_type))

    def _expire(self, delivery: Delivery) -> None:
        if not delivery.settled:
            self._fail(delivery, error="operation_timeout", reason=f"no ack within {self.ack_deadline} s")

    def _fail(self, delivery: Delivery, *, error: str, reason: str) -> None:
        """What the person sees when the app misses: Slack's own ephemeral error for commands."""
        if delivery.settled:
            return
        delivery.failed = True
        if delivery.timer is not None:
            delivery.timer.cancel()
        context = delivery.context
        self._recorder.record(
            "failure",
            delivery=delivery.id,
            user=context.user,
            channel=context.channel,
            error=error,
            reason=reason,
            label=delivery.label,
        )
        if delivery.kind == "slash_commands":
            self._recorder.put_message(
                MessageVersion(
                    channel=context.channel,
                    ts=self._recorder.next_ts(),
                    user=SLACKBOT_ID,
                    text=f'{delivery.label} failed with the error "{error}"',
                    ephemeral_for=context.user,
                    via="slack",
                )
            )

    def _spawn(self, coro: Coroutine[None, None, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _http_ack(*, text: str, content_type: str) -> dict | None:
    """An HTTP response body as an ack payload: empty, JSON, or plain text (Bolt's `ack("text")`)."""
    if not text.strip():
        return None
    if content_type == "application/json":
        try:
            body = json.loads(text)
        except ValueError:
            return {"text": text}
        return body if isinstance(body, dict) else {"text": text}
    return {"text": text}


def _trigger_id() -> str:
    return f"{int(time.time())}.{secrets.randbelow(10**11)}.{secrets.token_hex(16)}"
