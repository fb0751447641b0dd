"""Runs a procedure: lock -> progress message -> steps (approval gate before destructive ones,
timeout and retries on each) -> audit -> unlock. Steps are plain functions; everything around
them is here, once, so no procedure can forget a lock, a fence, an approval or a timeout.

The rules that have no exception:
- A destructive step's `run()` is reached only after `check_grant()` read its approval from Redis
  (signed, for this run and this plan, by enough approvers other than the requester, not expired
  at this moment) against a plan computed again just now, and after `fence()` confirmed in Redis
  that this run still holds the cluster's lock with its fencing token. A plan that changed or an
  approval that expired asks a new approval; nothing runs meanwhile.
- A lock lost while a step runs (renewal refused, or Redis silent for too long) cancels the step
  at once; the run ends INTERRUPTED and says so. A bot that was paused past its lock's TTL writes
  nothing over the run its successor adopted (the store's owner guard) and says so in the thread.
- A run is adopted by another instance only once its lock has expired, never while its holder may
  still renew it, and a destructive step that was in flight is never re-run without a fresh
  approval under the same rules (so never by the requester alone).
- A record that cannot be read is quarantined (bot/store.py) and reported; it never stops the bot.

The run's record in Redis is written after every step change, so a bot that restarts finds its
interrupted runs (`recover_interrupted()`) and asks a person to Resume or Abort.

Not here: parsing Slack commands and authorising who may start what (handlers/), building the
step context's clients (the `ContextFactory` the app passes in), who may approve (bot/approvals).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis
from slack_sdk.models.blocks import Block

from bot import metrics
from bot.approvals import (
    ApprovalPolicy,
    ApprovalRecords,
    Approvals,
    DecideAnswer,
    GrantCheck,
    Outcome,
    StepPlan,
    check_grant,
    plan_for,
)
from bot.audit import Audit, RunSummary
from bot.locks import DEFAULT_TIMEOUT, ClusterLock, LockLost, lock_holder, lock_value
from bot.log import get_logger
from bot.procedure import (
    Admission,
    Fence,
    PlannedCommand,
    Procedure,
    RunId,
    Step,
    StepContext,
    StepFailed,
    StepId,
    StepKind,
    StepResult,
    acts,
    admit,
    no_fence,
    plan_of,
    preview_of,
)
from bot.progress import ThrottledSender, output_chunks, render_plan, render_run, run_text, slack_time, who
from bot.slacktext import escape
from bot.store import (
    UNKNOWN_CLUSTER,
    NotOwner,
    Quarantined,
    Run,
    RunState,
    RunStore,
    StepRecord,
    StepState,
)
from bot.store import quarantined as quarantined_records
from bot.tasks import cancel_and_wait

log = get_logger(__name__)

Heartbeat = Callable[[str], Awaitable[None]]
T = TypeVar("T")


class ContextFactory(Protocol):
    """Builds the StepContext of a run (the app gives it the cluster's clients). `fence` is the
    runner's lock check; the context hands it to the kit's write verbs."""

    def __call__(
        self, *, run: Run, results: dict[StepId, StepResult], heartbeat: Heartbeat, fence: Fence
    ) -> StepContext: ...


# name, parameters -> the Procedure: how a restarted bot gets back the steps of a stored run.
ProcedureFactory = Callable[[str, Mapping[str, Any]], Procedure]


@dataclass(frozen=True)
class RunnerPolicy:
    lock_timeout: float = DEFAULT_TIMEOUT  # a dead bot's lock frees itself after this
    instance_ttl: float = 15.0  # a dead bot's runs count as interrupted after this (and their lock expired)
    first_backoff: float = 2.0  # before the first retry of a step; doubles each time
    max_backoff: float = 60.0
    flush_timeout: float = 120.0  # how long the end of a run waits for its final message
    max_approval_requests: int = 5  # per destructive step of a run, when plans keep changing
    heartbeat_every: float = 2.0  # a long step's latest heartbeat is written to Redis at most this often


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


@dataclass(frozen=True)
class _Grant:
    """The approval this instance is running destructive steps under (never kept past a restart)."""

    request_id: str
    step_ids: frozenset[StepId]
    nothing_to_approve: bool = False  # the plan sent nothing: no request, checked again before the step


@dataclass(frozen=True)
class _AskAgain:
    """The approval no longer fits (plan changed, expired): ask a new one before the step."""

    reason: str


@dataclass
class _Live:
    """This instance's handle on a run it drives or holds."""

    lock: ClusterLock | None
    takes_lock: bool = True
    task: asyncio.Task[None] | None = None
    outputs: list[asyncio.Task[Any]] = field(default_factory=list)


@dataclass
class _Stored:
    """The run as last written while a step runs (its heartbeats write it too)."""

    run: Run
    persisted: float = 0.0


class _Stale(Exception):
    """Another instance drives this run now (this one was paused past its lock): stop, write nothing."""


def new_run_id() -> RunId:
    return RunId(secrets.token_hex(4))


def default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


async def _no_heartbeat(_text: str) -> None:
    return None


class Runner:
    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        sender: ThrottledSender,
        approvals: Approvals,
        approval_policy: ApprovalPolicy,
        context_factory: ContextFactory,
        procedures: ProcedureFactory,
        instance_id: str | None = None,
        policy: RunnerPolicy = RunnerPolicy(),
        prefix: str = "etcdbot",
    ) -> None:
        self.redis = redis
        self.sender = sender
        self.approvals = approvals
        self.approval_policy = approval_policy
        self.audit = Audit(redis=redis, prefix=prefix)
        self.store = RunStore(redis=redis, prefix=prefix, on_quarantine=self._report_quarantine)
        # The runner's own reader of approval records, with its own key: it believes no one's word.
        self.records = ApprovalRecords(redis=redis, key=approval_policy.key, audit=self.audit, prefix=prefix)
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
        """Stops this instance. Runs in progress stop where they are, without a word, as in a
        crash; the lock of a run whose task has stopped is released (only if it still carries this
        run's token), so the next instance adopts it at once and marks it interrupted."""
        for live in list(self._live.values()):
            stopped = True
            if live.task is not None:
                stopped = await cancel_and_wait(live.task)
            if live.lock is not None:
                if stopped:
                    try:
                        await live.lock.release()
                    except (OSError, aioredis.RedisError) as exc:
                        log.warning("runner.release_failed", run_id=live.lock.run_id, error=str(exc))
                else:
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

    async def _report_quarantine(self, note: Quarantined) -> None:
        await self.audit.record(
            cluster=note.cluster or UNKNOWN_CLUSTER, event="record.quarantined", actor="", run_id=note.record_id,
            kind=note.kind, key=note.key, moved_to=note.moved_to, reason=note.reason,
        )

    def _new_lock(self, run_id: RunId, cluster: str) -> ClusterLock:
        return ClusterLock(redis=self.redis, cluster=cluster, run_id=run_id, timeout=self.policy.lock_timeout,
                           prefix=self._prefix)

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
            lock = self._new_lock(run_id, cluster)
            asked = time.monotonic()
            acquired = await lock.acquire()
            metrics.lock_attempt(cluster=cluster, seconds=time.monotonic() - asked, acquired=acquired)
            if not acquired:
                return await self.busy(cluster=cluster)
        run = Run.new(
            run_id=run_id, procedure=procedure, cluster=cluster, parameters=parameters,
            requester=requester, channel=channel, owner=self.instance_id, now=time.time(),
        )
        self._live[run.id] = _Live(lock=lock, takes_lock=procedure.takes_lock)
        try:
            await self.store.save(run, expect_owner=self.instance_id)
            await self.audit.record(
                cluster=cluster, event="run.started", actor=requester, run_id=run.id, state=run.state.value,
                procedure=procedure.name, parameters=dict(parameters), channel=channel,
                fencing_token=lock.token if lock is not None else None,
            )
            ts = await self.sender.post(channel=channel, text=run_text(run), blocks=render_run(run))
        except Exception as exc:
            await self._finish(run, _Stop(RunState.FAILED, error=f"could not start: {exc}", next_action="Try again."))
            raise
        started = replace(run, message_ts=ts)
        await self.store.save(started, previous=run, expect_owner=self.instance_id)
        self._launch(started, procedure, start_index=0)
        return started

    async def busy(self, *, cluster: str, record_wait: float = 2.0) -> Busy:
        """Who holds `cluster`. A run saves its record just after it takes the lock, so a holder
        without a record is one that is starting: wait (at most `record_wait`) for the record,
        so the person refused is told what runs and who started it, not only a run id."""
        deadline = time.monotonic() + record_wait
        while True:
            holder = await lock_holder(self.redis, cluster=cluster, prefix=self._prefix)
            run = await self.store.load(holder) if holder else None
            if run is not None or holder is None or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
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
        ctx = self._context_factory(run=draft, results={}, heartbeat=_no_heartbeat, fence=no_fence)
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
        ctx = self._context_factory(run=draft, results={}, heartbeat=_no_heartbeat, fence=no_fence)
        return await admit(procedure, replace(ctx, overrides=overrides))

    async def wait(self, run_id: RunId, *, timeout: float) -> Run | None:
        """Waits for this instance's driving of a run to end, then returns the stored run."""
        live = self._live.get(run_id)
        if live is not None and live.task is not None:
            async with asyncio.timeout(timeout):
                await asyncio.shield(live.task)
        return await self.store.load(run_id)

    def _launch(self, run: Run, procedure: Procedure, *, start_index: int, note: str = "") -> None:
        live = self._live[run.id]
        live.task = asyncio.create_task(
            self._drive(run, procedure, start_index=start_index, note=note),
            name=f"etcdbot-run:{self.instance_id}:{run.id}",
        )

    # -- driving -------------------------------------------------------------------------------
    async def _drive(self, run: Run, procedure: Procedure, *, start_index: int, note: str = "") -> None:
        """The steps from `start_index` on. `note` is shown with the first approval request (why
        a destructive step is asked again, e.g. after a crash during it)."""
        try:
            results = run.results()
            grant: _Grant | None = None
            asked: dict[StepId, int] = {}
            index = start_index
            while index < len(procedure.steps):
                step = procedure.steps[index]
                stop = await self._should_stop(run, before=step)
                if stop is not None:
                    await self._finish(run, stop)
                    return
                if step.kind is StepKind.DESTRUCTIVE and (grant is None or step.id not in grant.step_ids):
                    asked[step.id] = asked.get(step.id, 0) + 1
                    if asked[step.id] > self.policy.max_approval_requests:
                        await self._finish(run, _Stop(
                            RunState.FAILED, error=f"asked {self.policy.max_approval_requests} approvals for "
                            f"*{step.title}* and its plan kept changing or its approval expired before it started",
                            next_action=f"Nothing destructive was done: the run stopped before *{step.title}*. "
                            f"Check `/etcd-status {run.cluster}` and start again."))
                        return
                    run, grant, stop = await self._gate(run, procedure, index, results, note=note)
                    note = ""
                    if stop is not None:
                        await self._finish(run, stop)
                        return
                run, outcome = await self._run_step(run, step, results, grant)
                if isinstance(outcome, _AskAgain):
                    grant, note = None, outcome.reason
                    continue  # the same step, under a new approval
                if outcome is not None and outcome.state is RunState.INTERRUPTED:
                    await self._hold(run, outcome)
                    return
                if outcome is not None:
                    await self._finish(run, outcome)
                    return
                index += 1
            await self._finish(run, _Stop(RunState.SUCCEEDED))
        except asyncio.CancelledError:
            # This instance is going away (or crashed): leave the record as it is for the next one.
            live = self._live.get(run.id)
            if live is not None and live.lock is not None:
                await live.lock.stop_renewal()
            raise
        except _LostDuring as exc:
            await self._lost(exc.run, exc)
        except LockLost as exc:
            await self._lost(run, exc)
        except _Stale as exc:
            await self._stale(run, str(exc))
        except Exception as exc:  # a bug here must not leave the cluster locked by a "running" run
            log.exception("runner.internal_error", run_id=run.id)
            try:
                await self._finish(
                    run,
                    _Stop(
                        RunState.FAILED,
                        error=f"internal error in the runner: {type(exc).__name__}: {exc}",
                        next_action=f"Check the cluster with `/etcd-status {run.cluster}` before starting again.",
                    ),
                )
            except Exception:  # Redis itself may be what failed: the bot must keep serving
                log.exception("runner.finish_failed", run_id=run.id)
                live = self._live.pop(run.id, None)
                if live is not None and live.lock is not None:
                    await live.lock.stop_renewal()

    async def _should_stop(self, run: Run, *, before: Step) -> _Stop | None:
        abort = await self.store.abort_requested(run.id)
        if abort is not None:
            return _Stop(RunState.ABORTED, next_action=f"Aborted before *{before.title}*.", ended_by=abort.by)
        live = self._live.get(run.id)
        if live is not None and live.takes_lock and (live.lock is None or live.lock.lost.is_set()):
            lock = live.lock
            raise LockLost(cluster=run.cluster, run_id=run.id, token=lock.token if lock else None)
        return None

    async def _commit(self, previous: Run, run: Run) -> Run:
        try:
            await self.store.save(run, previous=previous, expect_owner=self.instance_id)
        except NotOwner as exc:
            raise _Stale(str(exc)) from None
        self._show(run)
        return run

    def _show(self, run: Run) -> None:
        if run.message_ts:
            self.sender.update(channel=run.channel, ts=run.message_ts, text=run_text(run), blocks=render_run(run),
                               guard=self._still_ours(run.id))

    def _still_ours(self, run_id: RunId) -> Callable[[], Awaitable[bool]]:
        """For the sender: an edit of a run's message goes out only while this instance owns the
        run (one HGET), so a bot continued after a pause cannot paint over its successor's message."""

        async def guard() -> bool:
            return await self.store.owner(run_id) in (None, self.instance_id)

        return guard

    def _fence_of(self, run_id: RunId) -> Fence:
        """The check a step context carries: raises LockLost unless this run still holds its
        cluster's lock with its fencing token (a no-op for procedures that take no lock)."""

        async def fence() -> None:
            live = self._live.get(run_id)
            if live is not None and not live.takes_lock:
                return
            if live is None or live.lock is None:
                raise LockLost(cluster="?", run_id=run_id, token=None)
            await live.lock.fence()

        return fence

    def _context(self, run: Run, results: dict[StepId, StepResult], heartbeat: Heartbeat = _no_heartbeat) -> StepContext:
        return self._context_factory(run=run, results=results, heartbeat=heartbeat, fence=self._fence_of(run.id))

    async def _guarded(self, run: Run, work: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
        """Awaits `work` while the run holds its lock: the moment renewal fails, `work` is
        cancelled and LockLost raised (not at the next step). TimeoutError past `timeout`."""
        live = self._live.get(run.id)
        lock = live.lock if live is not None else None
        task: asyncio.Task[T] = asyncio.create_task(work)
        lost = asyncio.create_task(lock.lost.wait()) if lock is not None else None
        try:
            waiting: set[asyncio.Future[Any]] = {task} | ({lost} if lost is not None else set())
            done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await cancel_and_wait(task)
            raise
        finally:
            if lost is not None:
                lost.cancel()
        if task in done:
            return task.result()
        await cancel_and_wait(task)
        if lock is not None and lock.lost.is_set():
            raise LockLost(cluster=run.cluster, run_id=run.id, token=lock.token)
        raise TimeoutError

    # -- the approval gate ---------------------------------------------------------------------
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

    # -- running a step ------------------------------------------------------------------------
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

    async def _finish(self, run: Run, stop: _Stop, *, expect_owner: str | None = None) -> Run:
        now = time.time()
        final = run.with_state(
            stop.state, now=now, error=stop.error, next_action=stop.next_action, ended_by=stop.ended_by, confirm_rerun=None
        )
        live = self._live.pop(run.id, None)
        try:
            await self.store.save(final, previous=run, expect_owner=expect_owner or self.instance_id)
        except NotOwner as exc:
            if live is not None and live.lock is not None:
                await live.lock.stop_renewal()
            await self._stale(run, str(exc))
            return run
        metrics.run_finished(procedure=final.procedure, outcome=final.state.value,
                             seconds=now - (final.created_at or now), cluster=final.cluster)
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

    # -- a lost lock ---------------------------------------------------------------------------
    async def _hold(self, run: Run, stop: _Stop) -> Run:
        """A step failed half way through changing the cluster (`StepFailed(hold=True)`): the run
        stops INTERRUPTED and KEEPS its lock (still renewed), so nothing else starts on a cluster
        in that state; its message says per host where things are. Resume repeats the step (a
        destructive one under a fresh approval); Abort releases the lock."""
        held = run.with_state(RunState.INTERRUPTED, now=time.time(), error=stop.error, next_action=stop.next_action)
        held = await self._commit(run, held)
        live = self._live.get(run.id)
        if live is not None:
            live.task = None
        await self.audit.record(
            cluster=run.cluster, event="run.held", actor=run.requester, run_id=run.id, state=held.state.value,
            error=stop.error, next_action=stop.next_action,
            step=held.current_step.step_id if held.current_step else "",
        )
        self._show(held)
        if held.message_ts:
            try:
                await self.sender.flush(channel=held.channel, ts=held.message_ts, timeout=self.policy.flush_timeout)
            except TimeoutError:
                log.error("runner.held_message_late", run_id=held.id)
        return held

    async def _lost(self, run: Run, exc: LockLost) -> None:
        """The run lost its lock (renewal refused, Redis silent too long, or its fencing token is
        stale): the step in flight was cancelled. If the run is still this instance's, it ends
        INTERRUPTED, saying so; if another instance adopted it meanwhile, this one writes nothing."""
        live = self._live.get(run.id)
        if live is not None and live.lock is not None:
            await live.lock.stop_renewal()
            live.lock = None
        if live is not None:
            live.task = None
        current = run.current_step
        where = f" while *{current.title}* ran: the step was cancelled at once" if current else ""
        error = f"this run lost the lock of `{run.cluster}`{where} ({exc}); nothing after it was run"
        interrupted = run.with_state(
            RunState.INTERRUPTED, now=time.time(), error=error,
            next_action=f"Check `/etcd-status {run.cluster}`, then press *Resume* (a destructive step asks a fresh "
                        "approval) or *Abort*.",
        )
        log.error("runner.lock_lost", run_id=run.id, cluster=run.cluster, token=exc.token, holder=exc.holder,
                  step=current.step_id if current else "")
        try:
            # Whole: what Redis holds may be ahead of `run` (a gate half done) or gone (Redis lost it).
            await self.store.save(interrupted, expect_owner=self.instance_id)
        except NotOwner as stale:
            await self._stale(run, str(stale), token=exc.token)
            return
        except (OSError, aioredis.RedisError) as redis_error:
            log.error("runner.lost_not_recorded", run_id=run.id, error=str(redis_error))
            self._live.pop(run.id, None)
            return
        self._show(interrupted)
        try:
            await self.audit.record(cluster=run.cluster, event="run.interrupted", actor="", run_id=run.id,
                                    state=interrupted.state.value, reason="lock lost", fencing_token=exc.token,
                                    step=current.step_id if current else "")
        except (OSError, aioredis.RedisError):
            log.warning("runner.audit_failed", run_id=run.id)

    async def _stale(self, run: Run, why: str, *, token: int | None = None) -> None:
        """Another instance drives this run now: say so in the thread and stop, writing nothing."""
        live = self._live.pop(run.id, None)
        if live is not None and live.lock is not None:
            await live.lock.stop_renewal()
        token = token if token is not None else (live.lock.token if live is not None and live.lock else None)
        log.error("runner.stale", run_id=run.id, instance=self.instance_id, token=token, why=why)
        if run.message_ts:
            text = (f":warning: Bot instance `{self.instance_id}` lost run `{run.id}` (its fencing token {token} is "
                    f"stale; {why}). It stopped what it was doing and does nothing more for this run.")
            try:
                await self.sender.post(channel=run.channel, text=text, thread_ts=run.message_ts)
            except Exception as exc:
                log.warning("runner.stale_post_failed", run_id=run.id, error=str(exc))

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
        # Read again after the request: a gate that recorded its approval request before this
        # point is seen here; one that records it after sees the abort request (see `_gate`).
        run = await self.store.load(run_id) or run
        current = run.current_step
        if run.state is RunState.WAITING_APPROVAL and current is not None and current.approval:
            await self.approvals.withdraw(run=run, request_id=current.approval, by=by)
        live = self._live.get(run.id)
        drives_here = live is not None and live.task is not None and not live.task.done()
        if drives_here:
            return Answer(ok=True, message=_done_text(run, head=f"Run `{run.id}` will stop before its next step."), run=run)
        if run.owner == self.instance_id or not await self._alive(run.owner):
            final = await self._abort_idle(run, by=by)
            text = _done_text(final, head=f"Run `{run.id}` aborted.") + await self._lock_note(final)
            return Answer(ok=True, message=text, run=final)
        return Answer(ok=True, run=run, message=_done_text(
            run, head=f"Run `{run.id}` will stop before its next step (bot instance {run.owner} drives it)."))

    async def _lock_note(self, run: Run) -> str:
        if await lock_holder(self.redis, cluster=run.cluster, prefix=self._prefix) != run.id:
            return ""
        return (f"\nIts lock of `{run.cluster}` is held with a token this bot instance does not have: it is left "
                f"to expire on its own, within {self.policy.lock_timeout:g} s.")

    async def _abort_idle(self, run: Run, *, by: str) -> Run:
        """Aborts a run nobody drives. Its lock is released only if this instance holds it with
        its token; otherwise it is left to expire on its own."""
        live = self._live.get(run.id)
        if live is None:
            self._live[run.id] = _Live(lock=None)
        mine = replace(run, owner=self.instance_id)
        return await self._finish(mine, _Stop(RunState.ABORTED, next_action="Aborted while no step was running.",
                                              ended_by=by), expect_owner=run.owner)

    async def recover_interrupted(self) -> list[Run]:
        """Finds runs whose bot is gone and whose lock has expired, takes new locks for them,
        marks them interrupted and asks for Resume / Abort in their messages. Also ends the idle
        runs of this instance someone asked to abort. Returns the runs it took over. One bad
        record or one failing run never stops the rest."""
        await self.open()
        recovered = []
        for run_id in await self.store.live_run_ids():
            try:
                live = self._live.get(run_id)
                if live is not None:
                    if live.task is None:
                        abort = await self.store.abort_requested(run_id)
                        idle = await self.store.load(run_id) if abort is not None else None
                        if idle is not None and not idle.state.finished:
                            await self._abort_idle(idle, by=abort.by if abort else "")
                    continue
                run = await self.store.load(run_id)
                if run is None:
                    if not await self.redis.exists(f"{self._prefix}:run:{run_id}"):
                        await self.store.forget_live(run_id)  # its record is gone (Redis lost it)
                    continue
                if run.state.finished:
                    await self.store.forget_live(run_id)
                    continue
                if await self._alive(run.owner):
                    continue
                adopted = await self._adopt(run)
                if adopted is not None:
                    recovered.append(adopted)
            except (OSError, aioredis.RedisError):
                raise  # Redis away: the caller retries later
            except Exception:
                log.exception("runner.recovery_failed_for_run", run_id=run_id)
        return recovered

    async def _adopt(self, run: Run) -> Run | None:
        """Takes over a run whose bot is gone, once its lock has expired (None before that)."""
        try:
            procedure = self._procedures(run.procedure, run.parameters)
        except KeyError:
            procedure = None
        lock = None
        if procedure is None or procedure.takes_lock:
            holder = await lock_value(self.redis, cluster=run.cluster, prefix=self._prefix)
            if holder is not None and holder.run_id == run.id:
                return None  # its holder may only be paused: never adopt while the lock lives
        claimed = await self.redis.set(
            f"{self._prefix}:run:{run.id}:adopted-from:{run.owner}", self.instance_id, nx=True, ex=86400
        )
        if not claimed:
            return None
        now = time.time()
        adopted = replace(run, owner=self.instance_id)
        if procedure is None:
            self._live[run.id] = _Live(lock=None)
            return await self._finish(adopted, _Stop(
                RunState.FAILED, error=f"the bot restarted and no longer knows the procedure `{run.procedure}`",
                next_action=f"Check `/etcd-status {run.cluster}` and start again."), expect_owner=run.owner)
        if procedure.takes_lock:
            lock = self._new_lock(run.id, run.cluster)
            if not await lock.acquire():
                holder_id = await lock_holder(self.redis, cluster=run.cluster, prefix=self._prefix)
                self._live[run.id] = _Live(lock=None)
                return await self._finish(
                    adopted,
                    _Stop(
                        RunState.FAILED,
                        error=f"the bot restarted, and meanwhile run `{holder_id}` took the lock of `{run.cluster}`",
                        next_action=f"When run `{holder_id}` is done, check `/etcd-status {run.cluster}` and start again.",
                    ),
                    expect_owner=run.owner,
                )
        self._live[run.id] = _Live(lock=lock, takes_lock=procedure.takes_lock)
        current = run.current_step
        if current is not None and current.state is StepState.RUNNING:
            step = _find_step(procedure, current.step_id)
            # `note` keeps the step's last heartbeat: what was seen last, for Resume to show.
            error = "the bot stopped while this step was running: it may have partly happened"
            adopted = adopted.with_step(replace(current, state=StepState.INTERRUPTED, error=error), now=now)
            if step.kind is not StepKind.DESTRUCTIVE and not step.safe_to_repeat:
                adopted = replace(adopted, confirm_rerun=step.id)
        elif current is not None and current.state is StepState.WAITING_APPROVAL:
            adopted = adopted.with_step(replace(current, state=StepState.PENDING, note="approval to be asked again"), now=now)
            if current.approval:  # nobody waits for it any more: a late press must not look as if it did something
                await self.approvals.withdraw(run=run, request_id=current.approval, by="")
        adopted = adopted.with_state(RunState.INTERRUPTED, now=now)
        try:
            await self.store.save(adopted, previous=run, expect_owner=run.owner)
        except NotOwner:
            self._live.pop(run.id, None)
            if lock is not None:
                await lock.release()
            return None
        self._show(adopted)
        await self.audit.record(
            cluster=run.cluster, event="run.interrupted", actor="", run_id=run.id, state=adopted.state.value,
            previous_owner=run.owner, step=current.step_id if current else "",
            fencing_token=lock.token if lock is not None else None,
        )
        return adopted

    async def resume(self, run_id: str, *, by: str, rerun_unsafe: bool = False) -> Answer:
        """Continues an interrupted run from its interrupted step. A destructive step that was in
        flight is asked a fresh approval first (with what is known of it); another interrupted step
        is re-run only if it is safe to repeat, or a person confirmed (`rerun_unsafe`, the
        "Re-run step anyway" button)."""
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
                return Answer(ok=False, run=run, message=(
                    f"Run `{run.id}` cannot be taken over yet: its lock of `{run.cluster}` has not expired "
                    f"(at most {self.policy.lock_timeout:g} s). Try again shortly."))
        procedure = self._procedures(run.procedure, run.parameters)
        index = next((i for i, r in enumerate(run.steps) if r.state is not StepState.SUCCEEDED), len(run.steps))
        current = run.steps[index] if index < len(run.steps) else None
        note = ""
        if current is not None and current.state is StepState.INTERRUPTED:
            step = _find_step(procedure, current.step_id)
            if step.kind is StepKind.DESTRUCTIVE:
                note = _resume_note(current, by=by)
            elif not step.safe_to_repeat and not rerun_unsafe:
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
        live = self._live.setdefault(run.id, _Live(lock=None, takes_lock=procedure.takes_lock))
        if procedure.takes_lock and (live.lock is None or live.lock.lost.is_set()):
            lock = self._new_lock(run.id, run.cluster)
            if not await lock.acquire():
                busy = await self.busy(cluster=run.cluster)
                return Answer(ok=False, run=run, message=f"Cannot resume run `{run.id}`: {busy.message()}")
            live.lock = lock
        now = time.time()
        resumed = run.with_state(RunState.RUNNING, now=now, confirm_rerun=None, error="", next_action="")
        resumed = await self._commit(run, resumed)
        await self.audit.record(
            cluster=run.cluster, event="run.resumed", actor=by, run_id=run.id, state=resumed.state.value,
            step=current.step_id if current else "", rerun_unsafe=rerun_unsafe,
            fencing_token=live.lock.token if live.lock is not None else None,
        )
        self._launch(resumed, procedure, start_index=index, note=note)
        where = f" at *{current.title}*" if current else ""
        fresh = " A fresh approval is asked in the thread first." if note else ""
        return Answer(ok=True, message=f"Resumed run `{run.id}`{where}.{fresh}", run=resumed)

    async def decide_approval(self, *, request_id: str, digest: str, approve: bool, by: str) -> DecideAnswer:
        """An Approve / Reject press, passed to the approvals (which check who may decide)."""
        return await self.approvals.decide(request_id=request_id, digest=digest, approve=approve, by=by)

    async def recent_runs(self, *, cluster: str, limit: int = 10) -> list[RunSummary]:
        return await self.audit.recent_runs(cluster=cluster, limit=limit)

    async def quarantined(self, *, cluster: str, limit: int = 10) -> list[Quarantined]:
        """Records of `cluster` (or of no readable cluster) moved aside: `/etcd-runs` lists them."""
        return await quarantined_records(self.redis, cluster=cluster, limit=limit, prefix=self._prefix)


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


def _resume_note(record: StepRecord, *, by: str) -> str:
    """What is known of a destructive step that was in flight when the bot stopped."""
    lines = [f"Resume by {who(by)}: *{escape(record.title)}* was running when the bot stopped and may have partly "
             "happened. A fresh approval is needed; the commands below are what the cluster calls for now."]
    if record.planned:
        sent = "; ".join(f"`{escape(c.target)}`: `{escape(c.command)}`" for c in record.planned)
        lines.append(f"Known: it was about to send {sent}.")
    if record.note:
        lines.append(f"Last seen: {escape(record.note)}")
    if record.output:
        lines.append(f"Output seen: ```{escape(record.output[-400:])}```")
    return "\n".join(lines)


def _find_step(procedure: Procedure, step_id: StepId) -> Step:
    for step in procedure.steps:
        if step.id == step_id:
            return step
    raise KeyError(f"procedure {procedure.name} has no step {step_id}")


def _done_text(run: Run, *, head: str) -> str:
    done = ", ".join(r.title for r in run.done_steps()) or "nothing"
    not_done = ", ".join(r.title for r in run.not_done_steps()) or "nothing"
    return f"{head}\nDone: {done}\nNot done: {not_done}"
