"""Slack's Web API methods the bot uses, served at `/api/<method>` for the real `AsyncWebClient`.

Answers keep Slack's shapes and error names (`{"ok": false, "error": "channel_not_found"}`,
`not_authed`, `invalid_auth`, `not_allowed_token_type`, `unknown_method`, HTTP 429 `ratelimited`
with `Retry-After`), because the bot's error handling is what the lab is there to exercise.
Arguments come as slack_sdk sends them: query string, form body or JSON body; the token as a
bearer header or a `token` argument. Only what the bot needs is implemented.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from lab.slack import directory
from lab.slack.directory import BOT_ID, BOT_NAME, BOT_USER_ID, TEAM_DOMAIN, TEAM_ID, TEAM_NAME
from lab.slack.ratelimit import ChannelRateLimiter
from lab.slack.records import MessageVersion, Recorder
from lab.slack.replies import parse_blocks, truthy

Params = dict[str, Any]
Method = Callable[[Params], Awaitable[dict]]


class ApiError(Exception):
    """A Slack error answer: `{"ok": false, "error": ...}`."""

    def __init__(self, error: str, *, status: int = 200, headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.status = status
        self.headers = headers or {}


class WebApi:
    def __init__(
        self,
        *,
        recorder: Recorder,
        bot_token: str,
        app_token: str,
        rate_limiter: ChannelRateLimiter,
        open_connection: Callable[[], str],
    ) -> None:
        self._recorder = recorder
        self._bot_token = bot_token
        self._app_token = app_token
        self._rate_limiter = rate_limiter
        self._open_connection = open_connection
        self._methods: dict[str, Method] = {
            "api.test": self._api_test,
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.delete": self._chat_delete,
            "users.info": self._users_info,
            "users.list": self._users_list,
            "usergroups.list": self._usergroups_list,
            "usergroups.users.list": self._usergroups_users_list,
            "conversations.info": self._conversations_info,
            "conversations.list": self._conversations_list,
            "conversations.history": self._conversations_history,
            "conversations.replies": self._conversations_replies,
            "reactions.add": self._reactions_add,
            "apps.connections.open": self._apps_connections_open,
        }

    async def handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await _read_params(request)
        token = _bearer(request) or params.pop("token", None)
        params.pop("token", None)
        try:
            if method not in self._methods:
                raise ApiError("unknown_method")
            self._authenticate(method=method, token=token)
            body = {"ok": True, **await self._methods[method](params)}
        except ApiError as error:
            self._recorder.record(
                "api_call", method=method, ok=False, error=error.error, status=error.status, params=params
            )
            if error.status == 429:
                channel = directory.find_channel(str(params.get("channel") or ""))
                self._recorder.record(
                    "ratelimited",
                    method=method,
                    channel=channel.id if channel else params.get("channel"),
                    retry_after=error.headers["Retry-After"],
                )
            return web.json_response(
                {"ok": False, "error": error.error}, status=error.status, headers=error.headers
            )
        self._recorder.record("api_call", method=method, ok=True, status=200, params=params)
        return web.json_response(body)

    def _authenticate(self, *, method: str, token: str | None) -> None:
        """Bot token for everything but apps.connections.open, which takes only the app token."""
        if not token:
            raise ApiError("not_authed")
        wanted, other = (self._app_token, self._bot_token)
        if method != "apps.connections.open":
            wanted, other = other, wanted
        if token == other:
            raise ApiError("not_allowed_token_type")
        if token != wanted:
            raise ApiError("invalid_auth")

    # -- auth, apps

    async def _api_test(self, params: Params) -> dict:
        return {"args": params}

    async def _auth_test(self, params: Params) -> dict:
        return {
            "url": f"https://{TEAM_DOMAIN}.slack.com/",
            "team": TEAM_NAME,
            "user": BOT_NAME,
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    async def _apps_connections_open(self, params: Params) -> dict:
        return {"url": self._open_connection()}

    # -- chat

    async def _chat_post_message(self, params: Params) -> dict:
        channel = _channel(params)
        self._limit(channel=channel.id)
        text, blocks = _content(params)
        message = self._recorder.put_message(
            MessageVersion(
                channel=channel.id,
                ts=self._recorder.next_ts(),
                user=BOT_USER_ID,
                text=text or "",
                blocks=blocks or [],
                thread_ts=params.get("thread_ts") or None,
                via="chat.postMessage",
            )
        )
        return {"channel": channel.id, "ts": message.ts, "message": message.as_slack()}

    async def _chat_update(self, params: Params) -> dict:
        channel = _channel(params)
        original = self._own_message(channel=channel.id, ts=params.get("ts"), refusal="cant_update_message")
        self._limit(channel=channel.id)
        text, blocks = _content(params)
        changes: dict[str, Any] = {}
        if text is not None:
            changes["text"] = text
        if blocks is not None:
            changes["blocks"] = blocks
        message = self._recorder.put_message(original.changed(via="chat.update", **changes))
        return {"channel": channel.id, "ts": message.ts, "text": message.text, "message": message.as_slack()}

    async def _chat_post_ephemeral(self, params: Params) -> dict:
        channel = _channel(params)
        user = directory.find_user(str(params.get("user") or ""))
        if user is None or user.is_bot:
            raise ApiError("user_not_found")
        text, blocks = _content(params)
        message = self._recorder.put_message(
            MessageVersion(
                channel=channel.id,
                ts=self._recorder.next_ts(),
                user=BOT_USER_ID,
                text=text or "",
                blocks=blocks or [],
                thread_ts=params.get("thread_ts") or None,
                ephemeral_for=user.id,
                via="chat.postEphemeral",
            )
        )
        return {"message_ts": message.ts}

    async def _chat_delete(self, params: Params) -> dict:
        channel = _channel(params)
        original = self._own_message(channel=channel.id, ts=params.get("ts"), refusal="cant_delete_message")
        self._recorder.put_message(original.changed(via="chat.delete", deleted=True))
        return {"channel": channel.id, "ts": original.ts}

    async def _reactions_add(self, params: Params) -> dict:
        channel = _channel(params)
        name = str(params.get("name") or "").strip(":")
        if not name:
            raise ApiError("invalid_name")
        message = self._visible_message(channel=channel.id, ts=params.get("timestamp"))
        users = message.reactions.get(name, [])
        if BOT_USER_ID in users:
            raise ApiError("already_reacted")
        reactions = {**message.reactions, name: [*users, BOT_USER_ID]}
        self._recorder.put_message(message.changed(via="reactions.add", reactions=reactions))
        return {}

    # -- people and channels

    async def _users_info(self, params: Params) -> dict:
        user = directory.find_user(str(params.get("user") or ""))
        if user is None:
            raise ApiError("user_not_found")
        return {"user": user.as_slack()}

    async def _users_list(self, params: Params) -> dict:
        return {
            "members": [user.as_slack() for user in directory.USERS],
            "response_metadata": {"next_cursor": ""},
        }

    async def _usergroups_list(self, params: Params) -> dict:
        include_users = truthy(params.get("include_users"))
        return {"usergroups": [group.as_slack(include_users=include_users) for group in directory.USERGROUPS]}

    async def _usergroups_users_list(self, params: Params) -> dict:
        group = directory.find_usergroup(str(params.get("usergroup") or ""))
        if group is None:
            raise ApiError("no_such_subteam")
        return {"users": list(group.users)}

    async def _conversations_info(self, params: Params) -> dict:
        return {"channel": _channel(params).as_slack()}

    async def _conversations_list(self, params: Params) -> dict:
        return {
            "channels": [channel.as_slack() for channel in directory.CHANNELS],
            "response_metadata": {"next_cursor": ""},
        }

    async def _conversations_history(self, params: Params) -> dict:
        channel = _channel(params)
        limit = int(params.get("limit") or 100)
        messages = [m for m in self._channel_messages(channel.id) if not m.thread_ts or m.thread_ts == m.ts]
        newest_first = sorted(messages, key=lambda m: float(m.ts), reverse=True)[:limit]
        return {"messages": [m.as_slack() for m in newest_first], "has_more": len(messages) > limit}

    async def _conversations_replies(self, params: Params) -> dict:
        channel = _channel(params)
        parent_ts = str(params.get("ts") or "")
        parent = self._recorder.messages.get((channel.id, parent_ts))
        if parent is None or parent.deleted or parent.ephemeral_for:
            raise ApiError("thread_not_found")
        replies = [
            m for m in self._channel_messages(channel.id) if m.thread_ts == parent_ts and m.ts != parent_ts
        ]
        thread = [parent, *sorted(replies, key=lambda m: float(m.ts))]
        return {"messages": [m.as_slack() for m in thread], "has_more": False}

    # -- helpers

    def _limit(self, *, channel: str) -> None:
        retry_after = self._rate_limiter.check(channel=channel)
        if retry_after is not None:
            raise ApiError("ratelimited", status=429, headers={"Retry-After": str(retry_after)})

    def _channel_messages(self, channel: str) -> list[MessageVersion]:
        return [
            m
            for m in self._recorder.messages.values()
            if m.channel == channel and not m.deleted and not m.ephemeral_for
        ]

    def _visible_message(self, *, channel: str, ts: Any) -> MessageVersion:
        message = self._recorder.messages.get((channel, str(ts or "")))
        if message is None or message.deleted or message.ephemeral_for:
            raise ApiError("message_not_found")
        return message

    def _own_message(self, *, channel: str, ts: Any, refusal: str) -> MessageVersion:
        message = self._visible_message(channel=channel, ts=ts)
        if not message.from_bot:
            raise ApiError(refusal)
        return message


async def _read_params(request: web.Request) -> Params:
    """Query string, then the body (form or JSON), as slack_sdk may send either."""
    params: Params = dict(request.query)
    if request.method != "POST" or not request.can_read_body:
        return params
    if request.content_type == "application/json":
        try:
            body = json.loads(await request.text() or "{}")
        except ValueError:
            raise web.HTTPBadRequest(text="invalid_json") from None
        if isinstance(body, dict):
            params.update(body)
    else:
        params.update(dict(await request.post()))
    return params


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    return header[len("Bearer ") :].strip() or None if header.startswith("Bearer ") else None


def _channel(params: Params) -> directory.Channel:
    channel = directory.find_channel(str(params.get("channel") or ""))
    if channel is None:
        raise ApiError("channel_not_found")
    return channel


def _content(params: Params) -> tuple[str | None, list[dict] | None]:
    """The message's text and blocks, each None when not given; neither given is `no_text`."""
    try:
        blocks = parse_blocks(params.get("blocks"))
    except ValueError:
        raise ApiError("invalid_blocks") from None
    text = params.get("text")
    if text is None and not blocks:
        raise ApiError("no_text")
    return (None if text is None else str(text)), blocks
