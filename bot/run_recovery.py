"""Runs that stop short of their end, and how they are taken up again.
- Stopping short: a step that failed half way through changing the cluster (`_hold`) leaves the
  run INTERRUPTED with its lock kept; a run that lost its lock (`_lost`) ends INTERRUPTED and says
  so; an instance paused past its lock that finds its run adopted (`_stale`) writes nothing more
  and says so in the thread.
- Taken up again: `abort` stops a run before its next step (at once if nobody drives it);
  `recover_interrupted` adopts the runs of a bot that is gone, only once their lock has expired,
  and asks for Resume or Abort in their messages; `resume` goes on from the interrupted step (a
  destructive step that was in flight asks a fresh approval; another that is not safe to repeat
  asks a person to confirm).

A mixin of `Runner` (bot/runner.py): the annotations at the top of `RunRecovery` name what it uses
of the Runner.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import redis.asyncio as aioredis

from bot.approvals import Approvals
from bot.audit import Audit
from bot.locks import ClusterLock, LockLost, lock_holder, lock_value
from bot.log import get_logger
from bot.procedure import Procedure, RunId, Step, StepId, StepKind
from bot.progress import ThrottledSender, render_run, run_text, who
from bot.run_shared import _Live, _Stop
from bot.run_types import Answer, Busy, ProcedureFactory, RunnerPolicy
from bot.slacktext import escape
from bot.store import NotOwner, Run, RunState, RunStore, StepRecord, StepState

log = get_logger(__name__)


class RunRecovery:
    # The Runner's, used here.
    redis: aioredis.Redis
    sender: ThrottledSender
    store: RunStore
    audit: Audit
    approvals: Approvals
    policy: RunnerPolicy
    instance_id: str
    _prefix: str
    _procedures: ProcedureFactory
    _live: dict[RunId, _Live]
    open: Callable[[], Awaitable[None]]
    busy: Callable[..., Awaitable[Busy]]
    _alive: Callable[[str], Awaitable[bool]]
    _new_lock: Callable[[RunId, str], ClusterLock]
    _launch: Callable[..., None]
    _commit: Callable[[Run, Run], Awaitable[Run]]
    _show: Callable[[Run], None]
    _finish: Callable[..., Awaitable[Run]]

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
        """Another instance drives this run now: repaint its message from the successor's record,
        say so in the thread and stop, writing no record."""
        live = self._live.pop(run.id, None)
        if live is not None and live.lock is not None:
            await live.lock.stop_renewal()
        token = token if token is not None else (live.lock.token if live is not None and live.lock else None)
        log.error("runner.stale", run_id=run.id, instance=self.instance_id, token=token, why=why)
        await self._repaint_from_record(run.id)
        if run.message_ts:
            text = (f":warning: Bot instance `{self.instance_id}` lost run `{run.id}` (its fencing token {token} is "
                    f"stale; {why}). It stopped what it was doing and does nothing more for this run.")
            try:
                await self.sender.post(channel=run.channel, text=text, thread_ts=run.message_ts)
            except Exception as exc:
                log.warning("runner.stale_post_failed", run_id=run.id, error=str(exc))

    async def _repaint_from_record(self, run_id: RunId) -> None:
        """An edit of this instance's may have reached Slack after its successor's (it had passed
        its owner check, or was on the wire, when this process paused), painting an old state over
        the successor's, Resume button and all. So the stale instance paints the message once more
        from the record its successor keeps, unless that record changed meanwhile (then the
        successor paints the newer state itself)."""
        try:
            current = await self.store.load(run_id)
        except (OSError, aioredis.RedisError) as exc:
            log.warning("runner.repaint_failed", run_id=run_id, error=str(exc))
            return
        if current is None or not current.message_ts or current.owner == self.instance_id:
            return

        async def unchanged() -> bool:
            now = await self.store.load(run_id)
            return now is not None and now.owner != self.instance_id and now.updated_at == current.updated_at

        self.sender.update(channel=current.channel, ts=current.message_ts, text=run_text(current),
                           blocks=render_run(current), guard=unchanged)
        try:  # delivered before this stale instance says it is done (it may be stopped next)
            await self.sender.flush(channel=current.channel, ts=current.message_ts, timeout=self.policy.flush_timeout)
        except TimeoutError:
            log.warning("runner.repaint_not_delivered", run_id=run_id)

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
