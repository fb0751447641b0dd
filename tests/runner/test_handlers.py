"""handlers/runs.py through the real slack_bolt over Socket Mode against the lab's Slack: people
press the buttons of run and approval messages and type `/etcd-runs` and `/etcd-abort`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp

from bot.procedure import StepContext, StepKind, StepResult
from bot.run_types import RunnerPolicy
from bot.store import Run, RunState
from handlers.runs import register
from lab.slack import SlackWorkspace
from tests.runner.conftest import (
    ALICE,
    APP_TOKEN,
    CHANNEL,
    Bot,
    Calls,
    crash,
    procedure,
    step,
    until,
    wait_state,
)

Lab = Callable[..., Awaitable[dict]]


@pytest.fixture
async def lab(workspace: SlackWorkspace) -> AsyncIterator[Lab]:
    async with aiohttp.ClientSession() as session:

        async def call(method: str, path: str, **kwargs: object) -> dict:
            async with session.request(method, workspace.lab_url + path, **kwargs) as response:  # type: ignore[arg-type]
                return await response.json()

        yield call


async def connect(bot: Bot, workspace: SlackWorkspace) -> AsyncSocketModeHandler:
    app = AsyncApp(client=bot.client, request_verification_enabled=False)
    register(app, runner=bot.runner, resolve_cluster=lambda _channel, _text: "prod")
    handler = AsyncSocketModeHandler(app, APP_TOKEN)
    await handler.connect_async()
    await until(lambda: workspace.socket_connections >= 1, what="Socket Mode connection")
    return handler


async def ephemeral_texts(lab: Lab, *, user: str, since: int) -> list[str]:
    view = await lab("GET", "view", params={"user": user, "since": str(since)})
    return [m["text"] for m in view["messages"] if m["ephemeral"]]


async def test_approval_buttons_and_run_commands(make_bot, workspace, lab) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    proc = make_bot.add(procedure("restore", step("check", calls=calls), step("wipe", kind=StepKind.DESTRUCTIVE, calls=calls)))
    bot = await make_bot(instance_id="one")
    handler = await connect(bot, workspace)
    try:
        run = await bot.runner.start(proc, cluster="prod", parameters={"backup": "b-1"}, requester=ALICE, channel=CHANNEL)
        assert isinstance(run, Run)
        await wait_state(bot, run.id, RunState.WAITING_APPROVAL)
        await until(lambda: any(m.text.startswith("Approval needed") for m in workspace.recorder.messages.values()), what="approval message")

        pressed = await lab("POST", "press", json={"user": "alice", "button_text": "Approve"})
        assert pressed["ok"], pressed
        refused = await until(lambda: ephemeral_texts(lab, user="alice", since=pressed["cursor"]), what="alice's answer")
        assert "cannot approve" in refused[0]
        pressed = await lab("POST", "press", json={"user": "dave", "button_text": "Approve"})
        refused = await until(lambda: ephemeral_texts(lab, user="dave", since=pressed["cursor"]), what="dave's answer")
        assert "@etcd-approvers" in refused[0] and calls["wipe"] == 0

        pressed = await lab("POST", "press", json={"user": "bob", "button_text": "Approve"})
        done = await wait_state(bot, run.id, RunState.SUCCEEDED)
        assert calls["wipe"] == 1 and done.step("wipe").approved_by == "U0BOB0001"

        sent = await lab("POST", "command", json={"user": "alice", "channel": "#incident", "text": "/etcd-runs"})
        listing = await until(lambda: ephemeral_texts(lab, user="alice", since=sent["cursor"]), what="/etcd-runs answer")
        assert listing == ["Recent runs on prod"]
        view = await lab("GET", "view", params={"user": "alice", "since": str(sent["cursor"])})
        assert run.id in str(view["messages"][0]["blocks"])

        sent = await lab("POST", "command", json={"user": "alice", "channel": "#incident", "text": "/etcd-abort " + run.id})
        answer = await until(lambda: ephemeral_texts(lab, user="alice", since=sent["cursor"]), what="/etcd-abort answer")
        assert "already ended" in answer[0]
    finally:
        await handler.close_async()


async def test_resume_and_abort_buttons_after_a_crash(make_bot, workspace, lab) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    never = asyncio.Event()

    async def hang_once(_ctx: StepContext) -> StepResult:
        if calls["s2"] == 1:
            await never.wait()
        return StepResult(summary="s2 done")

    proc = make_bot.add(procedure("restore", step("s1", calls=calls), step("s2", calls=calls, body=hang_once)))
    policy = RunnerPolicy(lock_timeout=2.0, instance_ttl=0.5)
    first = await make_bot(instance_id="first", policy=policy)
    run = await first.runner.start(proc, cluster="prod", parameters={}, requester=ALICE, channel=CHANNEL)
    await until(lambda: calls["s2"] == 1, what="s2 to start")
    await crash(first, run.id)
    second = await make_bot(instance_id="second", policy=policy)
    handler = await connect(second, workspace)
    try:
        await until(second.runner.recover_interrupted, timeout=15, what="recovery (once the lock expired)")
        await second.sender.flush(channel=CHANNEL, ts=run.message_ts)
        pressed = await lab("POST", "press", json={"user": "carol", "action_id": "run_resume", "message_ts": run.message_ts, "channel": CHANNEL})
        assert pressed["ok"], pressed
        await wait_state(second, run.id, RunState.SUCCEEDED)
        assert calls["s2"] == 2
        answer = await until(lambda: ephemeral_texts(lab, user="carol", since=pressed["cursor"]), what="carol's answer")
        assert "Resumed" in answer[0]
    finally:
        await handler.close_async()


async def test_people_who_may_not_run_commands_cannot_abort(make_bot, workspace, lab) -> None:  # type: ignore[no-untyped-def]
    from bot.auth import Authorizer
    from handlers.common import action_authorization_middleware, authorization_middleware

    calls = Calls()
    release = asyncio.Event()

    async def slow(_ctx: StepContext) -> StepResult:
        await release.wait()
        return StepResult(summary="done")

    proc = make_bot.add(procedure("restore", step("s1", calls=calls, body=slow), step("s2", calls=calls)))
    bot = await make_bot(instance_id="guarded")
    authorizer = Authorizer(allowed_users=[ALICE], allowed_usergroup=None)
    app = AsyncApp(client=bot.client, request_verification_enabled=False)
    register(app, runner=bot.runner, resolve_cluster=lambda _c, _t: "prod",
             command_middleware=[authorization_middleware(authorizer)],
             action_middleware=[action_authorization_middleware(authorizer)])
    handler = AsyncSocketModeHandler(app, APP_TOKEN)
    await handler.connect_async()
    await until(lambda: workspace.socket_connections >= 1, what="Socket Mode connection")
    try:
        run = await bot.runner.start(proc, cluster="prod", parameters={}, requester=ALICE, channel=CHANNEL)
        assert isinstance(run, Run)
        await until(lambda: calls["s1"] == 1, what="s1 to start")
        await bot.sender.flush(channel=CHANNEL, ts=run.message_ts)

        sent = await lab("POST", "command", json={"user": "dave", "channel": "#incident", "text": "/etcd-abort " + run.id})
        answer = await until(lambda: ephemeral_texts(lab, user="dave", since=sent["cursor"]), what="dave's refusal")
        assert "You may not run `/etcd-abort`" in answer[0]
        pressed = await lab("POST", "press", json={"user": "dave", "action_id": "run_abort",
                                                   "message_ts": run.message_ts, "channel": CHANNEL})
        if pressed.get("ok"):  # the run message shows an Abort button while a step runs
            refused = await until(lambda: ephemeral_texts(lab, user="dave", since=pressed["cursor"]), what="refusal")
            assert "You may not do that" in refused[0]
        release.set()
        done = await wait_state(bot, run.id, RunState.SUCCEEDED)
        assert done.state == RunState.SUCCEEDED and calls["s2"] == 1
    finally:
        release.set()
        await handler.close_async()
