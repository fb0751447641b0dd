"""Fencing: each lock acquisition gets a number from a Redis counter, and nothing acts for a run
whose number is no longer the lock's. A lost lock cancels the step in flight at once; a run is
adopted only after its lock expired; a bot that was paused writes nothing over its successor;
abort releases only a lock whose token it holds. Real redis-server, the lab's Slack."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from bot.locks import lock_holder, lock_key, lock_value
from bot.procedure import StepContext, StepKind, StepResult
from bot.progress import render_run, run_text
from bot.run_types import RunnerPolicy
from bot.store import Run, RunState, StepState
from bot.tasks import cancel_and_wait
from tests.redis_server import RedisServer
from tests.runner.conftest import (
    ALICE,
    BOB,
    CHANNEL,
    Bot,
    BotFactory,
    Calls,
    action_ids,
    blocks_text,
    crash,
    message,
    procedure,
    step,
    until,
    wait_state,
)


async def pause(bot: Bot, *run_ids: str) -> None:
    """What SIGSTOP looks like from outside: the bot stops renewing its presence and its locks,
    but its steps are still there, and go on when it is continued."""
    marks = (f"etcdbot-presence:{bot.runner.instance_id}", *(f"lock-renewal-{r}" for r in run_ids))
    for task in [t for t in asyncio.all_tasks() if t.get_name() in marks]:
        assert await cancel_and_wait(task)


async def test_a_lost_lock_cancels_the_running_step_at_once(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    started = asyncio.Event()
    never = asyncio.Event()

    async def hang_once(_ctx: StepContext) -> StepResult:
        if calls["s1"] == 1:
            started.set()
            await never.wait()
        return StepResult(summary="s1 done")

    proc = make_bot.add(procedure("restore", step("s1", calls=calls, body=hang_once), step("s2", calls=calls)))
    lock_timeout = 3.0
    bot = await make_bot(instance_id="one", policy=RunnerPolicy(lock_timeout=lock_timeout, instance_ttl=0.5))
    run = await bot.runner.start(proc, cluster="prod", parameters={}, requester=ALICE, channel=CHANNEL)
    assert isinstance(run, Run)
    await started.wait()
    token = (await lock_value(rds, cluster="prod")).token
    await rds.delete(lock_key("prod"))  # Redis lost the key (or it was taken over): renewal is refused
    lost_at = time.monotonic()
    interrupted = await wait_state(bot, run.id, RunState.INTERRUPTED, timeout=lock_timeout * 2)
    assert time.monotonic() - lost_at <= lock_timeout / 3 + 1.0  # within the renewal interval
    assert calls["s2"] == 0
    assert interrupted.step("s1").state is StepState.INTERRUPTED
    assert "lost the lock of `prod`" in interrupted.error and "cancelled at once" in interrupted.error
    assert f"fencing token {token}" in interrupted.error
    await until(lambda: "lost the lock" in blocks_text(message(workspace, run.message_ts).blocks), what="the message says so")

    answer = await bot.runner.resume(run.id, by=ALICE)  # the same bot, a new lock, a new token
    assert answer.ok, answer.message
    done = await bot.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.SUCCEEDED and (calls["s1"], calls["s2"]) == (2, 1)
    entries = await bot.runner.audit.entries(cluster="prod")
    resumed = next(e for e in entries if e["event"] == "run.resumed")
    assert int(resumed["fencing_token"]) > token


async def test_no_adoption_while_the_lock_lives_and_a_paused_bot_acts_no_more(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    go_on = asyncio.Event()
    acted: list[str] = []

    async def destroy(ctx: StepContext) -> StepResult:
        await go_on.wait()  # paused here
        await ctx.fence()  # what the kit's write verbs do before they act
        acted.append(ctx.run_id)
        return StepResult(summary="destroyed")

    proc = make_bot.add(procedure("restore", step("s1", calls=calls, body=destroy, kind=StepKind.CHANGE, safe_to_repeat=False),
                                  step("s2", calls=calls)))
    policy = RunnerPolicy(lock_timeout=2.0, instance_ttl=0.5)
    first = await make_bot(instance_id="first", policy=policy)
    second = await make_bot(instance_id="second", policy=policy)
    run = await first.runner.start(proc, cluster="prod", parameters={}, requester=ALICE, channel=CHANNEL)
    await until(lambda: calls["s1"] == 1, what="s1 to start")
    first_token = (await lock_value(rds, cluster="prod")).token
    await pause(first, run.id)
    paused_at = time.monotonic()

    # Longer than the presence TTL, shorter than the lock's: the second does not adopt.
    await until(_gone(rds, "etcdbot:instance:first"), what="the first's presence to expire")
    assert await second.runner.recover_interrupted() == []
    assert await lock_holder(rds, cluster="prod") == run.id and time.monotonic() - paused_at < policy.lock_timeout
    # Longer than the lock TTL: the second adopts it, with a new token.
    [adopted] = await until(second.runner.recover_interrupted, timeout=15, what="adoption after the lock expired")
    assert time.monotonic() - paused_at >= policy.lock_timeout - 0.7  # not before the lock could expire
    assert adopted.owner == "second" and adopted.state is RunState.INTERRUPTED
    assert (await lock_value(rds, cluster="prod")).token > first_token

    await until(lambda: ": interrupted (run" in message(workspace, run.message_ts).text,
                what="the second to show the run interrupted")
    # An edit of the first that had passed its owner check when it paused lands now, painting
    # "running" over the second's message...
    late = replace(run, state=RunState.RUNNING, updated_at=time.time())
    first.runner.sender.update(channel=run.channel, ts=run.message_ts, text=run_text(late), blocks=render_run(late))
    await until(lambda: ": running (run" in message(workspace, run.message_ts).text,
                what="the first's late edit to land")

    go_on.set()  # the first is continued: its token is stale, it acts no more and says so
    thread = await until(lambda: [m for m in workspace.recorder.messages.values()
                                  if m.thread_ts == run.message_ts and "lost run" in m.text], what="the first says so")
    assert "first" in thread[0].text and f"fencing token {first_token}" in thread[0].text
    # ... and the stale first paints the message back from the second's record.
    shown = await until(lambda: (m := message(workspace, run.message_ts)) and ": interrupted (run" in m.text and m,
                        what="the message to show the second's state again")
    assert "run_rerun_step" in action_ids(shown.blocks)  # the second's buttons, not the first's Abort alone
    assert acted == [] and calls["s2"] == 0
    stored = await second.runner.store.load(run.id)
    assert stored is not None and stored.owner == "second" and stored.state is RunState.INTERRUPTED

    await second.runner.abort(run.id, by=BOB)
    assert await lock_holder(rds, cluster="prod") is None


def _gone(rds: aioredis.Redis, key: str):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return not await rds.exists(key)
    return check


async def test_abort_releases_only_a_lock_whose_token_it_holds(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    never = asyncio.Event()

    async def hang(_ctx: StepContext) -> StepResult:
        await never.wait()
        return StepResult(summary="unreachable")

    proc = make_bot.add(procedure("restore", step("s1", calls=calls, body=hang)))
    policy = RunnerPolicy(lock_timeout=30.0, instance_ttl=0.3)
    first = await make_bot(instance_id="first", policy=policy)
    run = await first.runner.start(proc, cluster="prod", parameters={}, requester=ALICE, channel=CHANNEL)
    await until(lambda: calls["s1"] == 1, what="s1 to start")
    held = await lock_value(rds, cluster="prod")
    await crash(first, run.id)
    second = await make_bot(instance_id="second", policy=policy)
    await until(_gone(rds, "etcdbot:instance:first"), what="the first's presence to expire")
    answer = await second.runner.abort(run.id, by=BOB)
    assert answer.ok and "left to expire on its own" in answer.message
    assert (await wait_state(second, run.id, RunState.ABORTED)).ended_by == BOB
    assert await lock_value(rds, cluster="prod") == held  # not its token: not released


# -- Redis loses its data mid-step ------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which the test kills and starts again, empty."""
    server = RedisServer(workdir=tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def own_bots(own_redis: RedisServer, workspace) -> AsyncIterator[BotFactory]:  # type: ignore[no-untyped-def]
    factory = BotFactory(redis_url=own_redis.url, workspace=workspace)
    yield factory
    for bot in factory.bots:
        try:
            await bot.close()
        except (OSError, redis.RedisError):
            pass


async def test_redis_restarted_without_its_data_mid_step(own_redis, own_bots, workspace) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    started = asyncio.Event()
    never = asyncio.Event()

    async def hang_once(_ctx: StepContext) -> StepResult:
        if calls["s1"] == 1:
            started.set()
            await never.wait()
        return StepResult(summary="s1 done")

    proc = own_bots.add(procedure("restore", step("s1", calls=calls, body=hang_once), step("s2", calls=calls)))
    lock_timeout = 3.0
    bot = await own_bots(instance_id="one", policy=RunnerPolicy(lock_timeout=lock_timeout, instance_ttl=0.5))
    run = await bot.runner.start(proc, cluster="prod", parameters={}, requester=ALICE, channel=CHANNEL)
    await started.wait()
    own_redis.kill()
    own_redis.start()  # empty: no run, no lock, no audit
    restarted = time.monotonic()
    check = aioredis.Redis.from_url(own_redis.url)
    try:
        async def interrupted() -> Run | None:
            found = await bot.runner.store.load(run.id)
            return found if found is not None and found.state is RunState.INTERRUPTED else None

        found = await until(interrupted, timeout=lock_timeout * 3, what="the run recorded as interrupted again")
        assert time.monotonic() - restarted <= lock_timeout + 1.0
        assert calls["s2"] == 0 and "lost the lock" in found.error
        assert found.step("s1").state is StepState.INTERRUPTED
        # The bot keeps serving: another run starts and finishes on the empty Redis.
        other = own_bots.add(procedure("backup", step("b1", calls=calls)))
        later = await bot.runner.start(other, cluster="test", parameters={}, requester=BOB, channel=CHANNEL)
        assert isinstance(later, Run)
        assert (await bot.runner.wait(later.id, timeout=10)).state is RunState.SUCCEEDED
        # And a bot started now (a restart) comes up cleanly and finds the interrupted run.
        await bot.close()
        own_bots.bots.remove(bot)
        again = await own_bots(instance_id="two", policy=RunnerPolicy(lock_timeout=lock_timeout, instance_ttl=0.5))
        [recovered] = await until(again.runner.recover_interrupted, timeout=15, what="recovery after the restart")
        assert recovered.id == run.id and recovered.state is RunState.INTERRUPTED
        assert await check.exists(lock_key("prod"))
    finally:
        await check.aclose()
