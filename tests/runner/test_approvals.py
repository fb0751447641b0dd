"""The two-person rule, bound to what will happen: a destructive step's run() is reached only with
an approval in Redis for that run and that plan (computed at the gate and again just before the
step), signed with the bot's key, by enough approvers other than the requester, still valid when
the step starts. bob and carol are @etcd-approvers in the lab workspace; alice asks; dave may not."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from bot.approvals import (
    ApprovalPlan,
    ApprovalRequest,
    ApproverSpec,
    DecideAnswer,
    Decision,
    Outcome,
    SlackApprovers,
    WaitAnswer,
    request_key,
    sign,
)
from bot.locks import lock_holder
from bot.procedure import PlannedCommand, StepContext, StepKind, StepResult, no_action
from bot.store import Run, RunState, quarantined
from tests.runner.conftest import (
    ALICE,
    BOB,
    CAROL,
    CHANNEL,
    DAVE,
    Calls,
    action_ids,
    blocks_text,
    crash,
    procedure,
    step,
    until,
    wait_state,
)


def wipe_plan(ctx: StepContext) -> list[PlannedCommand]:
    member = ctx.parameters.get("member", "8e9e05c52164694d")
    return [PlannedCommand(target="exec etcd-ip-10-0-131-183", command=f"etcdctl member remove {member}")]


def destructive_procedure(calls: Calls, **wipe: Any) -> Any:
    return procedure(
        "restore",
        step("check", calls=calls),
        step("wipe", kind=StepKind.DESTRUCTIVE, calls=calls, **{"plan": wipe_plan, "safe_to_repeat": False, **wipe}),
        step("verify", calls=calls),
    )


def requests(workspace, run: Run) -> list[Any]:  # type: ignore[no-untyped-def]
    """The approval requests posted for this run (oldest first), as messages."""
    found = [m for m in workspace.recorder.messages.values()
             if "Approval needed" in blocks_text(m.blocks) and f"run `{run.id}`" in blocks_text(m.blocks)]
    return sorted(found, key=lambda m: float(m.ts))


def button(message: Any, action_id: str = "approval_approve") -> dict:
    [found] = [e for b in message.blocks if b["type"] == "actions" for e in b["elements"] if e["action_id"] == action_id]
    return found


def press_value(message: Any) -> dict:
    return json.loads(button(message)["value"])


async def next_request(workspace, run: Run, *, count: int = 1) -> Any:  # type: ignore[no-untyped-def]
    """Waits for the `count`-th request of this run with buttons, returns it."""
    def check() -> Any:
        found = requests(workspace, run)
        if len(found) < count or "approval_approve" not in action_ids(found[count - 1].blocks):
            return None
        return found[count - 1]
    return await until(check, what=f"approval request #{count} of run {run.id}")


async def start_and_wait_for_approval(make_bot, workspace, calls: Calls, parameters=None, **bot_args):  # type: ignore[no-untyped-def]
    proc = make_bot.add(destructive_procedure(calls))
    bot = await make_bot(instance_id="one", **bot_args)
    run = await bot.runner.start(proc, cluster="prod", parameters=parameters or {"backup": "b-1"}, requester=ALICE,
                                 channel=CHANNEL)
    assert isinstance(run, Run)
    await wait_state(bot, run.id, RunState.WAITING_APPROVAL)
    message = await next_request(workspace, run)
    return bot, run, message


async def press(bot, message: Any, *, by: str, approve: bool = True) -> DecideAnswer:  # type: ignore[no-untyped-def]
    value = press_value(message)
    return await bot.runner.decide_approval(request_id=value["req"], digest=value["digest"], approve=approve, by=by)


async def test_the_request_shows_what_will_happen_and_only_another_approver_can_approve(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    bot, run, message = await start_and_wait_for_approval(make_bot, workspace, calls)
    assert message.thread_ts == run.message_ts  # threaded under the run's message
    text = blocks_text(message.blocks)
    for shown in ("prod", "exec etcd-ip-10-0-131-183", "etcdctl member remove 8e9e05c52164694d", "backup=`b-1`",
                  f"<@{ALICE}>", "@etcd-approvers", "expires", "Title of wipe"):
        assert shown in text, shown
    approve = button(message)
    assert approve["confirm"]["confirm"]["text"] == "Approve"  # Approve opens a confirm dialog first
    assert "etcdctl" not in json.dumps(press_value(message))  # the button names the request, not the plan

    by_requester = await press(bot, message, by=ALICE)
    assert not by_requester.accepted and "cannot approve" in by_requester.message
    by_outsider = await press(bot, message, by=DAVE)
    assert not by_outsider.accepted and "@etcd-approvers" in by_outsider.message
    other_plan = await bot.runner.decide_approval(request_id=press_value(message)["req"], digest="0" * 64,
                                                  approve=True, by=BOB)
    assert not other_plan.accepted and "another plan" in other_plan.message
    assert calls["wipe"] == 0 and (await bot.runner.store.load(run.id)).state is RunState.WAITING_APPROVAL

    approved = await press(bot, message, by=BOB)
    assert approved.accepted, approved.message
    done = await bot.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.SUCCEEDED
    assert (calls["check"], calls["wipe"], calls["verify"]) == (1, 1, 1)
    assert done.step("wipe").approved_by == BOB
    assert [(c.target, c.command) for c in done.step("wipe").planned] == [
        ("exec etcd-ip-10-0-131-183", "etcdctl member remove 8e9e05c52164694d")]
    late = await press(bot, message, by=CAROL, approve=False)
    assert not late.accepted and "Already approved" in late.message
    await until(lambda: "Approved" in blocks_text(workspace.recorder.messages[message.key].blocks), what="decision shown")
    events = [(e["event"], e.get("outcome", "")) for e in await bot.runner.audit.entries(cluster="prod")]
    assert ("approval.requested", "") in events and ("approval.decided", "approved") in events
    assert ("step.fenced", "") in events


async def test_rejection_stops_the_run_before_the_step(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    bot, run, message = await start_and_wait_for_approval(make_bot, workspace, calls)
    answer = await press(bot, message, by=BOB, approve=False)
    assert answer.accepted
    done = await bot.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.ABORTED and done.ended_by == BOB
    assert calls["wipe"] == 0 and calls["verify"] == 0
    assert "Nothing destructive was done" in done.next_action
    assert await lock_holder(rds, cluster="prod") is None


async def test_no_approval_in_time_stops_the_run_safely(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    bot, run, message = await start_and_wait_for_approval(make_bot, workspace, calls, expiry=0.5)
    done = await bot.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.FAILED
    assert "no approval" in done.error and "Nothing destructive was done" in done.next_action
    assert calls["wipe"] == 0
    late = await press(bot, message, by=BOB)
    assert not late.accepted and "expired" in late.message
    assert await lock_holder(rds, cluster="prod") is None


async def test_abort_while_waiting_withdraws_the_request(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    bot, run, message = await start_and_wait_for_approval(make_bot, workspace, calls)
    answer = await bot.runner.abort(run.id, by=ALICE)
    assert answer.ok
    done = await bot.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.ABORTED and calls["wipe"] == 0
    late = await press(bot, message, by=BOB)
    assert not late.accepted and "withdrawn" in late.message


class LyingApprovals:
    """Says 'approved' without anything on record: the runner must not believe it."""

    async def ask(self, *, run: Run, plan: ApprovalPlan, note: str = "") -> ApprovalRequest:
        return ApprovalRequest(id="made-up", plan=plan, required=1, requested_at=0.0, expires_at=9e9, approvers="")

    async def wait(self, *, run: Run, request: ApprovalRequest) -> WaitAnswer:
        return WaitAnswer(request_id=request.id, outcome=Outcome.APPROVED, approvers=(BOB,))

    async def withdraw(self, *, run: Run, request_id: str, by: str) -> None:
        return None

    async def decide(self, *, request_id: str, digest: str, approve: bool, by: str) -> DecideAnswer:
        return DecideAnswer(accepted=False, message="no")


async def test_no_approval_on_record_nothing_runs(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    proc = make_bot.add(destructive_procedure(calls))
    bot = await make_bot(instance_id="one", approvals=LyingApprovals())
    run = await bot.runner.start(proc, cluster="prod", parameters={"backup": "b-1"}, requester=ALICE, channel=CHANNEL)
    done = await bot.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.FAILED
    assert "was not run" in done.error and "no approval on record" in done.error
    assert calls["wipe"] == 0 and calls["verify"] == 0


async def test_a_decision_written_into_redis_without_the_hmac_is_refused(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    bot, run, message = await start_and_wait_for_approval(make_bot, workspace, calls)
    value = press_value(message)
    key = request_key(value["req"])
    forged = Decision(request_id=value["req"], run_id=run.id, digest=value["digest"], outcome=Outcome.APPROVED,
                      by=BOB, at=0.0)
    # Plain JSON as the old records were, then one signed with another key: neither counts.
    await rds.hset(key, f"d:approve:{BOB}", json.dumps(forged.for_storage()))
    await rds.rpush(f"{key}:notify", "poke")
    await until(lambda: quarantined(rds, cluster="prod"), what="the forged decision moved aside")
    await rds.hset(key, f"d:approve:{CAROL}", sign(b"someone else's key", {**forged.for_storage(), "by": CAROL}))
    await rds.rpush(f"{key}:notify", "poke")
    notes = await until(lambda: _at_least(quarantined(rds, cluster="prod"), 2), what="the second forged decision moved aside")
    assert {n.kind for n in notes} == {"decision"} and all("HMAC" in n.reason or "signed" in n.reason for n in notes)
    assert calls["wipe"] == 0 and (await bot.runner.store.load(run.id)).state is RunState.WAITING_APPROVAL
    refused = [e for e in await bot.runner.audit.entries(cluster="prod") if e["event"] == "record.quarantined"]
    assert len(refused) == 2

    approved = await press(bot, message, by=BOB)  # the real press still counts: the forgery blocked nothing
    assert approved.accepted, approved.message
    done = await bot.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.SUCCEEDED and calls["wipe"] == 1


async def _noted(bot, run_id: str, note: str) -> bool:  # type: ignore[no-untyped-def]
    found = await bot.runner.store.load(run_id)
    return found is not None and note in found.step("wipe").note


async def _at_least(notes: Any, count: int) -> Any:
    found = await notes
    return found if len(found) >= count else None


async def test_an_approval_of_another_run_is_refused(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    proc = make_bot.add(destructive_procedure(calls))
    bot = await make_bot(instance_id="one")
    first = await bot.runner.start(proc, cluster="prod", parameters={"backup": "b-1"}, requester=ALICE, channel=CHANNEL)
    second = await bot.runner.start(proc, cluster="test", parameters={"backup": "b-1"}, requester=ALICE, channel=CHANNEL)
    assert isinstance(first, Run) and isinstance(second, Run)
    first_request = await next_request(workspace, first)
    second_request = await next_request(workspace, second)
    assert (await press(bot, first_request, by=BOB)).accepted
    # bob's signed decision on the first run's request, copied onto the second's: it does not count there.
    [copied] = [v for k, v in (await rds.hgetall(request_key(press_value(first_request)["req"]))).items()
                if k.startswith(b"d:approve:")]
    await rds.hset(request_key(press_value(second_request)["req"]), f"d:approve:{BOB}", copied)
    await rds.rpush(request_key(press_value(second_request)["req"]) + ":notify", "poke")
    await until(lambda: quarantined(rds, cluster="test"), what="the copied decision refused")
    await wait_state(bot, first.id, RunState.SUCCEEDED)
    assert (await bot.runner.store.load(second.id)).state is RunState.WAITING_APPROVAL
    assert calls["wipe"] == 1  # the first run's only
    await bot.runner.abort(second.id, by=ALICE)


async def test_two_approvers_pressing_together_make_exactly_one_decision(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    bot, run, message = await start_and_wait_for_approval(make_bot, workspace, calls)
    answers = await asyncio.gather(press(bot, message, by=BOB), press(bot, message, by=CAROL))
    assert sorted(a.accepted for a in answers) == [False, True]
    [loser] = [a for a in answers if not a.accepted]
    assert "Already approved" in loser.message
    fields = [k for k in await rds.hkeys(request_key(press_value(message)["req"])) if k.startswith(b"d:")]
    assert len(fields) == 1
    done = await bot.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.SUCCEEDED and calls["wipe"] == 1


async def test_with_two_approvals_required_one_is_not_enough(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    bot, run, message = await start_and_wait_for_approval(make_bot, workspace, calls, required={"restore": 2})
    assert "2 approvals" in blocks_text(message.blocks)
    first = await press(bot, message, by=BOB)
    assert first.accepted and "1 of 2" in first.message
    again = await press(bot, message, by=BOB)
    assert not again.accepted and "already approved" in again.message
    await until(lambda: "(1 of 2)" in blocks_text(workspace.recorder.messages[message.key].blocks), what="1 of 2 shown")
    assert calls["wipe"] == 0 and (await bot.runner.store.load(run.id)).state is RunState.WAITING_APPROVAL
    second = await press(bot, message, by=CAROL)
    assert second.accepted
    done = await bot.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.SUCCEEDED and calls["wipe"] == 1
    assert sorted(done.step("wipe").approved_by.split(",")) == sorted([BOB, CAROL])


async def test_a_plan_that_changes_between_gate_and_start_asks_a_new_approval(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    member = {"id": "8e9e05c52164694d"}
    ran_with: list[str] = []

    def plan(ctx: StepContext) -> list[PlannedCommand]:
        return [PlannedCommand(target="exec etcd-ip-10-0-131-183", command=f"etcdctl member remove {member['id']}")]

    async def wipe(ctx: StepContext) -> StepResult:
        ran_with.append(member["id"])
        return StepResult(summary="removed")

    proc = make_bot.add(procedure("restore", step("check", calls=calls),
                                  step("wipe", kind=StepKind.DESTRUCTIVE, calls=calls, body=wipe, plan=plan)))
    bot = await make_bot(instance_id="one")
    run = await bot.runner.start(proc, cluster="prod", parameters={}, requester=ALICE, channel=CHANNEL)
    first = await next_request(workspace, run)
    member["id"] = "2f1a7d3e6c5b4a90"  # the member was removed and re-added meanwhile: a new ID
    assert (await press(bot, first, by=BOB)).accepted
    second = await next_request(workspace, run, count=2)
    text = blocks_text(second.blocks)
    assert "plan changed" in text and "2f1a7d3e6c5b4a90" in text and "8e9e05c52164694d" in text
    assert calls["wipe"] == 0
    assert not (await press(bot, first, by=CAROL)).accepted  # the old request is closed
    assert (await press(bot, second, by=CAROL)).accepted
    done = await bot.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.SUCCEEDED
    assert ran_with == ["2f1a7d3e6c5b4a90"]
    assert [c.command for c in done.step("wipe").planned] == ["etcdctl member remove 2f1a7d3e6c5b4a90"]


async def test_a_destructive_step_with_nothing_to_do_asks_nobody(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    """No valid CSR pending: the approval step's plan sends nothing, so nobody is asked to approve
    "nothing"; the step runs (and does nothing) and the run says so in its audit."""
    calls = Calls()
    proc = make_bot.add(procedure("approve-csrs", step("review", calls=calls),
                                  step("approve", kind=StepKind.DESTRUCTIVE, calls=calls,
                                       plan=lambda _ctx: [no_action("nothing to approve: no valid CSR is pending now")])))
    bot = await make_bot(instance_id="one")
    run = await bot.runner.start(proc, cluster="prod", parameters={}, requester=ALICE, channel=CHANNEL)
    done = await bot.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.SUCCEEDED, done
    assert calls["approve"] == 1 and requests(workspace, run) == []
    assert done.step("approve").approved_by == "" and done.step("approve").approval == ""
    [skipped] = [e for e in await bot.runner.audit.entries(cluster="prod") if e["event"] == "approval.not_needed"]
    assert skipped["step"] == "approve" and "nothing to approve" in json.dumps(skipped["plan"])


async def test_a_step_that_had_nothing_to_do_and_now_acts_asks_first(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    """A valid CSR appears between the gate (nothing to approve) and the step: the runner's last
    check sees the plan act now, and asks a person before anything is approved."""
    calls = Calls()
    planned = {"n": 0}

    def plan(_ctx: StepContext) -> list[PlannedCommand]:
        planned["n"] += 1
        if planned["n"] == 1:
            return [no_action("nothing to approve: no valid CSR is pending now")]
        return [PlannedCommand("api", "oc adm certificate approve csr-8vx2k  # client CSR of ip-10-0-131-183")]

    proc = make_bot.add(procedure("approve-csrs", step("review", calls=calls),
                                  step("approve", kind=StepKind.DESTRUCTIVE, calls=calls, plan=plan)))
    bot = await make_bot(instance_id="one")
    run = await bot.runner.start(proc, cluster="prod", parameters={}, requester=ALICE, channel=CHANNEL)
    request = await next_request(workspace, run)
    text = blocks_text(request.blocks)
    assert "nothing to do when the run reached it" in text and "csr-8vx2k" in text, text
    assert calls["approve"] == 0
    assert (await press(bot, request, by=BOB)).accepted
    done = await bot.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.SUCCEEDED
    assert calls["approve"] == 1 and done.step("approve").approved_by == BOB


async def test_an_approval_that_expires_before_its_step_starts_is_asked_again(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    """Two destructive steps under one approval; the first outlasts the approval's validity, so
    the second, at its start, needs a new approval."""
    calls = Calls()
    proceed = asyncio.Event()

    async def slow(ctx: StepContext) -> StepResult:
        await proceed.wait()  # the step's own work outlasts the approval
        return StepResult(summary="control plane stopped")

    proc = make_bot.add(procedure(
        "restore",
        step("stop", kind=StepKind.DESTRUCTIVE, calls=calls, body=slow, approval_group="restore", timeout=60),
        step("replace", kind=StepKind.DESTRUCTIVE, calls=calls, approval_group="restore"),
    ))
    bot = await make_bot(instance_id="one", expiry=5.0)
    run = await bot.runner.start(proc, cluster="prod", parameters={}, requester=ALICE, channel=CHANNEL)
    first = await next_request(workspace, run)
    text = blocks_text(first.blocks)
    assert "Title of stop" in text and "Title of replace" in text  # one approval lists the whole group
    assert (await press(bot, first, by=BOB)).accepted
    await until(lambda: calls["stop"] == 1, what="the first step to start under the approval")
    state = await bot.runner.records.state(press_value(first)["req"])
    await until(lambda: time.time() > state.request.expires_at, timeout=10, what="the approval to expire")
    proceed.set()
    second = await next_request(workspace, run, count=2)
    assert calls["replace"] == 0
    assert "expired" in blocks_text(second.blocks) and "Title of replace" in blocks_text(second.blocks)
    assert "Title of stop" not in blocks_text(second.blocks)  # done already: only what is left is asked
    assert (await press(bot, second, by=CAROL)).accepted
    done = await bot.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.SUCCEEDED and calls["replace"] == 1


async def test_crash_during_a_destructive_step_resume_asks_a_fresh_approval(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    from bot.run_types import RunnerPolicy

    calls = Calls()
    never = asyncio.Event()

    async def wipe(ctx: StepContext) -> StepResult:
        if calls["wipe"] == 1:
            await ctx.heartbeat("removed member 8e9e05c52164694d; waiting for the quorum")
            await never.wait()  # the bot dies during this
        return StepResult(summary="wiped")

    proc = make_bot.add(destructive_procedure(calls, body=wipe))
    policy = RunnerPolicy(lock_timeout=3.0, instance_ttl=0.5, heartbeat_every=0.0)
    first = await make_bot(instance_id="first", policy=policy)
    run = await first.runner.start(proc, cluster="prod", parameters={"backup": "b-1"}, requester=ALICE, channel=CHANNEL)
    assert (await press(first, await next_request(workspace, run), by=BOB)).accepted
    await until(lambda: calls["wipe"] == 1, what="the destructive step to start")
    await until(lambda: _noted(first, run.id, "waiting for the quorum"), what="its progress on record")
    await crash(first, run.id)

    second = await make_bot(instance_id="second", policy=policy)
    [found] = await until(second.runner.recover_interrupted, timeout=15, what="the run to be recovered")
    assert found.step("wipe").state.value == "interrupted" and found.confirm_rerun is None
    await second.sender.flush(channel=CHANNEL, ts=run.message_ts)
    shown = blocks_text(workspace.recorder.messages[(CHANNEL, run.message_ts)].blocks)
    assert "fresh approval" in shown and "etcdctl member remove" in shown
    assert await second.runner.recover_interrupted() == []

    answer = await second.runner.resume(run.id, by=ALICE)
    assert answer.ok and "fresh approval" in answer.message
    again = await next_request(workspace, run, count=2)
    text = blocks_text(again.blocks)
    assert "was running when the bot stopped" in text and "waiting for the quorum" in text
    refused = await press(second, again, by=ALICE)  # the requester alone cannot run it again
    assert not refused.accepted and "cannot approve" in refused.message
    assert calls["wipe"] == 1
    assert (await press(second, again, by=CAROL)).accepted
    done = await second.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.SUCCEEDED
    assert (calls["check"], calls["wipe"], calls["verify"]) == (1, 2, 1)


async def test_approvers_per_cluster_and_membership_read_fresh(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    bot, run, message = await start_and_wait_for_approval(
        make_bot, workspace, calls, approvers=ApproverSpec(usergroup=None, users=(DAVE,)))
    assert f"<@{DAVE}>" in blocks_text(message.blocks) and "@etcd-approvers" not in blocks_text(message.blocks)
    assert not (await press(bot, message, by=BOB)).accepted  # not an approver of this cluster
    assert (await press(bot, message, by=DAVE)).accepted
    await wait_state(bot, run.id, RunState.SUCCEEDED)

    def lookups() -> int:
        return sum(1 for e in workspace.recorder.since(0, kinds=["api_call"]) if e.get("method") == "usergroups.users.list")

    assert SlackApprovers(client=bot.client, spec_of=lambda _c: ApproverSpec(), cache_seconds=600)._cache_seconds == 10
    approvers = SlackApprovers(client=bot.client, spec_of=lambda _c: ApproverSpec(usergroup="etcd-approvers"),
                               cache_seconds=0.2)
    before = lookups()
    assert await approvers.is_approver(BOB, cluster="prod") and not await approvers.is_approver(DAVE, cluster="prod")
    assert lookups() == before + 1  # a burst shares one answer
    await asyncio.sleep(0.3)  # past the cache's age on purpose: the next press must ask Slack again
    assert await approvers.is_approver(CAROL, cluster="prod")
    assert lookups() == before + 2
