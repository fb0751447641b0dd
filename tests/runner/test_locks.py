"""The per-cluster lock, through the runner, against a real Redis: one run per cluster however
many people ask at once, a dead bot's lock frees itself, a live bot's lock outlasts its timeout."""

from __future__ import annotations

import asyncio
import time

from bot.locks import lock_holder
from bot.procedure import StepContext, StepResult
from bot.run_types import Busy, RunnerPolicy
from bot.store import Run, RunState
from tests.runner.conftest import ALICE, BOB, CHANNEL, Calls, crash, procedure, step, until


async def test_hundred_concurrent_starts_make_exactly_one_run(make_bot, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    release = asyncio.Event()

    async def hold(_ctx: StepContext) -> StepResult:
        await release.wait()
        return StepResult(summary="held")

    proc = make_bot.add(procedure("backup", step("s1", calls=calls, body=hold)))
    bots = [await make_bot(instance_id=f"replica-{n}") for n in range(4)]  # four replicas, four Redis clients

    answers = await asyncio.gather(
        *(
            bots[n % 4].runner.start(proc, cluster="prod", parameters={"n": n}, requester=ALICE, channel=CHANNEL)
            for n in range(100)
        )
    )
    runs = [a for a in answers if isinstance(a, Run)]
    busy = [a for a in answers if isinstance(a, Busy)]
    assert len(runs) == 1 and len(busy) == 99
    [run] = runs
    assert await lock_holder(rds, cluster="prod") == run.id
    assert await bots[0].runner.store.recent_run_ids(cluster="prod", limit=200) == [run.id]
    assert all(b.run_id in (run.id, None) for b in busy)
    # Even those that asked while the winner was between taking the lock and saving its record
    # are told what runs and who started it (not "it is just starting").
    assert all(b.procedure == run.procedure_title and b.requester == ALICE for b in busy), {b.message() for b in busy}

    # Once the winner is recorded, the busy answer names it, its procedure, who and where.
    later = await bots[1].runner.start(proc, cluster="prod", parameters={}, requester=BOB, channel=CHANNEL)
    assert isinstance(later, Busy)
    await until(lambda: calls["s1"] == 1, what="the step to start")
    later = await bots[1].runner.busy(cluster="prod")
    text = later.message()
    assert run.id in text and "Procedure backup" in text and f"<@{ALICE}>" in text and "Title of s1" in text
    assert later.since is not None

    release.set()
    owner = next(b for b in bots if b.runner.instance_id == run.owner)
    done = await owner.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.SUCCEEDED
    assert await lock_holder(rds, cluster="prod") is None
    assert calls["s1"] == 1


async def test_lock_of_a_dead_bot_expires_and_a_new_run_can_start(make_bot, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    never = asyncio.Event()

    async def hang(_ctx: StepContext) -> StepResult:
        await never.wait()
        return StepResult(summary="unreachable")

    proc = make_bot.add(procedure("backup", step("s1", calls=calls, body=hang)))
    policy = RunnerPolicy(lock_timeout=1.0, instance_ttl=1.0)
    dead = await make_bot(instance_id="dead", policy=policy)
    alive = await make_bot(instance_id="alive", policy=policy)

    first = await dead.runner.start(proc, cluster="prod", parameters={}, requester=ALICE, channel=CHANNEL)
    assert isinstance(first, Run)
    await until(lambda: calls["s1"] == 1, what="the step to start")
    await crash(dead, first.id)
    crashed_at = time.monotonic()

    assert isinstance(await alive.runner.start(proc, cluster="prod", parameters={}, requester=BOB, channel=CHANNEL), Busy)

    async def try_start() -> Run | None:
        answer = await alive.runner.start(proc, cluster="prod", parameters={}, requester=BOB, channel=CHANNEL)
        return answer if isinstance(answer, Run) else None

    second = await until(try_start, timeout=5.0, what="the dead bot's lock to expire")
    assert time.monotonic() - crashed_at < 1.0 + 2.0  # about the lock timeout, not later
    assert await lock_holder(rds, cluster="prod") == second.id
    await alive.runner.abort(second.id, by=BOB)


async def test_renewal_keeps_a_long_steps_lock_past_its_timeout(make_bot, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    lock_timeout = 0.6
    held: list[bool] = []

    async def long_step(ctx: StepContext) -> StepResult:
        started = time.monotonic()
        while time.monotonic() - started < 4 * lock_timeout:  # a step that lasts four lock timeouts
            held.append(await lock_holder(rds, cluster="prod") == ctx.run_id)
            await asyncio.sleep(0.05)
        return StepResult(summary="long step done")

    proc = make_bot.add(procedure("backup", step("s1", calls=calls, body=long_step, timeout=30)))
    bot = await make_bot(instance_id="one", policy=RunnerPolicy(lock_timeout=lock_timeout))
    other = await make_bot(instance_id="two", policy=RunnerPolicy(lock_timeout=lock_timeout))

    run = await bot.runner.start(proc, cluster="prod", parameters={}, requester=ALICE, channel=CHANNEL)
    assert isinstance(run, Run)
    await until(lambda: len(held) >= 20, what="the step to have run past the lock timeout")
    busy = await other.runner.start(proc, cluster="prod", parameters={}, requester=BOB, channel=CHANNEL)
    assert isinstance(busy, Busy) and busy.run_id == run.id
    done = await bot.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.SUCCEEDED
    assert held and all(held), "the lock was lost while the step ran"
    assert await lock_holder(rds, cluster="prod") is None
