"""The lab workspace against the REAL slack_bolt / slack_sdk: Socket Mode, HTTP mode, acks, updates.

A tiny Bolt app (`/etcd-echo`, `/etcd-slow`, buttons Approve / Reject) runs in-process against a
workspace on a free port; the tests act as people through `/_lab/` and read what they see.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from lab.slack import SlackWorkspace
from lab.slack.echo_app import build_echo_app

BOT_TOKEN = "xoxb-lab-test-bot-token"
APP_TOKEN = "xapp-lab-test-app-token"
SIGNING_SECRET = "lab-test-signing-secret-0123456789"


async def until(predicate: Callable[[], bool], *, timeout: float = 10.0, what: str = "condition") -> None:
    """Wait for a condition with a deadline (the workspace and the app run on this same loop)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def workspace(tmp_path) -> AsyncIterator[SlackWorkspace]:  # type: ignore[no-untyped-def]
    ws = SlackWorkspace(
        port=0,
        bot_token=BOT_TOKEN,
        app_token=APP_TOKEN,
        signing_secret=SIGNING_SECRET,
        record_file=tmp_path / "slack.jsonl",
        ack_deadline=1.0,
    )
    await ws.start()
    yield ws
    await ws.stop()


@pytest.fixture
async def lab(workspace: SlackWorkspace) -> AsyncIterator[Callable[..., Awaitable[dict]]]:
    """Call a `/_lab/` endpoint: `await lab("POST", "command", json={...})`."""
    async with aiohttp.ClientSession() as session:

        async def call(method: str, path: str, **kwargs: object) -> dict:
            async with session.request(method, workspace.lab_url + path, **kwargs) as response:  # type: ignore[arg-type]
                return await response.json()

        yield call


@pytest.fixture
async def socket_app(workspace: SlackWorkspace) -> AsyncIterator[asyncio.Event]:
    """The Bolt app connected over Socket Mode; yields the event that releases `/etcd-slow`."""
    release_slow = asyncio.Event()
    client = AsyncWebClient(token=BOT_TOKEN, base_url=workspace.base_url)
    handler = AsyncSocketModeHandler(build_echo_app(client=client, release_slow=release_slow), APP_TOKEN)
    await handler.connect_async()
    await until(lambda: workspace.socket_connections == 1, what="Socket Mode connection")
    yield release_slow
    release_slow.set()
    await handler.close_async()
    if client.session is not None:
        await client.session.close()


async def test_command_ack_message_and_button_update(workspace, lab, socket_app) -> None:  # type: ignore[no-untyped-def]
    sent = await lab(
        "POST", "command", json={"user": "alice", "channel": "#incident", "text": "/etcd-echo hello"}
    )
    assert sent["ok"], sent
    quiet = await lab("GET", "quiet", params={"quiet": "0.3", "timeout": "10"})
    assert quiet["quiet"]

    alice = await lab("GET", "view", params={"user": "alice", "since": str(sent["cursor"])})
    [ack] = alice["acks"]
    assert ack["late"] is False and ack["latency"] < workspace.ack_deadline
    texts = [(m["text"], m["ephemeral"]) for m in alice["messages"]]
    assert ("Echoing `hello` for <@U0ALICE01>", True) in texts
    assert ("echo: hello", False) in texts
    bob = await lab("GET", "view", params={"user": "bob"})
    assert [m["text"] for m in bob["messages"]] == ["echo: hello"], "bob must not see alice's ephemeral ack"

    pressed = await lab("POST", "press", json={"user": "bob", "button_text": "approve"})
    assert pressed["ok"], pressed
    await until(lambda: any(m.version == 2 for m in workspace.recorder.messages.values()), what="chat.update")
    carol = await lab("GET", "view", params={"user": "carol"})
    [message] = carol["messages"]
    assert message["text"] == "approved by bob" and message["version"] == 2
    versions = [e for e in workspace.recorder.events if e["kind"] == "message" and e["ts"] == message["ts"]]
    assert [v["text"] for v in versions] == ["echo: hello", "approved by bob"]

    lines = (workspace.recorder._record_file or None).read_text().splitlines()  # type: ignore[union-attr]
    assert len(lines) == len(workspace.recorder.events)
    assert (
        BOT_TOKEN not in "".join(lines)
        and APP_TOKEN not in "".join(lines)
        and SIGNING_SECRET not in "".join(lines)
    )


async def test_respond_replace_original(workspace, lab, socket_app) -> None:  # type: ignore[no-untyped-def]
    await lab("POST", "command", json={"user": "alice", "channel": "ops", "text": "/etcd-echo x"})
    await until(lambda: bool(_buttons_visible(workspace)), what="message with buttons")
    pressed = await lab("POST", "press", json={"user": "carol", "action_id": "reject"})
    assert pressed["ok"], pressed
    await until(lambda: workspace.recorder.count("response_url") == 1, what="respond()")
    message = workspace.recorder.messages[("C0OPS1", pressed["message_ts"])]
    assert message.text == "Rejected" and message.blocks == [] and message.version == 2
    press = next(e for e in workspace.recorder.events if e["kind"] == "press")
    assert press["user"] == "U0CAROL01" and press["value"] == "no"


def _buttons_visible(workspace: SlackWorkspace) -> list:
    return [m for m in workspace.recorder.messages.values() if m.blocks and not m.ephemeral_for]


async def test_late_ack_is_the_failure_the_user_sees(workspace, lab, socket_app) -> None:  # type: ignore[no-untyped-def]
    release_slow = socket_app
    sent = await lab("POST", "command", json={"user": "dave", "channel": "incident", "text": "/etcd-slow"})
    await until(lambda: workspace.recorder.count("failure") == 1, what="operation_timeout")
    release_slow.set()
    await until(lambda: workspace.recorder.count("ack") == 1, what="the late ack")
    dave = await lab("GET", "view", params={"user": "dave", "since": str(sent["cursor"])})
    [failure] = dave["failures"]
    assert failure["error"] == "operation_timeout"
    [ack] = dave["acks"]
    assert ack["late"] is True and ack["latency"] >= workspace.ack_deadline
    assert [m["text"] for m in dave["messages"]] == ['/etcd-slow failed with the error "operation_timeout"']


async def test_web_api_errors_and_rate_limit(workspace) -> None:  # type: ignore[no-untyped-def]
    from slack_sdk.errors import SlackApiError

    client = AsyncWebClient(token=BOT_TOKEN, base_url=workspace.base_url)
    wrong = AsyncWebClient(token="xoxb-wrong", base_url=workspace.base_url)
    anonymous = AsyncWebClient(base_url=workspace.base_url)
    try:
        assert (await client.auth_test())["user_id"] == "U0ETCDBOT"
        for api, error in (
            (wrong.auth_test(), "invalid_auth"),
            (anonymous.auth_test(), "not_authed"),
            (client.chat_postMessage(channel="#nowhere", text="x"), "channel_not_found"),
            (client.api_call("chat.frobnicate"), "unknown_method"),
            (client.apps_connections_open(app_token=BOT_TOKEN), "not_allowed_token_type"),
            (client.chat_update(channel="C0OPS1", ts="1.000001", text="x"), "message_not_found"),
        ):
            with pytest.raises(SlackApiError) as caught:
                await api
            assert caught.value.response["error"] == error

        members = (await client.usergroups_users_list(usergroup="S0APPROVERS"))["users"]
        assert members == ["U0BOB0001", "U0CAROL01"]
        assert (await client.users_info(user="U0ALICE01"))["user"]["name"] == "alice"

        workspace.rate_limiter.limit = (2, 60.0)
        first = await client.chat_postMessage(channel="C0INCIDENT", text="one")
        await client.chat_update(channel="C0INCIDENT", ts=first["ts"], text="one, edited")
        with pytest.raises(SlackApiError) as caught:
            await client.chat_postMessage(channel="C0INCIDENT", text="three")
        assert caught.value.response.status_code == 429
        assert caught.value.response["error"] == "ratelimited"
        assert int(caught.value.response.headers["Retry-After"]) >= 1
        assert workspace.ratelimited_count == 1
        await client.chat_postMessage(channel="C0OPS1", text="another channel has its own budget")

        thread = await client.chat_postMessage(channel="C0OPS1", text="reply", thread_ts=first["ts"])
        assert thread["message"]["thread_ts"] == first["ts"]
        eph = await client.chat_postEphemeral(channel="C0OPS1", user="U0BOB0001", text="psst")
        with pytest.raises(SlackApiError):
            await client.chat_update(channel="C0OPS1", ts=eph["message_ts"], text="cannot")
    finally:
        for c in (client, wrong, anonymous):
            if c.session is not None:
                await c.session.close()


async def test_rate_limit_retry_handler_waits_retry_after(workspace) -> None:  # type: ignore[no-untyped-def]
    """What the bot does with a 429: slack_sdk's own retry handler honours Retry-After and succeeds."""
    from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler

    workspace.rate_limiter.limit = (1, 1.0)
    client = AsyncWebClient(
        token=BOT_TOKEN,
        base_url=workspace.base_url,
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=2)],
    )
    first = await client.chat_postMessage(channel="C0INCIDENT", text="progress 1/3")
    second = await client.chat_update(channel="C0INCIDENT", ts=first["ts"], text="progress 2/3")
    assert second["ok"] and workspace.ratelimited_count == 1
    [limited] = [e for e in workspace.recorder.events if e["kind"] == "ratelimited"]
    assert limited["method"] == "chat.update" and limited["channel"] == "C0INCIDENT"
    assert workspace.recorder.messages[("C0INCIDENT", first["ts"])].text == "progress 2/3"


async def test_disconnect_makes_slack_sdk_reconnect(workspace, lab, socket_app) -> None:  # type: ignore[no-untyped-def]
    def opened() -> int:
        return sum(1 for e in workspace.recorder.events if e["kind"] == "connection" and e["event"] == "open")

    assert (await lab("POST", "disconnect", json={"reason": "warning"}))["sent"] == 1
    await until(lambda: opened() == 2 and workspace.socket_connections == 1, what="reconnection")
    await lab("POST", "command", json={"user": "alice", "channel": "incident", "text": "/etcd-echo again"})
    await until(lambda: workspace.recorder.count("ack") == 1, what="ack over the new connection")


async def test_no_app_connected_is_dispatch_failed(workspace, lab) -> None:  # type: ignore[no-untyped-def]
    await lab("POST", "command", json={"user": "alice", "channel": "incident", "text": "/etcd-status"})
    [failure] = [e for e in workspace.recorder.events if e["kind"] == "failure"]
    assert failure["error"] == "dispatch_failed"


async def test_http_mode_signed_and_verified_by_bolt(workspace, lab) -> None:  # type: ignore[no-untyped-def]
    seen: list[bool] = []
    verifier = SignatureVerifier(signing_secret=SIGNING_SECRET)
    release = asyncio.Event()
    release.set()
    client = AsyncWebClient(token=BOT_TOKEN, base_url=workspace.base_url)
    bolt = build_echo_app(client=client, release_slow=release, signing_secret=SIGNING_SECRET)

    @web.middleware
    async def check(request: web.Request, handler):  # type: ignore[no-untyped-def]
        body = await request.text()
        seen.append(verifier.is_valid_request(body, dict(request.headers)))
        return await handler(request)

    web_app = bolt.web_app(path="/slack/events")
    web_app.middlewares.append(check)
    runner = web.AppRunner(web_app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        switched = await lab("POST", "http-delivery", json={"url": f"http://127.0.0.1:{port}/slack/events"})
        assert switched["ok"] and switched["http_delivery"]
        assert (await lab("GET", "status"))["http_delivery"]
        sent = await lab(
            "POST", "command", json={"user": "alice", "channel": "incident", "text": "/etcd-echo via http"}
        )
        await until(lambda: _buttons_visible(workspace), what="HTTP-mode message")
        await lab("POST", "press", json={"user": "bob", "button_text": "Approve"})
        quiet = await lab("GET", "quiet", params={"quiet": "0.3", "timeout": "10"})
        assert quiet["quiet"]
        alice = await lab("GET", "view", params={"user": "alice", "since": str(sent["cursor"])})
        # over HTTP the listener may post before the ack's response reaches Slack: compare as a set
        assert {m["text"] for m in alice["messages"]} == {
            "Echoing `via http` for <@U0ALICE01>",
            "approved by bob",
        }
        assert seen == [True, True]
        assert not alice["failures"]

        bad = SlackWorkspace(
            port=0, bot_token=BOT_TOKEN, app_token=APP_TOKEN, signing_secret="not-the-secret"
        )
        await bad.start()
        try:
            bad.set_http_delivery(f"http://127.0.0.1:{port}/slack/events")
            from lab.slack import directory

            await bad.dispatcher.command(
                user=directory.find_user("alice"),
                channel=directory.find_channel("incident"),
                text="/etcd-echo x",
            )
            await until(lambda: bad.recorder.count("failure") == 1, what="rejected signature")
            [failure] = [e for e in bad.recorder.events if e["kind"] == "failure"]
            assert failure["error"] == "http_service_error" and failure["reason"] == "HTTP 401"
        finally:
            await bad.stop()
    finally:
        await runner.cleanup()
        if client.session is not None:
            await client.session.close()


async def test_http_delivery_endpoint_switches_back_and_refuses_bad_urls(workspace, lab) -> None:  # type: ignore[no-untyped-def]
    for bad in ("ftp://127.0.0.1/x", "not a url", "http:///slack/events"):
        assert (await lab("POST", "http-delivery", json={"url": bad}))["error"] == "invalid_url"
    assert not (await lab("GET", "status"))["http_delivery"]
    assert (await lab("POST", "http-delivery", json={"url": "http://127.0.0.1:9/slack/events"}))["http_delivery"]
    back = await lab("POST", "http-delivery", json={"url": None})
    assert back["ok"] and not back["http_delivery"] and not (await lab("GET", "status"))["http_delivery"]
    modes = [e["mode"] for e in workspace.recorder.events if e["kind"] == "delivery_mode"]
    assert modes == ["http", "socket_mode"]
