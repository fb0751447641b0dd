"""Bad records never stop the bot: a partial or unreadable run or approval record is moved aside
(RENAME to a quarantine key), reported in the audit stream, in `/etcd-runs` and in the log, and
everything else goes on. Real Redis; the records are broken the ways Redis loses data."""

from __future__ import annotations

import asyncio
import json

from bot.approvals import request_key
from bot.procedure import StepContext, StepKind, StepResult
from bot.run_types import RunnerPolicy
from bot.store import Run, RunState
from handlers.runs import render_runs
from tests.runner.conftest import (
    ALICE,
    BOB,
    CHANNEL,
    Calls,
    blocks_text,
    crash,
    procedure,
    step,
    until,
    wait_state,
)


async def interrupted_run(make_bot, calls: Calls, *, cluster: str) -> Run:  # type: ignore[no-untyped-def]
    """A run left behind by a bot that died during its second step."""
    never = asyncio.Event()

    async def hang(_ctx: StepContext) -> StepResult:
        await never.wait()
        return StepResult(summary="unreachable")

    proc = make_bot.add(procedure("restore", step("s1", calls=calls), step("s2", calls=calls, body=hang)))
    dead = await make_bot(instance_id=f"dead-{cluster}", policy=RunnerPolicy(lock_timeout=1.5, instance_ttl=0.3))
    run = await dead.runner.start(proc, cluster=cluster, parameters={}, requester=ALICE, channel=CHANNEL)
    assert isinstance(run, Run)
    await until(lambda: calls["s2"] >= 1, what="s2 to start")
    await crash(dead, run.id)
    return run


async def test_truncated_and_partial_run_records_are_moved_aside_and_recovery_goes_on(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    truncated = await interrupted_run(make_bot, calls, cluster="prod")
    partial = await interrupted_run(make_bot, calls, cluster="test")
    good = await interrupted_run(make_bot, calls, cluster="stage")
    header = (await rds.hget(f"etcdbot:run:{truncated.id}", "run")).decode()
    await rds.hset(f"etcdbot:run:{truncated.id}", "run", header[: len(header) // 2])  # cut in the middle
    await rds.hdel(f"etcdbot:run:{partial.id}", "step:s2")  # Redis lost one field
    await rds.sadd("etcdbot:runs:live", "gone0000")  # and a live id whose record is gone entirely

    bot = await make_bot(instance_id="fresh", policy=RunnerPolicy(lock_timeout=1.5, instance_ttl=0.3))
    recovered = await until(bot.runner.recover_interrupted, timeout=15, what="recovery")
    assert [r.id for r in recovered] == [good.id]  # the good run is recovered regardless
    assert await rds.smembers("etcdbot:runs:live") == {good.id.encode()}
    assert not await rds.exists(f"etcdbot:run:{truncated.id}") and not await rds.exists(f"etcdbot:run:{partial.id}")

    for run, cluster, why in ((truncated, "prod", "JSONDecodeError"), (partial, "test", "step records missing: s2")):
        [note] = await bot.runner.quarantined(cluster=cluster)
        assert note.record_id == run.id and note.kind == "run" and why in note.reason
        assert note.cluster == cluster  # from the per-cluster index when the header itself is unreadable
        assert await rds.exists(note.moved_to)  # kept for a person to read
        [event] = [e for e in await bot.runner.audit.entries(cluster=cluster) if e["event"] == "record.quarantined"]
        assert event["run"] == run.id and event["moved_to"] == note.moved_to
        text = blocks_text([b.to_dict() for b in render_runs(cluster=cluster, runs=[], quarantined=[note])])
        assert run.id in text and "moved aside" in text and note.moved_to in text
    assert await bot.runner.store.load(truncated.id) is None  # and asking again is harmless
    assert await bot.runner.abort(good.id, by=BOB)


async def test_a_broken_approval_request_stops_the_step_safely(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    proc = make_bot.add(procedure("restore", step("wipe", kind=StepKind.DESTRUCTIVE, calls=calls)))
    bot = await make_bot(instance_id="one")
    run = await bot.runner.start(proc, cluster="prod", parameters={}, requester=ALICE, channel=CHANNEL)
    stored = await wait_state(bot, run.id, RunState.WAITING_APPROVAL)
    request_id = await until(lambda: _approval_of(bot, run.id), what="the request id on record")
    key = request_key(request_id)
    raw = (await rds.hget(key, "request")).decode()
    await rds.hset(key, "request", raw[:-40])  # truncated
    await rds.rpush(f"{key}:notify", "poke")
    done = await wait_state(bot, run.id, RunState.FAILED)
    assert calls["wipe"] == 0 and "no longer on record" in done.error and stored.state is RunState.WAITING_APPROVAL
    [note] = await bot.runner.quarantined(cluster="prod")
    assert note.kind == "approval" and note.record_id == request_id
    events = [e["event"] for e in await bot.runner.audit.entries(cluster="-")]
    assert "record.quarantined" in events  # a request that cannot be read names no cluster
    answer = await bot.runner.decide_approval(request_id=request_id, digest="0" * 64, approve=True, by=BOB)
    assert not answer.accepted and "no such approval request" in answer.message


async def _approval_of(bot, run_id: str) -> str:  # type: ignore[no-untyped-def]
    run = await bot.runner.store.load(run_id)
    return run.step("wipe").approval if run is not None else ""


def test_records_render_even_with_odd_text() -> None:
    from bot.store import Quarantined

    note = Quarantined(kind="run", record_id="ab*cd", key="etcdbot:run:ab*cd", moved_to="", reason="`<!channel>`",
                       cluster="", at=0.0)
    text = json.dumps([b.to_dict() for b in render_runs(cluster="prod", runs=[], quarantined=[note])])
    assert "<!channel>" not in text and "gone" in text
