"""Runs a procedure: lock -> progress message -> steps (approval gate before destructive ones,
timeout and retries on each) -> audit -> unlock. Steps are plain functions; everything around
them is here, once, so no procedure can forget a lock, an approval or a timeout.

The run's record in Redis is written after every step change, so a bot that restarts finds its
interrupted runs (`recover_interrupted()`), takes their locks back and asks a person to Resume or
Abort. Resume re-runs the interrupted step only if the step says it is safe to repeat; otherwise
someone must press "Re-run step anyway".

The one rule that has no exception: `_require_approval()` reads the approval record from Redis
(run id, step id, parameter hash) right before a destructive step's `run()`, and nothing else
calls `run()`.

Not here: parsing Slack commands and authorising who may start what (handlers/), building the
step context's clients (the `ContextFactory` the app passes in).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import redis.asyncio as aioredis
from slack_sdk.models.blocks import Block

from bot import metrics
from bot.approvals import Approvals, DecideAnswer, Outcome, approval_on_record, parameters_hash
from bot.audit import Audit, RunSummary
from bot.locks import DEFAULT_TIMEOUT, ClusterLock, lock_holder
from bot.log import get_logger
from bot.procedure import (
    Admission,
    PlannedCommand,
    Procedure,
    RunId,
    Step,
    StepContext,
    StepFailed,
    StepId,
    StepKind,
    StepResult,
    admit,
    plan_of,
    preview_of,
)
from bot.progress import ThrottledSender, output_chunks, render_plan, render_run, run_text, slack_time, who
from bot.store import Run, RunState, RunStore, StepRecord, StepState
from bot.tasks import cancel_and_wait

log = get_logger(__name__)

Heartbeat = Callable[[str], Awaitable[None]]


class ContextFactory(Protocol):
    """Builds the StepContext of a run (the app gives it the cluster's clients)."""

    def __call__(self, *, run: Run, results: dict[StepId, StepResult], heartbeat: Heartbeat) -> StepContext: ...


# name, parameters -> the Procedure: how a restarted bot gets back the steps of a stored run.
ProcedureFactory = Callable[[str, Mapping[str, Any]], Procedure]


@dataclass(frozen=True)
class RunnerPolicy:
    lock_timeout: float = DEFAULT_TIMEOUT  # a dead bot's lock frees itself after this
    instance_ttl: float = 30.0  # a dead bot's runs count as interrupted after this
    first_backoff: float = 2.0  # before the first retry of a step; doubles each time
    max_backoff: float = 60.0
    flush_timeout: float = 120.0  # how long the end of a run waits for its final message


@dataclass(frozen=True)
class Busy:
    """The answer to a procedure asked for on a cluster another run holds."""

    cluster: str
    run_id: RunId | None
    procedure: str = ""
    requester: str = ""
    current_step: str = ""
    since: float | None = None

    def message(self) -> str:
        if self.run_id is None:
            return f"`{self.cluster}` was busy a moment ago and is free now: try again."
        if not self.procedure:
            return f"`{self.cluster}` is busy: run `{self.run_id}` holds its lock (it is just starting). Try again shortly."
        step = f" at step *{self.current_step}*" if self.current_step else ""
        since = f" since {slack_time(self.since)}" if self.since else ""
        return (
            f"`{self.cluster}` is busy: run `{self.run_id}` ({self.procedure}) started by {who(self.requester)} "
            f"is{step}{since}. Wait for it to finish, or stop it with `/etcd-abort {self.run_id}`."
        )


@dataclass(frozen=True)
class Answer:
    """What a person who asked to abort or resume is told."""

    ok: bool
    message: str
    run: Run | None = None


@dataclass(frozen=True)
class PlannedStep:
    number: int
    step_id: StepId
    title: str
    kind: StepKind
    commands: tuple[PlannedCommand, ...]


@dataclass(frozen=True)
class Plan:
    procedure: Procedure
    cluster: str
    parameters: Mapping[str, Any]
    steps: tuple[PlannedStep, ...]
    admission: Admission = Admission.ok()

    def blocks(self) -> list[Block]:
        rows = [(s.number, s.title, s.kind, s.commands) for s in self.steps]
        return render_plan(procedure=self.procedure, cluster=self.cluster, parameters=self.parameters, plan=rows)


@dataclass
class _Stop:
    state: RunState
    error: str = ""
    next_action: str = ""
    ended_by: str = ""


@dataclass
class _Live:
    """This instance's handle on a run it drives or holds."""

    lock: ClusterLock | None
    task: asyncio.Task[None] | None = None
    outputs: list[asyncio.Task[Any]] = field(default_factory=list)


async def _no_heartbeat(_text: str) -> None:
    return None


def new_run_id() -> RunId:
    return RunId(secrets.token_hex(4))


def default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Runner:
    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        sender: ThrottledSender,
        approvals: Approvals,
        context_factory: ContextFactory,
        procedures: ProcedureFactory,
        instance_id: str | None = None,
        policy: RunnerPolicy = RunnerPolicy(),
        prefix: str = "etcdbot",
    ) -> None:
        self.redis = redis
        self.sender = sender
        self.approvals = approvals
        self.store = RunStore(redis=redis, prefix=prefix)
        self.audit = Audit(redis=redis, prefix=prefix)
        self.instance_id = instance_id or default_instance_id()
        self.policy = policy
        self._context_factory = context_factory
        self._procedures = procedures
        self._prefix = prefix
        self._live: dict[RunId, _Live] = {}
        self._presence: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    async def open(self) -> None:
        """Announces this instance as alive (runs it owns are not someone else's to recover)."""
        if self._presence is None:
            await self._announce()
            self._presence = asyncio.create_task(self._keep_presence(), name=f"etcdbot-presence:{self.instance_id}")

    async def close(self) -> None:
        """Stops this instance. Runs in progress stop where they are, without a word, exactly as
        in a crash: their locks are left to expire, and the next instance recovers them (at once,
        because this instance says it is gone)."""
        for live in list(self._live.values()):
            if live.task is not None:
                await cancel_and_wait(live.task)
            if live.lock is not None:
                await live.lock.stop_renewal()
        self._live.clear()
        presence, self._presence = self._presence, None  # also ends its loop if the cancel is swallowed
        if presence is not None:
            await cancel_and_wait(presence)
        await self.redis.delete(self._instance_key(self.instance_id))

    def _instance_key(self, instance_id: str) -> str:
        return f"{self._prefix}:instance:{instance_id}"

    async def _announce(self) -> None:
        ttl_ms = int(self.policy.instance_ttl * 1000)
        await self.redis.set(self._instance_key(self.instance_id), str(time.time()), px=ttl_ms)

    async def _keep_presence(self) -> None:
        while self._presence is not None:
            await asyncio.sleep(self.policy.instance_ttl / 3)
            try:
                await self._announce()
            except (OSError, aioredis.RedisError) as exc:
                log.warning("runner.presence_failed", error=str(exc))

    async def _alive(self, instance_id: str) -> bool:
        if instance_id == self.instance_id:
            return True
        return bool(await self.redis.exists(self._instance_key(instance_id)))

    # -- starting ------------------------------------------------------------------------------
    async def start(
        self,
        procedure: Procedure,
        *,
        cluster: str,
        parameters: Mapping[str, Any],
        requester: str,
        channel: str,
        overrides: frozenset[str] = frozenset(),
    ) -> Run | Busy | Admission:
        """Asks the procedure's admission (a refusal, or a warning nobody overrode, is returned
        as it is, and nothing starts), takes the cluster's lock (or answers Busy), posts the
        progress message and starts the steps in the background. Returns as soon as the run exists."""
        await self.open()
        run_id = new_run_id()
        admission = await self._admission(procedure, cluster=cluster, parameters=parameters, requester=requester,
                                          channel=channel, run_id=run_id, overrides=overrides)
        if not admission.admitted:
            return admission
        lock = None
        if procedure.takes_lock:
            lock = ClusterLock(
                redis=self.redis, cluster=cluster, run_id=run_id, timeout=self.policy.lock_timeout, prefix=self._prefix
            )
            asked = time.monotonic()
            acquired = await lock.acquire()
            metrics.lock_attempt(cluster=cluster, seconds=time.monotonic() - asked, acquired=acquired)
            if not acquired:
                return await self.busy(cluster=cluster)
        run = Run.new(
            run_id=run_id, procedure=procedure, cluster=cluster, parameters=parameters,
            requester=requester, channel=channel, owner=self.instance_id, now=time.time(),
        )
        self._live[run.id] = _Live(lock=lock)
        try:
            await self.store.save(run)
            await self.audit.record(
                cluster=cluster, event="run.started", actor=requester, run_id=run.id, state=run.state.value,
                procedure=procedure.name, parameters=dict(parameters), channel=channel,
            )
            ts = await self.sender.post(channel=channel, text=run_text(run), blocks=render_run(run))
        except Exception as exc:
            await self._finish(run, _Stop(RunState.FAILED, error=f"could not start: {exc}", next_action="Try again."))
            raise
        started = replace(run, message_ts=ts)
        await self.store.save(started, previous=run)
        self._launch(started, procedure, start_index=0)
        return started

    async def busy(self, *, cluster: str) -> Busy:
        holder = await lock_holder(self.redis, cluster=cluster, prefix=self._prefix)
        run = await self.store.load(holder) if holder else None
        if run is None:
            return Busy(cluster=cluster, run_id=holder)
        current = run.current_step
        return Busy(
            cluster=cluster, run_id=run.id, procedure=run.procedure_title, requester=run.requester,
            current_step=current.title if current else "", since=run.since,
        )

    async def dry_run(
        self,
        procedure: Procedure,
        *,
        cluster: str,
        parameters: Mapping[str, Any],
        requester: str,
        channel: str,
        post: bool = True,
    ) -> Plan:
        """Every step and every command it would send; runs nothing and takes no lock. The plan
        carries the procedure's admission (what a real start would be told now) and shows the
        parameters its preview adds (e.g. the master a run would pick)."""
        admission = await self._admission(procedure, cluster=cluster, parameters=parameters, requester=requester,
                                          channel=channel, run_id=RunId("dry-run"))
        draft = Run.new(
            run_id=RunId("dry-run"), procedure=procedure, cluster=cluster, parameters=parameters,
            requester=requester, channel=channel, owner=self.instance_id, now=time.time(),
        )
        ctx = self._context_factory(run=draft, results={}, heartbeat=_no_heartbeat)
        parameters = {**parameters, **await preview_of(procedure, ctx)}
        ctx = replace(ctx, parameters=parameters)
        steps = tuple(
            [
                PlannedStep(number=n, step_id=s.id, title=s.title, kind=s.kind, commands=tuple(await plan_of(s, ctx)))
                for n, s in enumerate(procedure.steps, start=1)
            ]
        )
        plan = Plan(procedure=procedure, cluster=cluster, parameters=dict(parameters), steps=steps, admission=admission)
        await self.audit.record(
            cluster=cluster, event="dry_run", actor=requester, procedure=procedure.name, parameters=dict(parameters)
        )
        if post:
            await self.sender.post(channel=channel, text=f"Dry run: {procedure.title} on {cluster}", blocks=plan.blocks())
        return plan

    async def _admission(self, procedure: Procedure, *, cluster: str, parameters: Mapping[str, Any], requester: str,
                         channel: str, run_id: RunId, overrides: frozenset[str] = frozenset()) -> Admission:
        """The procedure's admission, asked with a context like the run's (no lock, no fence)."""
        draft = Run.new(run_id=run_id, procedure=procedure, cluster=cluster, parameters=parameters,
                        requester=requester, channel=channel, owner=self.instance_id, now=time.time())
        ctx = self._context_factory(run=draft, results={}, heartbeat=_no_heartbeat)
        return await admit(procedure, replace(ctx, overrides=overrides))

    async def wait(self, run_id: RunId, *, timeout: float) -> Run | None:
        """Waits for this instance's driving of a run to end, then returns the stored run."""
        live = self._live.get(run_id)
        if live is not None and live.task is not None:
            async with asyncio.timeout(timeout):
                await asyncio.shield(live.task)
        return await self.store.load(run_id)

    def _launch(self, run: Run, procedure: Procedure, *, start_index: int) -> None:
        live = self._live[run.id]
        live.task = asyncio.create_task(
            self._drive(run, procedure, start_index=start_index), name=f"etcdbot-run:{self.instance_id}:{run.id}"
        )

    # -- driving -------------------------------------------------------------------------------
    async def _drive(self, run: Run, procedure: Procedure, *, start_index: int) -> None:
        try:
            results = run.results()
            for step in procedure.steps[start_index:]:
                stop = await self._should_stop(run, before=step)
                if stop is not None:
                    await self._finish(run, stop)
                    return
                if step.kind is StepKind.DESTRUCTIVE:
                    run, stop = await self._gate(run, step)
                    if stop is not None:
                        await self._finish(run, stop)
                        return
                run, stop = await self._run_step(run, step, results)
                if stop is not None:
                    await self._finish(run, stop)
                    return
            await self._finish(run, _Stop(RunState.SUCCEEDED))
        except asyncio.CancelledError:
            # This instance is going away (or crashed): leave the record as it is for the next one.
            live = self._live.get(run.id)
            if live is not None and live.lock is not None:
                await live.lock.stop_renewal()
            raise
        except Exception as exc:  # a bug here must not leave the cluster locked by a "running" run
            log.exception("runner.internal_error", run_id=run.id)
            await self._finish(
                run,
                _Stop(
                    RunState.FAILED,
                    error=f"internal error in the runner: {type(exc).__name__}: {exc}",
                    next_action=f"Check the cluster with `/etcd-status {run.cluster}` before starting again.",
                ),
            )

    async def _should_stop(self, run: Run, *, before: Step) -> _Stop | None:
        abort = await self.store.abort_requested(run.id)
        if abort is not None:
            return _Stop(RunState.ABORTED, next_action=f"Aborted before *{before.title}*.", ended_by=abort.by)
        live = self._live.get(run.id)
        if live is not None and live.lock is not None and live.lock.lost.is_set():
            return _Stop(
                RunState.FAILED,
                error=f"the lock of `{run.cluster}` was lost (Redis unreachable for too long, or it expired)",
                next_action=f"Nothing after the last finished step was done. Check `/etcd-status {run.cluster}` and start again.",
            )
        return None

    async def _commit(self, previous: Run, run: Run) -> Run:
        await self.store.save(run, previous=previous)
        self._show(run)
        return run

    def _show(self, run: Run) -> None:
        if run.message_ts:
            self.sender.update(channel=run.channel, ts=run.message_ts, text=run_text(run), blocks=render_run(run))

    async def _gate(self, run: Run, step: Step) -> tuple[Run, _Stop | None]:
        """Waits for a second person's decision. Only an approval lets the run go on."""
        now = time.time()
        waiting = replace(run.step(step.id), state=StepState.WAITING_APPROVAL, note="waiting for a second person's approval")
        run = await self._commit(run, run.with_state(RunState.WAITING_APPROVAL, now=now).with_step(waiting, now=now))
        await self.audit.record(
            cluster=run.cluster, event="run.waiting_approval", actor=run.requester, run_id=run.id,
            state=run.state.value, step=step.id,
        )
        decision = await self.approvals.request(run=run, step=step)
        metrics.approval_decided(decision.outcome.value)
        abort = await self.store.abort_requested(run.id)
        if abort is not None:
            return run, _Stop(RunState.ABORTED, next_action=f"Aborted before *{step.title}*.", ended_by=abort.by)
        safe = f"Nothing destructive was done: the run stopped before *{step.title}*."
        if decision.outcome is Outcome.REJECTED:
            return run, _Stop(RunState.ABORTED, error=f"<@{decision.by}> rejected *{step.title}*.", next_action=safe, ended_by=decision.by)
        if decision.outcome is Outcome.EXPIRED:
            return run, _Stop(
                RunState.FAILED,
                error=f"no approval for *{step.title}* within the approval window",
                next_action=f"{safe} Start the procedure again when an approver is available.",
            )
        if not decision.approved:
            return run, _Stop(RunState.ABORTED, error=f"approval {decision.outcome.value}", next_action=safe, ended_by=decision.by)
        now = time.time()
        approved = replace(run.step(step.id), state=StepState.PENDING, note="", approved_by=decision.by)
        run = await self._commit(run, run.with_state(RunState.RUNNING, now=now).with_step(approved, now=now))
        return run, None

    async def _require_approval(self, run: Run, step: Step) -> None:
        """The last word before a destructive call: the approval record itself, read from Redis."""
        if step.kind is not StepKind.DESTRUCTIVE:
            return
        decision = await approval_on_record(
            self.redis, run_id=run.id, step_id=step.id, params_hash=parameters_hash(run.parameters), prefix=self._prefix
        )
        if decision is None or not decision.approved or decision.by in ("", run.requester):
            raise _NotApproved(step.title)

    async def _run_step(self, run: Run, step: Step, results: dict[StepId, StepResult]) -> tuple[Run, _Stop | None]:
        now = time.time()
        record = replace(
            run.step(step.id), state=StepState.RUNNING, started_at=now, finished_at=None, attempts=0, error="", next_action=""
        )
        run = await self._commit(run, run.with_step(record, now=now))
        await self.audit.record(
            cluster=run.cluster, event="step.started", actor=run.requester, run_id=run.id, step=step.id, kind=step.kind.value
        )
        current = run

        async def heartbeat(text: str) -> None:
            # A long step says it is alive; the lock is renewed anyway, this is for the people.
            self._show(current.with_step(replace(current.step(step.id), note=text[:300]), now=time.time()))

        ctx = self._context_factory(run=run, results=results, heartbeat=heartbeat)
        record = replace(await self._attempts(run, step, ctx, record), finished_at=time.time())
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
        return run, _Stop(RunState.FAILED, error=f"*{step.title}* failed: {record.error}", next_action=record.next_action)

    async def _attempts(self, run: Run, step: Step, ctx: StepContext, record: StepRecord) -> StepRecord:
        """Timeout on each attempt; retries only for StepFailed(retryable=True) and timeouts."""
        for attempt in range(1, step.retries + 2):
            record = replace(record, attempts=attempt)
            try:
                await self._require_approval(run, step)
                async with asyncio.timeout(step.timeout):
                    result = await step.run(ctx)
            except _NotApproved as exc:
                return replace(record, state=StepState.FAILED, error=str(exc), next_action=exc.next_action)
            except StepFailed as exc:
                error, next_action, retryable = exc.message, exc.next_action, exc.retryable
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
            await asyncio.sleep(delay)  # the retry policy's backoff, not a wait for luck
        raise AssertionError("unreachable")

    def _post_output(self, run: Run, record: StepRecord) -> None:
        live = self._live.get(run.id)
        if live is None or not run.message_ts:
            return
        for chunk in output_chunks(title=record.title, output=record.output):
            live.outputs.append(
                asyncio.create_task(self.sender.post(channel=run.channel, text=chunk, thread_ts=run.message_ts))
            )

    async def _finish(self, run: Run, stop: _Stop) -> Run:
        now = time.time()
        final = run.with_state(
            stop.state, now=now, error=stop.error, next_action=stop.next_action, ended_by=stop.ended_by, confirm_rerun=None
        )
        await self.store.save(final, previous=run)
        metrics.run_finished(procedure=final.procedure, outcome=final.state.value,
                             seconds=now - (final.created_at or now), cluster=final.cluster)
        live = self._live.pop(run.id, None)
        if live is not None and live.lock is not None:
            await live.lock.release()
        await self.audit.record(
            cluster=final.cluster, event="run.finished", actor=stop.ended_by or final.requester, run_id=final.id,
            state=final.state.value, error=stop.error, next_action=stop.next_action,
            done=[r.step_id for r in final.done_steps()], not_done=[r.step_id for r in final.not_done_steps()],
        )
        if live is not None:
            for result in await asyncio.gather(*live.outputs, return_exceptions=True):
                if isinstance(result, Exception):
                    log.warning("runner.output_post_failed", run_id=run.id, error=str(result))
        if final.message_ts:
            self._show(final)
            try:
                await self.sender.flush(channel=final.channel, ts=final.message_ts, timeout=self.policy.flush_timeout)
            except TimeoutError:
                log.error("runner.final_message_late", run_id=final.id)
        return final

    # -- abort, recovery, resume ---------------------------------------------------------------
    async def abort(self, run_id: str, *, by: str) -> Answer:
        """Stops a run before its next step (a step in progress finishes first)."""
        run = await self.store.load(run_id)
        if run is None:
            return Answer(ok=False, message=f"There is no run `{run_id}`. `/etcd-runs` lists recent runs.")
        if run.state.finished:
            return Answer(ok=False, message=f"Run `{run.id}` already ended: {run.state.value}.", run=run)
        if await self.store.request_abort(run_id=run.id, by=by, now=time.time()):
            await self.audit.record(cluster=run.cluster, event="run.abort_requested", actor=by, run_id=run.id)
        current = run.current_step
        if run.state is RunState.WAITING_APPROVAL and current is not None:
            await self.approvals.withdraw(run=run, step_id=current.step_id, by=by)
        drives_here = run.id in self._live and self._live[run.id].task is not None
        if run.state is RunState.INTERRUPTED or (not drives_here and not await self._alive(run.owner)):
            final = await self._abort_idle(run, by=by)
            return Answer(ok=True, message=_done_text(final, head=f"Run `{run.id}` aborted."), run=final)
        return Answer(ok=True, message=_done_text(run, head=f"Run `{run.id}` will stop before its next step."), run=run)

    async def _abort_idle(self, run: Run, *, by: str) -> Run:
        """Aborts a run nobody drives: release its lock if it still holds it."""
        live = self._live.get(run.id)
        if live is None:
            lock = ClusterLock(redis=self.redis, cluster=run.cluster, run_id=run.id, timeout=self.policy.lock_timeout, prefix=self._prefix)
            kept = await lock.keep_or_acquire()
            self._live[run.id] = _Live(lock=lock if kept else None)
        return await self._finish(run, _Stop(RunState.ABORTED, next_action="Aborted while no step was running.", ended_by=by))

    async def recover_interrupted(self) -> list[Run]:
        """Finds runs whose bot is gone, takes back their locks, marks them interrupted and asks
        for Resume / Abort in their messages. Returns the runs it took over."""
        await self.open()
        recovered = []
        for run_id in await self.store.live_run_ids():
            if run_id in self._live:
                continue
            run = await self.store.load(run_id)
            if run is None or run.state.finished or await self._alive(run.owner):
                continue
            claimed = await self.redis.set(
                f"{self._prefix}:run:{run.id}:adopted-from:{run.owner}", self.instance_id, nx=True, ex=86400
            )
            if claimed:
                recovered.append(await self._adopt(run))
        return recovered

    async def _adopt(self, run: Run) -> Run:
        now = time.time()
        procedure = self._procedures(run.procedure, run.parameters)
        lock = None
        if procedure.takes_lock:
            lock = ClusterLock(redis=self.redis, cluster=run.cluster, run_id=run.id, timeout=self.policy.lock_timeout, prefix=self._prefix)
            if not await lock.keep_or_acquire():
                holder = await lock_holder(self.redis, cluster=run.cluster, prefix=self._prefix)
                self._live[run.id] = _Live(lock=None)
                adopted = replace(run, owner=self.instance_id)
                await self.store.save(adopted, previous=run)
                return await self._finish(
                    adopted,
                    _Stop(
                        RunState.FAILED,
                        error=f"the bot restarted, and meanwhile run `{holder}` took the lock of `{run.cluster}`",
                        next_action=f"When run `{holder}` is done, check `/etcd-status {run.cluster}` and start again.",
                    ),
                )
        self._live[run.id] = _Live(lock=lock)
        current = run.current_step
        adopted = replace(run, owner=self.instance_id)
        if current is not None and current.state is StepState.RUNNING:
            step = _find_step(procedure, current.step_id)
            note = "the bot restarted while this step was running"
            adopted = adopted.with_step(replace(current, state=StepState.INTERRUPTED, note=note), now=now)
            if not step.safe_to_repeat:
                adopted = replace(adopted, confirm_rerun=step.id)
        elif current is not None and current.state is StepState.WAITING_APPROVAL:
            adopted = adopted.with_step(replace(current, state=StepState.PENDING, note="approval to be asked again"), now=now)
        adopted = adopted.with_state(RunState.INTERRUPTED, now=now)
        adopted = await self._commit(run, adopted)
        await self.audit.record(
            cluster=run.cluster, event="run.interrupted", actor="", run_id=run.id, state=adopted.state.value,
            previous_owner=run.owner, step=current.step_id if current else "",
        )
        return adopted

    async def resume(self, run_id: str, *, by: str, rerun_unsafe: bool = False) -> Answer:
        """Continues an interrupted run from its interrupted step. That step is re-run only if it
        is safe to repeat, or a person confirmed (`rerun_unsafe`, the "Re-run step anyway" button)."""
        run = await self.store.load(run_id)
        if run is None:
            return Answer(ok=False, message=f"There is no run `{run_id}`.")
        if run.state is not RunState.INTERRUPTED:
            return Answer(ok=False, message=f"Run `{run.id}` is {run.state.value.replace('_', ' ')}: nothing to resume.", run=run)
        if run.owner != self.instance_id:
            if await self._alive(run.owner):
                return Answer(ok=False, message=f"Run `{run.id}` is held by bot instance {run.owner}.", run=run)
            recovered = await self.recover_interrupted()
            run = next((r for r in recovered if r.id == run.id), None) or run
            if run.owner != self.instance_id or run.state is not RunState.INTERRUPTED:
                return Answer(ok=False, message=f"Run `{run.id}` could not be taken over; try again.", run=run)
        procedure = self._procedures(run.procedure, run.parameters)
        index = next((i for i, r in enumerate(run.steps) if r.state is not StepState.SUCCEEDED), len(run.steps))
        current = run.steps[index] if index < len(run.steps) else None
        if current is not None and current.state is StepState.INTERRUPTED:
            step = _find_step(procedure, current.step_id)
            if not step.safe_to_repeat and not rerun_unsafe:
                if run.confirm_rerun != step.id:
                    run = await self._commit(run, replace(run, confirm_rerun=step.id, updated_at=time.time()))
                return Answer(
                    ok=False,
                    message=(
                        f"*{step.title}* was running when the bot stopped and is not safe to repeat automatically. "
                        "Check the cluster, then press *Re-run step anyway*, or *Abort*."
                    ),
                    run=run,
                )
        live = self._live.get(run.id)
        if live is None or (live.lock is not None and live.lock.lost.is_set()):
            return Answer(ok=False, message=f"Run `{run.id}` lost the lock of `{run.cluster}` while it waited; abort it.", run=run)
        now = time.time()
        resumed = run.with_state(RunState.RUNNING, now=now, confirm_rerun=None)
        resumed = await self._commit(run, resumed)
        await self.audit.record(
            cluster=run.cluster, event="run.resumed", actor=by, run_id=run.id, state=resumed.state.value,
            step=current.step_id if current else "", rerun_unsafe=rerun_unsafe,
        )
        self._launch(resumed, procedure, start_index=index)
        where = f" at *{current.title}*" if current else ""
        return Answer(ok=True, message=f"Resumed run `{run.id}`{where}.", run=resumed)

    async def decide_approval(self, *, run_id: str, step_id: str, params_hash: str, approve: bool, by: str) -> DecideAnswer:
        """An Approve / Reject press, passed to the approvals (which check who may decide)."""
        return await self.approvals.decide(run_id=run_id, step_id=step_id, params_hash=params_hash, approve=approve, by=by)

    async def recent_runs(self, *, cluster: str, limit: int = 10) -> list[RunSummary]:
        return await self.audit.recent_runs(cluster=cluster, limit=limit)


class _NotApproved(Exception):
    def __init__(self, title: str) -> None:
        super().__init__(f"no approval on record for *{title}* with this run's parameters: the step was not run")
        self.next_action = "Start the procedure again; a second person must approve the step."


def _find_step(procedure: Procedure, step_id: StepId) -> Step:
    for step in procedure.steps:
        if step.id == step_id:
            return step
    raise KeyError(f"procedure {procedure.name} has no step {step_id}")


def _done_text(run: Run, *, head: str) -> str:
    done = ", ".join(r.title for r in run.done_steps()) or "nothing"
    not_done = ", ".join(r.title for r in run.not_done_steps()) or "nothing"
    return f"{head}\nDone: {done}\nNot done: {not_done}"
