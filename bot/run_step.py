"""One step of a run, once the driving loop (bot/runner.py) reached it: its record marked running,
its heartbeats shown at once and written to Redis now and then (so that Resume after a crash can
say what was seen last), a timeout on each attempt, retries only for StepFailed(retryable=True)
and timeouts, and for a destructive step the plan, the approval and the fence checked again right
before every attempt (`_before_destructive`). A lock lost during an attempt cancels it at once
(`_LostDuring`). The loop is told how it went: go on, ask the approval again (`_AskAgain`), or
stop (`_Stop`).

A mixin of `Runner` (bot/runner.py): the annotations at the top of `StepRunner` name what it uses
of the Runner.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import redis.asyncio as aioredis

from bot import metrics
from bot.approvals import GrantCheck, StepPlan
from bot.audit import Audit
from bot.locks import LockLost
from bot.log import get_logger
from bot.procedure import Fence, RunId, Step, StepContext, StepFailed, StepId, StepKind, StepResult
from bot.progress import ThrottledSender, output_chunks
from bot.run_shared import _Grant, _Live, _Stale, _Stop
from bot.run_types import Heartbeat, RunnerPolicy
from bot.store import Run, RunState, RunStore, StepRecord, StepState

log = get_logger(__name__)


@dataclass(frozen=True)
class _AskAgain:
    """The approval no longer fits (plan changed, expired): ask a new one before the step."""

    reason: str


@dataclass
class _Stored:
    """The run as last written while a step runs (its heartbeats write it too)."""

    run: Run
    persisted: float = 0.0


class _NeedsApproval(Exception):
    def __init__(self, *, code: str, reason: str, ask_again: bool) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.ask_again = ask_again


class _LostDuring(LockLost):
    """LockLost, with the run record as it stands (the step marked interrupted)."""

    def __init__(self, *, run: Run, lost: LockLost) -> None:
        super().__init__(cluster=lost.cluster, run_id=lost.run_id, token=lost.token, holder=lost.holder)
        self.run = run


class StepRunner:
    # The Runner's, used here.
    audit: Audit
    policy: RunnerPolicy
    sender: ThrottledSender
    store: RunStore
    _live: dict[RunId, _Live]
    _commit: Callable[[Run, Run], Awaitable[Run]]
    _show: Callable[[Run], None]
    _context: Callable[[Run, dict[StepId, StepResult], Heartbeat], StepContext]
    _fence_of: Callable[[RunId], Fence]
    _guarded: Callable[..., Awaitable[Any]]
    _check: Callable[[Run, Step, _Grant | None, StepContext], Awaitable[tuple[GrantCheck, StepPlan]]]

    async def _run_step(
        self, run: Run, step: Step, results: dict[StepId, StepResult], grant: _Grant | None
    ) -> tuple[Run, _Stop | _AskAgain | None]:
        now = time.time()
        record = replace(
            run.step(step.id), state=StepState.RUNNING, started_at=now, finished_at=None, attempts=0, error="",
            next_action="", note="",
        )
        run = await self._commit(run, run.with_step(record, now=now))
        await self.audit.record(
            cluster=run.cluster, event="step.started", actor=run.requester, run_id=run.id, step=step.id, kind=step.kind.value
        )
        holder = _Stored(run=run)

        async def heartbeat(text: str) -> None:
            # A long step says it is alive: shown at once, written to Redis now and then, so that
            # after a crash Resume can say what was seen last.
            current = holder.run
            noted = current.with_step(replace(current.step(step.id), note=text[:300]), now=time.time())
            self._show(noted)
            if time.monotonic() - holder.persisted >= self.policy.heartbeat_every:
                holder.persisted = time.monotonic()
                try:
                    holder.run = await self._commit(current, noted)
                except (OSError, aioredis.RedisError) as exc:  # a note is not worth failing the step for
                    log.warning("runner.heartbeat_not_recorded", run_id=run.id, error=str(exc))

        ctx = self._context(run, results, heartbeat)
        try:
            record = await self._attempts(run, step, ctx, record, grant, holder)
        except _NeedsApproval as exc:
            back = replace(record, state=StepState.PENDING, started_at=None, note=exc.reason[:300])
            run = await self._commit(holder.run, holder.run.with_step(back, now=time.time()))
            await self.audit.record(cluster=run.cluster, event="approval.invalid", actor="", run_id=run.id,
                                    step=step.id, code=exc.code, reason=exc.reason)
            if exc.ask_again:
                return run, _AskAgain(reason=f"Asked again: {exc.reason}")
            return run, _Stop(RunState.FAILED, error=f"*{step.title}* was not run: {exc.reason}",
                              next_action="Start the procedure again; another approver must approve the step.")
        except LockLost as exc:
            stopped = replace(holder.run.step(step.id), state=StepState.INTERRUPTED, finished_at=time.time(),
                              error="cancelled at once: this run lost the cluster's lock")  # keeps what it was to send
            raise _LostDuring(run=holder.run.with_step(stopped, now=time.time()), lost=exc) from None
        record = replace(record, finished_at=time.time())
        run = holder.run
        metrics.step_finished(procedure=run.procedure, step=step.id, outcome=record.state.value,
                              seconds=(record.finished_at or now) - now)
        run = await self._commit(run, run.with_step(record, now=record.finished_at or time.time()))
        await self.audit.record(
            cluster=run.cluster, event="step.finished", actor=run.requester, run_id=run.id, step=step.id,
            outcome=record.state.value, attempts=record.attempts, summary=record.summary, error=record.error,
        )
        if record.state is StepState.SUCCEEDED:
            results[step.id] = record.result()
            if record.output:
                self._post_output(run, record)
            return run, None
        if record.state is StepState.INTERRUPTED:  # StepFailed(hold=True): stop here, keep the lock
            return run, _Stop(RunState.INTERRUPTED, error=f"*{step.title}* failed: {record.error}",
                              next_action=record.next_action)
        return run, _Stop(RunState.FAILED, error=f"*{step.title}* failed: {record.error}", next_action=record.next_action)

    async def _before_destructive(
        self, run: Run, step: Step, ctx: StepContext, record: StepRecord, grant: _Grant | None, holder: _Stored
    ) -> StepRecord:
        """Plan again, check the approval records against it, check the fence, and write down what
        the step is about to send, in that order, right before its run()."""
        check, plan_now = await self._check(run, step, grant, ctx)
        if not check.ok:
            raise _NeedsApproval(code=check.code, reason=check.reason, ask_again=check.ask_again)
        await self._fence_of(run.id)()
        record = replace(record, planned=plan_now.commands, approved_by=",".join(check.approvers),
                         approval=grant.request_id if grant else "")
        holder.run = await self._commit(holder.run, holder.run.with_step(record, now=time.time()))
        live = self._live.get(run.id)
        await self.audit.record(
            cluster=run.cluster, event="step.fenced", actor=run.requester, run_id=run.id, step=step.id,
            request=record.approval, approvers=record.approved_by,
            fencing_token=live.lock.token if live is not None and live.lock is not None else None,
        )
        return record

    async def _attempts(
        self, run: Run, step: Step, ctx: StepContext, record: StepRecord, grant: _Grant | None, holder: _Stored
    ) -> StepRecord:
        """Timeout on each attempt; retries only for StepFailed(retryable=True) and timeouts. A
        destructive step is checked again (plan, approval, fence) before every attempt."""
        for attempt in range(1, step.retries + 2):
            record = replace(record, attempts=attempt)
            if step.kind is StepKind.DESTRUCTIVE:
                try:
                    record = await self._before_destructive(run, step, ctx, record, grant, holder)
                except (_NeedsApproval, LockLost, _Stale):
                    raise
                except Exception as exc:  # the plan could not be computed again: do not act
                    raise _NeedsApproval(code="no_plan", ask_again=False,
                                         reason=f"could not work out again what it would do ({type(exc).__name__}: {exc})") from None
            try:
                result = await self._guarded(run, step.run(ctx), timeout=step.timeout)
            except (LockLost, _Stale):
                raise
            except StepFailed as exc:
                error, next_action, retryable = exc.message, exc.next_action, exc.retryable
                if exc.hold:  # the cluster is half way: no retry on its own, a person decides
                    return replace(record, state=StepState.INTERRUPTED, error=error, next_action=next_action)
            except TimeoutError:
                error = f"timed out after {step.timeout:g} s"
                next_action = (
                    f"The step did not finish in time and may still be running on the cluster. "
                    f"Check with `/etcd-status {run.cluster}` before starting the procedure again."
                )
                retryable = True
            except Exception as exc:
                error, retryable = f"{type(exc).__name__}: {exc}", False
                next_action = f"Unexpected error. Check with `/etcd-status {run.cluster}` before starting again."
            else:
                return replace(
                    record, state=StepState.SUCCEEDED, summary=result.summary, output=result.output,
                    values=dict(result.values), note="",
                )
            if not retryable or attempt > step.retries or await self.store.abort_requested(run.id):
                return replace(record, state=StepState.FAILED, error=error, next_action=next_action)
            delay = min(self.policy.first_backoff * 2 ** (attempt - 1), self.policy.max_backoff)
            note = f"attempt {attempt} failed ({error}); retrying in {delay:g} s"
            self._show(run.with_step(replace(record, note=note), now=time.time()))
            await self._guarded(run, asyncio.sleep(delay))  # the retry policy's backoff, not a wait for luck
        raise AssertionError("unreachable")

    def _post_output(self, run: Run, record: StepRecord) -> None:
        live = self._live.get(run.id)
        if live is None or not run.message_ts:
            return
        for chunk in output_chunks(title=record.title, output=record.output):
            live.outputs.append(
                asyncio.create_task(self.sender.post(channel=run.channel, text=chunk, thread_ts=run.message_ts))
            )
