"""What an ack waits for: nothing once the bot has started. The bot's identity (`auth.test`) and a
user group's members are asked once at start, the members renewed in the background, and work
after an ack yields to the acks still pending. A real HTTP server stands in for Slack's Web API
(as bolt-python's own tests do) and counts the calls; when it hangs, checks must not."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from slack_sdk.web.async_client import AsyncWebClient

from bot.acks import AckGate
from bot.app import Identity
from bot.auth import Authorizer


@dataclass
class FakeSlack:
    calls: dict[str, int] = field(default_factory=dict)
    delay: float = 0.0
    members: list[str] = field(default_factory=lambda: ["U0ALICE"])

    async def handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        self.calls[method] = self.calls.get(method, 0) + 1
        await asyncio.sleep(self.delay)
        if method == "auth.test":
            return web.json_response({"ok": True, "team_id": "T0LAB", "user_id": "U0BOT", "bot_id": "B0BOT"})
        if method == "usergroups.users.list":
            return web.json_response({"ok": True, "users": self.members})
        return web.json_response({"ok": False, "error": "unknown_method"})


@pytest.fixture
async def slack() -> AsyncIterator[tuple[FakeSlack, AsyncWebClient]]:
    fake = FakeSlack()
    app = web.Application()
    app.router.add_route("*", "/api/{method}", fake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    client = AsyncWebClient(token="xoxb-test", base_url=f"http://127.0.0.1:{port}/api/")
    try:
        yield fake, client
    finally:
        await runner.cleanup()


async def test_identity_is_asked_once_for_a_burst(slack: tuple[FakeSlack, AsyncWebClient]) -> None:
    fake, client = slack
    identity = Identity(client)
    await identity.resolve()
    authorize = identity.authorize_function()
    results = await asyncio.gather(*(authorize(enterprise_id=None, team_id="T0LAB", user_id=f"U{n}")
                                     for n in range(200)))
    assert fake.calls == {"auth.test": 1}
    assert {r.bot_user_id for r in results} == {"U0BOT"} and results[7].user_id == "U7"


async def test_identity_not_resolved_at_start_is_asked_once_by_the_first_burst(
        slack: tuple[FakeSlack, AsyncWebClient]) -> None:
    fake, client = slack
    authorize = Identity(client).authorize_function()
    await asyncio.gather(*(authorize(enterprise_id=None, team_id="T0LAB", user_id="U1") for _ in range(50)))
    assert fake.calls == {"auth.test": 1}


async def test_group_members_read_at_start_then_renewed_behind_the_checks(
        slack: tuple[FakeSlack, AsyncWebClient]) -> None:
    fake, client = slack
    authorizer = Authorizer(allowed_users=(), allowed_usergroup="S0OPS", cache_seconds=0.3)
    await authorizer.refresh(client)
    assert fake.calls == {"usergroups.users.list": 1}
    decisions = await asyncio.gather(*(authorizer.check(client=client, user_id="U0ALICE") for _ in range(200)))
    assert all(d.allowed for d in decisions) and fake.calls == {"usergroups.users.list": 1}

    # stale, and Slack now slow: the checks answer from what they have, one renewal runs behind them
    await asyncio.sleep(0.35)
    fake.delay, fake.members = 1.0, ["U0BOB"]
    started = time.monotonic()
    decisions = await asyncio.gather(*(authorizer.check(client=client, user_id="U0ALICE") for _ in range(50)))
    assert time.monotonic() - started < 0.5 and all(d.allowed for d in decisions)
    deadline = time.monotonic() + 5
    while not (await authorizer.check(client=client, user_id="U0BOB")).allowed:
        assert time.monotonic() < deadline, "the renewal never landed"
        await asyncio.sleep(0.05)
    assert fake.calls == {"usergroups.users.list": 2}
    assert not (await authorizer.check(client=client, user_id="U0ALICE")).allowed


async def test_work_after_an_ack_waits_for_the_pending_acks_within_a_limit() -> None:
    gate = AckGate()
    started = time.monotonic()
    await gate.settled()
    assert time.monotonic() - started < 0.05  # nothing pending: no wait

    order: list[str] = []

    async def request(name: str, hold: float) -> None:
        with gate.request():
            await asyncio.sleep(hold)
            order.append(f"ack {name}")

    async def work() -> None:
        await gate.settled()
        order.append("work")

    await asyncio.gather(request("a", 0.1), request("b", 0.2), work())
    assert order == ["ack a", "ack b", "work"]

    async def endless() -> None:
        with gate.request():
            await asyncio.sleep(5)

    stuck = asyncio.create_task(endless())
    await asyncio.sleep(0)
    started = time.monotonic()
    await gate.settled(limit=0.2)
    assert 0.15 < time.monotonic() - started < 1.0  # bounded: a steady stream cannot starve the work
    stuck.cancel()
    await asyncio.gather(stuck, return_exceptions=True)
    assert gate.pending == 0


async def test_work_does_not_start_in_the_gap_between_two_arrivals_of_a_burst() -> None:
    gate = AckGate(quiet=0.15)
    order: list[str] = []

    async def request(name: str, after: float) -> None:
        await asyncio.sleep(after)
        with gate.request():
            await asyncio.sleep(0.01)
            order.append(f"ack {name}")

    async def work() -> None:
        await asyncio.sleep(0.05)  # after two acks of a burst, while nothing is pending
        await gate.settled()
        order.append("work")

    await asyncio.gather(request("a", 0.0), request("b", 0.02), request("c", 0.1), work())
    assert order == ["ack a", "ack b", "ack c", "work"]


async def test_a_lone_command_does_not_wait_for_a_quiet_gap() -> None:
    gate = AckGate(quiet=0.5)
    with gate.request():
        pass
    started = time.monotonic()
    await gate.settled()
    assert time.monotonic() - started < 0.05
