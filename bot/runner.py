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

The Runner is this module's driving loop (start, drive, finish) plus three parts, a module each,
that it inherits as mixins: the approval gate (bot/run_gate.py), one step's attempts
(bot/run_step.py), and runs that stop short and are taken up again: lost lock, abort, recovery,
resume (bot/run_recovery.py). What it is given and answers (`RunnerPolicy`, `Busy`, `Plan`, ...)
is in bot/run_types.py; what its modules share about a live run, in bot/run_shared.py.

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
from dataclasses import replace
from typing import Any, TypeVar

import redis.asyncio as aioredis

from bot import metrics
from bot.approvals import ApprovalPolicy, ApprovalRecords, Approvals, DecideAnswer
from bot.audit import Audit, RunSummary
from bot.locks import ClusterLock, LockLost, lock_holder
from bot.log import get_logger
from bot.procedure import (
    Admission,
    Fence,
    Procedure,
    RunId,
    Step,
    StepContext,
    StepId,
    StepKind,
    StepResult,
    admit,
    no_fence,
    plan_of,
    preview_of,
)
from bot.progress import ThrottledSender, render_run, run_text
from bot.run_gate import ApprovalGate
from bot.run_recovery import RunRecovery
from bot.run_shared import _Grant, _Live, _Stale, _Stop
from bot.run_step import StepRunner, _AskAgain, _LostDuring
from bot.run_types import Busy, ContextFactory, Heartbeat, Plan, PlannedStep, ProcedureFactory, RunnerPolicy
from bot.store import UNKNOWN_CLUSTER, NotOwner, Quarantined, Run, RunState, RunStore
from bot.store import quarantined as quarantined_records
from bot.tasks import cancel_and_wait

log = get_logger(__name__)
T = TypeVar("T")


def new_run_id() -> RunId:
    return RunId(secrets.token_hex(4))


def default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


async def _no_heartbeat(_text: str) -> None:
    return None


class Runner(RunRecovery, ApprovalGate, StepRunner):
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

    async def decide_approval(self, *, request_id: str, digest: str, approve: bool, by: str) -> DecideAnswer:
        """An Approve / Reject press, passed to the approvals (which check who may decide)."""
        return await self.approvals.decide(request_id=request_id, digest=digest, approve=approve, by=by)

    async def recent_runs(self, *, cluster: str, limit: int = 10) -> list[RunSummary]:
        return await self.audit.recent_runs(cluster=cluster, limit=limit)

    async def quarantined(self, *, cluster: str, limit: int = 10) -> list[Quarantined]:
        """Records of `cluster` (or of no readable cluster) moved aside: `/etcd-runs` lists them."""
        return await quarantined_records(self.redis, cluster=cluster, limit=limit, prefix=self._prefix)
