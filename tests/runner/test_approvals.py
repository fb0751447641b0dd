"""The two-person rule: a destructive step's run() is reached only with an approval recorded in
Redis for that run, that step and those parameters, given by someone else from @etcd-approvers
(bob and carol in the lab workspace)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from bot.approvals import DecideAnswer, Decision, Outcome, approval_on_record, parameters_hash
from bot.locks import lock_holder
from bot.procedure import Step, StepId, StepKind
from bot.store import Run, RunState
from tests.runner.conftest import (
    ALICE,
    BOB,
    CHANNEL,
    DAVE,
    Calls,
    action_ids,
    blocks_text,
    procedure,
    step,
    until,
    wait_state,
)


def destructive_procedure(calls: Calls) -> object:
    return procedure(
        "restore",
        step("check", calls=calls),
        step("wipe", kind=StepKind.DESTRUCTIVE, calls=calls),
        step("verify", calls=calls),
    )


def approval_button(workspace, run_id: str) -> dict:  # type: ignore[no-untyped-def]
    """The value of the Approve button posted for this run (what a press would carry)."""
    for m in workspace.recorder.messages.values():
        if "approval_approve" in action_ids(m.blocks):
            [button] = [e for b in m.blocks if b["type"] == "actions" for e in b["elements"] if e["action_id"] == "approval_approve"]
            value = json.loads(button["value"])
            if value["run"] == run_id:
                return value
    return {}


async def start_and_wait_for_approval(make_bot, workspace, calls: Calls, **bot_args):  # type: ignore[no-untyped-def]
    proc = make_bot.add(destructive_procedure(calls))
    bot = await make_bot(instance_id="one", **bot_args)
    run = await bot.runner.start(proc, cluster="prod", parameters={"backup": "b-1"}, requester=ALICE, channel=CHANNEL)
    assert isinstance(run, Run)
    await wait_state(bot, run.id, RunState.WAITING_APPROVAL)
    value = await until(lambda: approval_button(workspace, run.id), what="the approval request")
    return bot, run, value


async def test_approval_by_requester_or_non_approver_is_refused_then_bob_approves(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    bot, run, value = await start_and_wait_for_approval(make_bot, workspace, calls)
    assert value == {"run": run.id, "step": "wipe", "hash": parameters_hash({"backup": "b-1"})}
    decide: Callable[..., Awaitable[DecideAnswer]] = bot.runner.decide_approval

    by_requester = await decide(run_id=run.id, step_id="wipe", params_hash=value["hash"], approve=True, by=ALICE)
    assert not by_requester.accepted and "cannot approve" in by_requester.message
    by_outsider = await decide(run_id=run.id, step_id="wipe", params_hash=value["hash"], approve=True, by=DAVE)
    assert not by_outsider.accepted and "@etcd-approvers" in by_outsider.message
    other_params = await decide(run_id=run.id, step_id="wipe", params_hash=parameters_hash({"backup": "b-2"}), approve=True, by=BOB)
    assert not other_params.accepted
    assert await approval_on_record(rds, run_id=run.id, step_id="wipe", params_hash=value["hash"]) is None
    assert calls["wipe"] == 0 and (await bot.runner.store.load(run.id)).state is RunState.WAITING_APPROVAL

    approved = await decide(run_id=run.id, step_id="wipe", params_hash=value["hash"], approve=True, by=BOB)
    assert approved.accepted
    done = await bot.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.SUCCEEDED
    assert (calls["check"], calls["wipe"], calls["verify"]) == (1, 1, 1)
    record = await approval_on_record(rds, run_id=run.id, step_id="wipe", params_hash=value["hash"])
    assert record is not None and record.outcome is Outcome.APPROVED and record.by == BOB
    late = await decide(run_id=run.id, step_id="wipe", params_hash=value["hash"], approve=False, by=BOB)
    assert not late.accepted and "Already approved" in late.message
    await bot.sender.flush(channel=CHANNEL, ts=run.message_ts)
    request_message = next(m for m in workspace.recorder.messages.values() if "Approval" in m.text)
    await until(lambda: "Approved" in blocks_text(workspace.recorder.messages[request_message.key].blocks), what="decision shown")
    events = [(e["event"], e.get("outcome", "")) for e in await bot.runner.audit.entries(cluster="prod")]
    assert ("approval.requested", "") in events and ("approval.decided", "approved") in events


async def test_rejection_stops_the_run_before_the_step(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    bot, run, value = await start_and_wait_for_approval(make_bot, workspace, calls)
    answer = await bot.runner.decide_approval(run_id=run.id, step_id="wipe", params_hash=value["hash"], approve=False, by=BOB)
    assert answer.accepted
    done = await bot.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.ABORTED and done.ended_by == BOB
    assert calls["wipe"] == 0 and calls["verify"] == 0
    assert "Nothing destructive was done" in done.next_action
    assert await lock_holder(rds, cluster="prod") is None


async def test_expiry_stops_the_run_safely(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    bot, run, value = await start_and_wait_for_approval(make_bot, workspace, calls, expiry=0.5)
    done = await bot.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.FAILED
    assert "no approval" in done.error and "Nothing destructive was done" in done.next_action
    assert calls["wipe"] == 0
    late = await bot.runner.decide_approval(run_id=run.id, step_id="wipe", params_hash=value["hash"], approve=True, by=BOB)
    assert not late.accepted
    record = await approval_on_record(rds, run_id=run.id, step_id="wipe", params_hash=value["hash"])
    assert record is not None and record.outcome is Outcome.EXPIRED
    assert await lock_holder(rds, cluster="prod") is None


async def test_abort_while_waiting_for_approval(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    bot, run, value = await start_and_wait_for_approval(make_bot, workspace, calls)
    answer = await bot.runner.abort(run.id, by=ALICE)
    assert answer.ok
    done = await bot.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.ABORTED and calls["wipe"] == 0
    late = await bot.runner.decide_approval(run_id=run.id, step_id="wipe", params_hash=value["hash"], approve=True, by=BOB)
    assert not late.accepted and "withdrawn" in late.message


class LyingApprovals:
    """Says 'approved' without recording anything: the runner must not believe it."""

    async def request(self, *, run: Run, step: Step) -> Decision:
        return Decision(
            run_id=run.id, step_id=step.id, params_hash=parameters_hash(run.parameters),
            outcome=Outcome.APPROVED, by=BOB, at=0.0,
        )

    async def withdraw(self, *, run: Run, step_id: StepId, by: str) -> None:
        return None

    async def decide(self, *, run_id: str, step_id: str, params_hash: str, approve: bool, by: str) -> DecideAnswer:
        return DecideAnswer(accepted=False, message="no")


async def test_no_destructive_run_without_a_record_in_redis(make_bot, workspace, rds) -> None:  # type: ignore[no-untyped-def]
    calls = Calls()
    proc = make_bot.add(destructive_procedure(calls))
    bot = await make_bot(instance_id="one", approvals=LyingApprovals())
    run = await bot.runner.start(proc, cluster="prod", parameters={"backup": "b-1"}, requester=ALICE, channel=CHANNEL)
    done = await bot.runner.wait(run.id, timeout=10)
    assert done is not None and done.state is RunState.FAILED
    assert "no approval on record" in done.error and calls["wipe"] == 0 and calls["verify"] == 0

    # A record for other parameters, or one by the requester, does not count either.
    for params_hash, by in ((parameters_hash({"backup": "b-2"}), BOB), (parameters_hash({"backup": "b-1"}), ALICE)):
        run = await bot.runner.start(proc, cluster="prod", parameters={"backup": "b-1"}, requester=ALICE, channel=CHANNEL)
        forged = Decision(run_id=run.id, step_id=StepId("wipe"), params_hash=params_hash, outcome=Outcome.APPROVED, by=by, at=0.0)
        await rds.set(f"etcdbot:approval:{run.id}:wipe:{params_hash}", json.dumps(forged.for_storage()))
        done = await bot.runner.wait(run.id, timeout=10)
        assert done is not None and done.state is RunState.FAILED and calls["wipe"] == 0
