"""The runner end to end with fake steps, a real Redis and the lab's Slack: progress, audit,
abort, timeouts, retries, crash and resume, dry-run."""

from __future__ import annotations

import asyncio

import pytest

from bot.locks import lock_holder
from bot.procedure import StepContext, StepFailed, StepKind, StepResult
from bot.run_types import RunnerPolicy
from bot.store import Run, RunState, StepState
from tests.runner.conftest import (
    ALICE,
    BOB,
    CHANNEL,
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


async def test_a_run_posts_progress_output_and_audit(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()

    async def with_output(ctx: StepContext) -> StepResult:
        await ctx.heartbeat("copying snapshot")
        return StepResult(summary="snapshot saved", output="x" * 5000, values={"path": "/backup/a.db"})

    async def reads_previous(ctx: StepContext) -> StepResult:
        return StepResult(summary=f"checked {ctx.results['s1'].values['path']}")

    proc = make_bot.add(
        procedure("backup", step("s1", calls=calls, body=with_output), step("s2", kind=StepKind.CHANGE, calls=calls, body=reads_previous))
    )
    bot = await make_bot(instance_id="one")
    run = await bot.runner.start(proc, cluster="prod", parameters={"node": "m0"}, requester=ALICE, channel=CHANNEL)
    assert isinstance(run, Run) and run.message_ts
    done = await bot.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.SUCCEEDED
    assert [s.state for s in done.steps] == [StepState.SUCCEEDED, StepState.SUCCEEDED]
    assert done.step("s2").summary == "checked /backup/a.db"
    assert all(s.duration is not None for s in done.steps)

    final = message(workspace, run.message_ts)
    text = blocks_text(final.blocks)
    assert "succeeded" in text and "snapshot saved" in text and "checked /backup/a.db" in text
    assert action_ids(final.blocks) == []  # no buttons on a finished run
    thread = [m for m in workspace.recorder.messages.values() if m.thread_ts == run.message_ts]
    assert len(thread) == 2 and all("```" in m.text for m in thread)  # 5000 characters: two messages

    entries = await bot.runner.audit.entries(cluster="prod")
    events = [e["event"] for e in reversed(entries)]
    assert events == ["run.started", "step.started", "step.finished", "step.started", "step.finished", "run.finished"]
    assert entries[-1]["parameters"] == '{"node": "m0"}' and entries[-1]["actor"] == ALICE
    [summary] = await bot.runner.recent_runs(cluster="prod")
    assert (summary.run_id, summary.state, summary.requester, summary.procedure) == (run.id, "succeeded", ALICE, "backup")
    assert summary.parameters == {"node": "m0"}


async def test_abort_between_steps_says_what_was_done(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    release = asyncio.Event()

    async def slow(_ctx: StepContext) -> StepResult:
        await release.wait()
        return StepResult(summary="first done")

    proc = make_bot.add(
        procedure("backup", step("s1", calls=calls, body=slow), step("s2", calls=calls), step("s3", calls=calls))
    )
    bot = await make_bot(instance_id="one")
    run = await bot.runner.start(proc, cluster="prod", parameters={}, requester=ALICE, channel=CHANNEL)
    assert isinstance(run, Run)
    await until(lambda: calls["s1"] == 1, what="s1 to start")
    answer = await bot.runner.abort(run.id, by=BOB)
    assert answer.ok and "will stop before its next step" in answer.message
    release.set()
    done = await bot.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.ABORTED and done.ended_by == BOB
    assert (calls["s1"], calls["s2"], calls["s3"]) == (1, 0, 0)
    assert await lock_holder(rds, cluster="prod") is None
    text = blocks_text(message(workspace, run.message_ts).blocks)
    assert "*Done:* Title of s1" in text and "*Not done:* Title of s2, Title of s3" in text and f"<@{BOB}>" in text
    again = await bot.runner.abort(run.id, by=BOB)
    assert not again.ok and "already ended" in again.message


async def test_timeout_fails_the_run_with_what_to_do(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    never = asyncio.Event()

    async def hang(_ctx: StepContext) -> StepResult:
        await never.wait()
        return StepResult(summary="unreachable")

    proc = make_bot.add(procedure("backup", step("s1", calls=calls, body=hang, timeout=0.2), step("s2", calls=calls)))
    bot = await make_bot(instance_id="one")
    run = await bot.runner.start(proc, cluster="prod", parameters={}, requester=ALICE, channel=CHANNEL)
    done = await bot.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.FAILED
    assert "timed out after 0.2 s" in done.error and "/etcd-status prod" in done.next_action
    assert calls["s2"] == 0
    text = blocks_text(message(workspace, run.message_ts).blocks)
    assert "What to do next" in text and "timed out" in text


async def test_retries_only_for_retryable_failures_and_timeouts(make_bot, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()

    async def flaky(_ctx: StepContext) -> StepResult:
        if calls["flaky"] < 3:
            raise StepFailed("etcd leader changed", retryable=True)
        return StepResult(summary="ok on the third attempt")

    never = asyncio.Event()

    async def slow_then_fast(_ctx: StepContext) -> StepResult:
        if calls["slow"] == 1:
            await never.wait()
        return StepResult(summary="fast the second time")

    async def broken(_ctx: StepContext) -> StepResult:
        raise StepFailed("disk full", next_action="Free space on /var/lib/etcd", retryable=False)

    ok = make_bot.add(
        procedure(
            "ok",
            step("flaky", calls=calls, body=flaky, retries=2),
            step("slow", calls=calls, body=slow_then_fast, retries=1, timeout=0.2),
        )
    )
    bad = make_bot.add(procedure("bad", step("broken", calls=calls, body=broken, retries=5)))
    bot = await make_bot(instance_id="one")

    run = await bot.runner.start(ok, cluster="prod", parameters={}, requester=ALICE, channel=CHANNEL)
    done = await bot.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.SUCCEEDED
    assert (done.step("flaky").attempts, done.step("slow").attempts) == (3, 2)

    run = await bot.runner.start(bad, cluster="prod", parameters={}, requester=ALICE, channel=CHANNEL)
    done = await bot.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.FAILED
    assert calls["broken"] == 1 and done.next_action == "Free space on /var/lib/etcd"


@pytest.mark.parametrize("safe", [True, False])
async def test_crash_mid_run_recover_and_resume(make_bot, workspace, rds, safe: bool) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    never = asyncio.Event()

    async def blocks_first_time(_ctx: StepContext) -> StepResult:
        if calls["s2"] == 1:
            await never.wait()  # the bot dies during this
        return StepResult(summary="s2 done")

    proc = make_bot.add(
        procedure(
            "restore",
            step("s1", calls=calls),
            step("s2", kind=StepKind.CHANGE, calls=calls, body=blocks_first_time, safe_to_repeat=safe),
            step("s3", calls=calls),
        )
    )
    policy = RunnerPolicy(lock_timeout=2.0, instance_ttl=0.5, first_backoff=0.01)
    first = await make_bot(instance_id="first", policy=policy)
    run = await first.runner.start(proc, cluster="prod", parameters={}, requester=ALICE, channel=CHANNEL)
    assert isinstance(run, Run)
    await until(lambda: calls["s2"] == 1, what="s2 to start")
    await crash(first, run.id)

    second = await make_bot(instance_id="second", policy=policy)
    recovered = await until(second.runner.recover_interrupted, timeout=15, what="the run to be recovered")
    [found] = recovered
    assert found.id == run.id and found.state is RunState.INTERRUPTED and found.owner == "second"
    assert found.step("s1").state is StepState.SUCCEEDED and found.step("s2").state is StepState.INTERRUPTED
    assert await lock_holder(rds, cluster="prod") == run.id  # kept or taken back
    assert await second.runner.recover_interrupted() == []  # once is enough
    await second.sender.flush(channel=CHANNEL, ts=run.message_ts)
    shown = message(workspace, run.message_ts)
    expected = ["run_resume", "run_abort"] if safe else ["run_rerun_step", "run_abort"]
    assert action_ids(shown.blocks) == expected
    assert "bot restarted" in blocks_text(shown.blocks)

    answer = await second.runner.resume(run.id, by=BOB)
    if not safe:
        assert not answer.ok and "not safe to repeat" in answer.message and calls["s2"] == 1
        assert "Re-run step anyway" in blocks_text(message(workspace, run.message_ts).blocks)
        answer = await second.runner.resume(run.id, by=BOB, rerun_unsafe=True)
    assert answer.ok, answer.message
    done = await second.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.SUCCEEDED
    assert (calls["s1"], calls["s2"], calls["s3"]) == (1, 2, 1)  # s1 not repeated; s2 re-run once
    assert await lock_holder(rds, cluster="prod") is None
    events = [e["event"] for e in await second.runner.audit.entries(cluster="prod")]
    assert "run.interrupted" in events and "run.resumed" in events


async def test_abort_an_interrupted_run_releases_its_lock(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    never = asyncio.Event()

    async def hang(_ctx: StepContext) -> StepResult:
        await never.wait()
        return StepResult(summary="unreachable")

    proc = make_bot.add(procedure("restore", step("s1", calls=calls), step("s2", calls=calls, body=hang)))
    policy = RunnerPolicy(lock_timeout=5.0, instance_ttl=0.5)
    first = await make_bot(instance_id="first", policy=policy)
    run = await first.runner.start(proc, cluster="prod", parameters={}, requester=ALICE, channel=CHANNEL)
    await until(lambda: calls["s2"] == 1, what="s2 to start")
    await crash(first, run.id)
    second = await make_bot(instance_id="second", policy=policy)
    await until(second.runner.recover_interrupted, timeout=15, what="the run to be recovered")
    answer = await second.runner.abort(run.id, by=BOB)
    assert answer.ok and "Done: Title of s1" in answer.message and "Not done: Title of s2" in answer.message
    stored = await wait_state(second, run.id, RunState.ABORTED)
    assert stored.ended_by == BOB
    assert await lock_holder(rds, cluster="prod") is None
    assert not (await second.runner.resume(run.id, by=BOB)).ok


async def test_dry_run_executes_nothing_and_takes_no_lock(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()

    async def must_not_run(_ctx: StepContext) -> StepResult:
        pytest.fail("a dry run called a step's run()")

    proc = make_bot.add(
        procedure(
            "restore",
            step("s1", calls=calls, body=must_not_run),
            step("s2", kind=StepKind.DESTRUCTIVE, calls=calls, body=must_not_run),
        )
    )
    bot = await make_bot(instance_id="one")
    plan = await bot.runner.dry_run(proc, cluster="prod", parameters={"cluster": "prod"}, requester=ALICE, channel=CHANNEL)
    assert sum(calls.counts.values()) == 0
    assert [(s.step_id, s.kind) for s in plan.steps] == [("s1", StepKind.READ), ("s2", StepKind.DESTRUCTIVE)]
    assert plan.steps[1].commands[0].command == "oc get s2 --cluster prod"
    assert await lock_holder(rds, cluster="prod") is None
    assert await bot.runner.store.recent_run_ids(cluster="prod", limit=10) == []
    [posted] = [m for m in workspace.recorder.messages.values() if m.channel == CHANNEL]
    text = blocks_text(posted.blocks)
    assert "Dry run" in text and "oc get s1 --cluster prod" in text and "oc get s2 --cluster prod" in text
    assert "approval" in text
