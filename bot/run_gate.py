"""The approval gate in front of a destructive step, or of the consecutive destructive steps of
one approval group: their plan computed from the cluster as it is now, an approval asked in the
run's thread, and the run waiting for the decision (`_gate`); then, right before the step's
`run()`, the last word (`_check`): the plan computed again, and the approval records read from
Redis and checked against it (signed, for this run and this plan, by enough approvers other than
the requester, not expired). A plan that sends nothing asks nobody (audited as
approval.not_needed), and the last check asks a person if it sends something by then.

A mixin of `Runner` (bot/runner.py): the annotations at the top of `ApprovalGate` name what it
uses of the Runner. Not here: who may approve, the requests and their records (bot/approvals.py).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any

import redis.asyncio as aioredis

from bot import metrics
from bot.approvals import (
    ApprovalPolicy,
    ApprovalRecords,
    Approvals,
    GrantCheck,
    Outcome,
    StepPlan,
    WaitAnswer,
    check_grant,
    plan_for,
)
from bot.audit import Audit
from bot.locks import LockLost
from bot.procedure import Procedure, Step, StepContext, StepId, StepKind, StepResult, acts, plan_of
from bot.run_shared import _Grant, _Stop
from bot.slacktext import escape
from bot.store import Run, RunState, RunStore, StepState


class ApprovalGate:
    # The Runner's, used here.
    audit: Audit
    approvals: Approvals
    approval_policy: ApprovalPolicy
    records: ApprovalRecords
    store: RunStore
    _context: Callable[[Run, dict[StepId, StepResult]], StepContext]
    _commit: Callable[[Run, Run], Awaitable[Run]]
    _guarded: Callable[[Run, Coroutine[Any, Any, WaitAnswer]], Awaitable[WaitAnswer]]

    def _group(self, procedure: Procedure, index: int) -> list[Step]:
        """The destructive step at `index` and the consecutive destructive steps of its approval group."""
        first = procedure.steps[index]
        group = [first]
        if first.approval_group:
            for step in procedure.steps[index + 1:]:
                if step.kind is not StepKind.DESTRUCTIVE or step.approval_group != first.approval_group:
                    break
                group.append(step)
        return group

    async def _gate(
        self, run: Run, procedure: Procedure, index: int, results: dict[StepId, StepResult], *, note: str
    ) -> tuple[Run, _Grant | None, _Stop | None]:
        """Computes the plan of the step (or its group), asks for approval in the run's thread and
        waits for the decision. Only an approval lets the run go on."""
        group = self._group(procedure, index)
        step = group[0]
        safe = f"Nothing destructive was done: the run stopped before *{step.title}*."
        ctx = self._context(run, results)
        try:
            plans = [(s.id, s.title, await plan_of(s, ctx)) for s in group]
        except Exception as exc:
            return run, None, _Stop(
                RunState.FAILED, error=f"could not work out what *{step.title}* would do: {type(exc).__name__}: {exc}",
                next_action=f"{safe} Check `/etcd-status {run.cluster}` and start again.")
        if not any(acts(commands) for _, _, commands in plans):
            await self.audit.record(
                cluster=run.cluster, event="approval.not_needed", actor="", run_id=run.id, step=step.id,
                steps=[s.id for s in group], plan=[[c.target, c.command] for _, _, cs in plans for c in cs],
            )
            return run, _Grant(request_id="", step_ids=frozenset(s.id for s in group), nothing_to_approve=True), None
        plan = plan_for(run, plans)
        now = time.time()
        waiting = replace(run.step(step.id), state=StepState.WAITING_APPROVAL, note="waiting for approval (see the thread)")
        run = await self._commit(run, run.with_state(RunState.WAITING_APPROVAL, now=now).with_step(waiting, now=now))
        await self.audit.record(
            cluster=run.cluster, event="run.waiting_approval", actor=run.requester, run_id=run.id,
            state=run.state.value, step=step.id, steps=[s.id for s in group],
        )
        request = await self.approvals.ask(run=run, plan=plan, note=note)
        asked = replace(run.step(step.id), approval=request.id)
        run = await self._commit(run, run.with_step(asked, now=time.time()))
        abort = await self.store.abort_requested(run.id)  # asked before the request was on record
        if abort is not None:
            await self.approvals.withdraw(run=run, request_id=request.id, by=abort.by)
        try:
            answer = await self._guarded(run, self.approvals.wait(run=run, request=request))
        except LockLost:
            try:  # nobody waits for it any more: a late press must not look as if it did something
                await self.approvals.withdraw(run=run, request_id=request.id, by="")
            except (OSError, aioredis.RedisError):
                pass
            raise
        metrics.approval_decided(answer.outcome.value)
        abort = await self.store.abort_requested(run.id)
        if abort is not None:
            return run, None, _Stop(RunState.ABORTED, next_action=f"Aborted before *{step.title}*.", ended_by=abort.by)
        if answer.outcome is Outcome.REJECTED:
            return run, None, _Stop(RunState.ABORTED, error=f"<@{answer.by}> rejected *{step.title}*.",
                                    next_action=safe, ended_by=answer.by)
        if answer.outcome is Outcome.EXPIRED:
            why = f" ({answer.reason})" if answer.reason else ""
            return run, None, _Stop(
                RunState.FAILED, error=f"no approval for *{step.title}* within the approval window{why}",
                next_action=f"{safe} Start the procedure again when an approver is available.")
        if answer.outcome is not Outcome.APPROVED:
            return run, None, _Stop(RunState.ABORTED, error=f"approval {answer.outcome.value}", next_action=safe,
                                    ended_by=answer.by)
        now = time.time()
        approved = replace(run.step(step.id), state=StepState.PENDING, note="", approved_by=",".join(answer.approvers))
        run = await self._commit(run, run.with_state(RunState.RUNNING, now=now).with_step(approved, now=now))
        return run, _Grant(request_id=request.id, step_ids=frozenset(s.id for s in group)), None

    async def _check(self, run: Run, step: Step, grant: _Grant | None, ctx: StepContext) -> tuple[GrantCheck, StepPlan]:
        """The last word before a destructive call: the plan computed again now, and the approval
        records themselves, read from Redis and checked against it."""
        plan_now = StepPlan(step_id=step.id, title=step.title, commands=tuple(await plan_of(step, ctx)))
        if grant is not None and grant.nothing_to_approve:
            if acts(plan_now.commands):
                sends = "; ".join(f"`{escape(c.target)}`: `{escape(c.command)}`" for c in plan_now.commands)
                return GrantCheck(False, "plan_changed", f"it had nothing to do when the run reached it, and now "
                                                         f"sends: {sends}"), plan_now
            return GrantCheck(True, "ok"), plan_now
        state = await self.records.state(grant.request_id) if grant is not None else None
        check = check_grant(state, run=run, step_id=step.id, plan_now=plan_now,
                            required=self.approval_policy.required_for(run.procedure), now=time.time())
        return check, plan_now
