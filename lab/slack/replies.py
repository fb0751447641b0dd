"""What Slack does with an app's reply to a person: acks with a payload and `response_url` posts.

Both are "respond to the person who ran the command or pressed the button", with the same rules:
ephemeral (only that person sees it) unless `response_type` is `in_channel`; after a button press
`replace_original` rewrites the message that held the button and `delete_original` removes it.
An ephemeral message can only be changed this way: chat.update cannot find it, as in Slack.

`response_url`s are issued per delivery (`/hooks/commands/...`, `/hooks/actions/...`) and map
back to who, where and which original message. Unlike Slack, they do not expire after 30 minutes
or five uses: the lab's runs are short.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from lab.slack.directory import BOT_USER_ID, TEAM_ID
from lab.slack.records import MessageVersion, Recorder


@dataclass(frozen=True)
class ReplyContext:
    """Who a reply goes to: the person, the channel, and the message a button was on (if any)."""

    user: str
    channel: str
    original: tuple[str, str] | None = None
    delivery: str = ""


def parse_blocks(value: Any) -> list[dict] | None:
    """Blocks as given to the Web API: a list (JSON bodies) or a JSON string (form bodies); None if absent."""
    if value is None:
        return None
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else []
    if not isinstance(value, list) or not all(isinstance(block, dict) for block in value):
        raise ValueError("blocks must be a list of objects")
    return value


def truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("1", "true", "yes"))


def apply_reply(
    *, recorder: Recorder, context: ReplyContext, payload: dict, via: str
) -> MessageVersion | None:
    """Make the message changes a reply asks for; None when it asks for none (an empty ack)."""
    blocks = parse_blocks(payload.get("blocks"))
    text = payload.get("text")
    original = recorder.messages.get(context.original) if context.original else None
    if truthy(payload.get("delete_original")) and original is not None:
        return recorder.put_message(original.changed(via=via, deleted=True))
    if text is None and blocks is None:
        return None
    if truthy(payload.get("replace_original")) and original is not None and not original.deleted:
        changes: dict[str, Any] = {"text": text if text is not None else original.text}
        changes["blocks"] = blocks if blocks is not None else []
        return recorder.put_message(original.changed(via=via, **changes))
    in_channel = payload.get("response_type") == "in_channel"
    return recorder.put_message(
        MessageVersion(
            channel=context.channel,
            ts=recorder.next_ts(),
            user=BOT_USER_ID,
            text=text or "",
            blocks=blocks or [],
            thread_ts=payload.get("thread_ts") if in_channel else None,
            ephemeral_for=None if in_channel else context.user,
            via=via,
        )
    )


class ResponseUrls:
    """Issues `response_url`s and serves them (POST JSON, answer `{"ok": true}`)."""

    def __init__(self, *, recorder: Recorder, base: str) -> None:
        self._recorder = recorder
        self.base = base.rstrip("/")
        self._contexts: dict[str, ReplyContext] = {}

    def issue(self, *, kind: str, context: ReplyContext) -> str:
        """A new URL for one delivery; `kind` is `commands` or `actions`, as in Slack's URLs."""
        key = f"{len(self._contexts) + 1:012d}/{secrets.token_urlsafe(18)}"
        self._contexts[key] = context
        return f"{self.base}/hooks/{kind}/{TEAM_ID}/{key}"

    async def handle(self, request: web.Request) -> web.Response:
        key = f"{request.match_info['num']}/{request.match_info['secret']}"
        context = self._contexts.get(key)
        if context is None:
            return web.Response(status=404, text="invalid_token")
        try:
            payload = json.loads(await request.text() or "{}")
            if not isinstance(payload, dict):
                raise ValueError("payload must be an object")
            message = apply_reply(
                recorder=self._recorder, context=context, payload=payload, via="response_url"
            )
        except ValueError as error:
            self._recorder.record("response_url", delivery=context.delivery, ok=False, error=str(error))
            return web.json_response({"ok": False, "error": "invalid_blocks"}, status=400)
        self._recorder.record(
            "response_url",
            delivery=context.delivery,
            ok=True,
            user=context.user,
            channel=context.channel,
            message_ts=message.ts if message else None,
        )
        return web.json_response({"ok": True})
