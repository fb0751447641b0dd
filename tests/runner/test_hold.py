"""A step that fails half way through changing the cluster (`StepFailed(hold=True)`, as a restore
that moved manifests on some masters): the run stops INTERRUPTED, KEEPS the cluster's lock (no
other run starts), says what to do next in its own section, and Resume repeats the step; Abort
releases the lock. Real Redis and the lab's Slack, fake steps."""

from __future__ import annotations

from bot.locks import lock_holder
from bot.procedure import StepContext, StepFailed, StepResult
from bot.run_types import Busy
from bot.store import RunState, StepState
from tests.runner.conftest import (
    ALICE,
    BOB,
    CHANNEL,
    Calls,
    action_ids,
    blocks_text,
    message,
    procedure,
    step,
    until,
)


def half_way(calls: Calls, *, fail_times: int):  # type: ignore[no-untyped-def]
    async def body(_ctx: StepContext) -> StepResult:
        if calls["s2"] <= fail_times:
            raise StepFailed("node-b did not answer", next_action="• `node-a`: manifests moved\n• `node-b`: unknown",
                             hold=True, retryable=True)
        return StepResult(summary="finished")

    return body


async def test_a_held_failure_keeps_the_lock_and_resume_repeats_the_step(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    proc = make_bot.add(procedure("restore", step("s1", calls=calls),
                                  step("s2", calls=calls, body=half_way(calls, fail_times=1), retries=3),
                                  step("s3", calls=calls)))
    bot = await make_bot(instance_id="one")
    run = await bot.runner.start(proc, cluster="prod", parameters={}, requester=ALICE, channel=CHANNEL)
    await until(lambda: calls["s2"] == 1, what="s2 to fail once")
    held = await until(lambda: _state(bot, run.id, RunState.INTERRUPTED), what="the run held")
    assert calls["s2"] == 1  # no retry on its own: a person decides
    assert held.step("s2").state is StepState.INTERRUPTED and calls["s3"] == 0
    assert held.next_action.startswith("• `node-a`: manifests moved")
    assert await lock_holder(rds, cluster="prod") == run.id
    other = await bot.runner.start(procedure("backup", step("b1", calls=calls)), cluster="prod", parameters={},
                                   requester=BOB, channel=CHANNEL)
    assert isinstance(other, Busy) and other.run_id == run.id
    await until(lambda: "run_resume" in action_ids(message(workspace, run.message_ts).blocks), what="a Resume button")
    text = blocks_text(message(workspace, run.message_ts).blocks)
    assert "*What to do next:* • `node-a`: manifests moved" in text and "node-b did not answer" in text

    answer = await bot.runner.resume(run.id, by=ALICE)
    assert answer.ok, answer.message
    done = await bot.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.SUCCEEDED
    assert calls["s1"] == 1 and calls["s2"] == 2 and calls["s3"] == 1
    assert await lock_holder(rds, cluster="prod") is None


async def test_abort_of_a_held_run_releases_the_lock(make_bot, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    proc = make_bot.add(procedure("restore", step("s1", calls=calls), step("s2", calls=calls, body=half_way(calls, fail_times=9))))
    bot = await make_bot(instance_id="one")
    run = await bot.runner.start(proc, cluster="prod", parameters={}, requester=ALICE, channel=CHANNEL)
    await until(lambda: _state(bot, run.id, RunState.INTERRUPTED), what="the run held")
    assert (await bot.runner.abort(run.id, by=BOB)).ok
    await until(lambda: _state(bot, run.id, RunState.ABORTED), what="the run aborted")
    assert await lock_holder(rds, cluster="prod") is None


async def _state(bot, run_id: str, state: RunState):  # type: ignore[no-untyped-def]
    stored = await bot.runner.store.load(run_id)
    return stored if stored is not None and stored.state is state else None
