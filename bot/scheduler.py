"""Scheduled backups: ETCDBOT_BACKUP_SCHEDULE (or a cluster's `backup_schedule`) starts the same
backup run a person's `/etcd-backup` starts, with requester "scheduler", in the cluster's first
channel.

Why APScheduler with a MemoryJobStore per replica, and nothing shared: APScheduler 3.x job stores
must never be shared between schedulers, and the schedule is configuration, not state: every
replica rebuilds the same jobs from its settings at start. "One run across replicas" comes from
Redis, not from the scheduler:
- a SET NX key per (cluster, scheduled fire time) lets exactly one replica act on a fire, so two
  replicas never both start, or both post "busy";
- the per-cluster lock the runner takes keeps a scheduled run and a person's run apart.

What a fire does, and deliberately does not do:
- it starts the run through the runner, which asks the procedure's admission as for any start:
  a refusal (the 24 h rule: a backup before the first certificate rotation holds certificates
  about to expire) is posted once per refusal period, not at every fire;
- a warning (peak hours) is NOT a question here: the operator chose the schedule, so the fire
  overrides it (and logs that it did);
- a busy cluster gets one message naming the run that holds it, and the fire is skipped (no retry:
  the next fire is the retry);
- the replica that acted follows its run to the end and posts one line (bot/notify.py): after a
  success the backup's size, revision, duration, restore drill and the next fire; after a failure
  the step, the error, what to do, and the on-call group's mention.

Fires missed while no bot ran: every replica records, at each fire, the newest fire time in Redis
(`<prefix>:schedule:<cluster>:last`). A bot that starts reads it and lists the fires since, once
(a claim per gap, so two replicas starting together say it once), however long ago they were;
the latest fire, if within the grace window, is then taken (catch-up, claimed like any fire).
`misfire_grace_time` covers a fire that is late inside a living process (a blocked event loop, a
slow Redis).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis.asyncio as aioredis
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from bot import metrics
from bot.backups import Catalogue
from bot.clusters import Clusters
from bot.config import ClusterSettings, Settings
from bot.log import get_logger
from bot.notify import Notifier, failure_line, missed_line, success_line
from bot.procedure import Admission, Procedure, Verdict
from bot.progress import ThrottledSender, slack_time
from bot.run_types import Busy
from bot.runner import Runner
from bot.store import Run, RunState

log = get_logger(__name__)

REQUESTER = "scheduler"
JOB_PREFIX = "backup:"
# A fire that runs late (event loop blocked, Redis slow) is still taken within this window; the
# default (1 s) would drop it silently. A backup 15 min late is still the backup the operator wanted.
MISFIRE_GRACE = timedelta(minutes=15)
FIRE_KEY_TTL = 2 * 24 * 3600  # seconds; longer than any grace window, short enough to clean itself
RUN_WAIT = 6 * 3600.0  # seconds a fire follows its run to post the failure line (the copy step alone may take 1 h)
MAX_MISSED_SCAN = 200_000  # fires counted one by one when saying what was missed (every minute for ~4 months)
_MAX_SET = """local v = redis.call('GET', KEYS[1])
if (not v) or tonumber(v) < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) return 1 end
return 0"""


def trigger_for(expression: str, *, timezone: str) -> CronTrigger:
    """The cron trigger of a (validated) 5-field expression, in the cluster's time zone."""
    return CronTrigger.from_crontab(expression, timezone=timezone)


def fire_time(trigger: CronTrigger, *, now: datetime, grace: timedelta = MISFIRE_GRACE) -> datetime | None:
    """The scheduled fire a job running at `now` serves: the latest fire time in (now - grace, now].

    Why computed, not taken from APScheduler: the job function is not told its scheduled time, and
    two replicas must agree on one key per fire. With `coalesce=True` APScheduler runs a late job
    once, for the latest missed fire, which is exactly this one. None: no fire in the window.
    """
    found = None
    candidate = trigger.get_next_fire_time(None, now - grace)
    while candidate is not None and candidate <= now:
        found = candidate
        candidate = trigger.get_next_fire_time(candidate, candidate + timedelta(seconds=1))
    return found


async def claim_fire(redis: aioredis.Redis, *, cluster: str, fired: datetime, prefix: str = "etcdbot") -> bool:
    """True for the one replica that acts on this fire; False for every other (SET NX)."""
    key = f"{prefix}:schedule:{cluster}:{int(fired.timestamp())}"
    return bool(await redis.set(key, str(time.time()), nx=True, ex=FIRE_KEY_TTL))


def missed_fires(trigger: CronTrigger, *, after: datetime, until: datetime,
                 limit: int = MAX_MISSED_SCAN) -> tuple[list[datetime], int]:
    """The fires in (after, until]: the first `limit` of them and how many there are (counted up
    to `limit`; a longer gap says "at least")."""
    found: list[datetime] = []
    candidate = trigger.get_next_fire_time(None, after + timedelta(seconds=1))
    while candidate is not None and candidate <= until and len(found) < limit:
        found.append(candidate)
        candidate = trigger.get_next_fire_time(candidate, candidate + timedelta(seconds=1))
    return found, len(found)


def last_key(cluster: str, *, prefix: str = "etcdbot") -> str:
    return f"{prefix}:schedule:{cluster}:last"


async def mark_fire(redis: aioredis.Redis, *, cluster: str, fired: datetime, prefix: str = "etcdbot") -> None:
    """Records `fired` as the newest fire some replica saw (never moves it back)."""
    await redis.eval(_MAX_SET, 1, last_key(cluster, prefix=prefix), str(int(fired.timestamp())))  # type: ignore[misc]


async def first_refusal_notice(redis: aioredis.Redis, *, cluster: str, refusal: Admission,
                               prefix: str = "etcdbot") -> bool:
    """True the first time a refusal is to be posted: once per refusal period (its `until`, e.g.
    the end of a young cluster's first 24 h), else once a day for the same text."""
    digest = hashlib.sha256(refusal.message.encode()).hexdigest()[:16]
    if refusal.until is not None:
        key = f"{prefix}:schedule:{cluster}:refused:{int(refusal.until)}"
        ttl = max(int(refusal.until - time.time()), 60)
    else:
        key, ttl = f"{prefix}:schedule:{cluster}:refused:{digest}", 24 * 3600
    return bool(await redis.set(key, "1", nx=True, ex=ttl))


def refusal_line(*, cluster: str, refusal: Admission) -> str:
    """What a refused fire posts: why, and when the schedule takes over again by itself."""
    if refusal.until is not None:
        until = datetime.fromtimestamp(refusal.until, UTC)
        return (f":no_entry: Scheduled backups of `{cluster}` wait until {slack_time(refusal.until)} "
                f"({until:%Y-%m-%d %H:%M} UTC): {refusal.message} The schedule resumes by itself then.")
    return f":no_entry: The scheduled backup of `{cluster}` was refused: {refusal.message} {refusal.next_action}".rstrip()


@dataclass
class BackupScheduler:
    """One APScheduler per process, one job per scheduled cluster (`backup:<cluster>`)."""

    settings: Settings
    clusters: Clusters
    runner: Runner
    sender: ThrottledSender
    redis: aioredis.Redis
    procedure: Callable[[], Procedure]
    prefix: str = "etcdbot"
    catalogue: Catalogue | None = None  # the success line reads the run's backup from it
    notifier: Notifier | None = None

    def __post_init__(self) -> None:
        self._scheduler: AsyncIOScheduler | None = None
        self._triggers: dict[str, CronTrigger] = {}
        if self.notifier is None:
            self.notifier = Notifier(settings=self.settings, sender=self.sender)

    def start(self) -> None:
        """Adds the jobs and starts the scheduler on the running loop; nothing if no cluster has a schedule."""
        scheduler = AsyncIOScheduler(timezone=UTC)
        for cluster in self.settings.clusters:
            expression = self.settings.backup_schedule_of(cluster)
            if not expression:
                continue
            if not cluster.channels:
                log.warning("schedule.no_channel", cluster=cluster.name,
                            detail="a scheduled backup needs a channel to report in: add one to ETCDBOT_CLUSTERS")
                continue
            trigger = trigger_for(expression, timezone=cluster.timezone)
            self._triggers[cluster.name] = trigger
            scheduler.add_job(
                self.fire, trigger, args=(cluster.name,), id=f"{JOB_PREFIX}{cluster.name}",
                name=f"scheduled backup of {cluster.name}", replace_existing=True,
                misfire_grace_time=int(MISFIRE_GRACE.total_seconds()),
                coalesce=True,  # fires missed together are one backup, not a burst
                max_instances=1,  # a fire while the last one still follows its run is skipped (the lock would refuse it)
            )
            log.info("schedule.added", cluster=cluster.name, cron=expression, timezone=cluster.timezone)
            # What happened while no bot ran: fires to report, and the latest one (within the
            # grace window) to take now; claims make both no-ops when another replica did them.
            scheduler.add_job(self.at_start, "date", args=(cluster.name,), id=f"{JOB_PREFIX}{cluster.name}:catch-up",
                              replace_existing=True, misfire_grace_time=int(MISFIRE_GRACE.total_seconds()))
        if not self._triggers:
            return
        scheduler.start()
        self._scheduler = scheduler
        for job in scheduler.get_jobs():
            log.info("schedule.next", job=job.id, at=str(job.next_run_time))

    async def stop(self) -> None:
        """Stops firing; a run already started goes on (the runner owns it, and its lock)."""
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.shutdown(wait=False)  # cancels fires in progress; their runs are shielded
            await asyncio.sleep(0)  # let the cancellations land before the loop closes

    def next_fire(self, cluster: str, *, after: datetime) -> datetime | None:
        trigger = self._triggers.get(cluster)
        return trigger.get_next_fire_time(None, after + timedelta(seconds=1)) if trigger else None

    async def at_start(self, cluster_name: str) -> None:
        """Once at start: says which fires no bot acted on since the newest one any replica saw
        (once across replicas, however long ago), then takes the latest if it is within the grace
        window and no replica took it. Never raises."""
        cluster = self.settings.cluster(cluster_name)
        trigger = self._triggers.get(cluster_name)
        if cluster is None or trigger is None:
            return
        now = datetime.now(UTC)
        try:
            raw = await self.redis.get(last_key(cluster_name, prefix=self.prefix))
            missed: list[datetime] = []
            total = 0
            if raw is not None:
                after = datetime.fromtimestamp(int(raw), UTC)
                missed, total = await asyncio.to_thread(missed_fires, trigger, after=after, until=now)
            catch_up = fire_time(trigger, now=now)
            claimed = catch_up is not None and await claim_fire(self.redis, cluster=cluster_name, fired=catch_up,
                                                                prefix=self.prefix)
            if missed:
                metrics.scheduled_backup(cluster=cluster_name, outcome="missed")
                key = f"{self.prefix}:schedule:{cluster_name}:missed:{int(missed[0].timestamp())}"
                if await self.redis.set(key, "1", nx=True, ex=FIRE_KEY_TTL):
                    assert self.notifier is not None
                    log.warning("schedule.missed", cluster=cluster_name, fires=total, first=missed[0].isoformat(),
                                last=missed[-1].isoformat())
                    await self.notifier.post(cluster, missed_line(
                        cluster=cluster_name, fires=missed, total=total, catch_up=catch_up is not None,
                        mention=await self.notifier.mention(cluster)))
            newest = max([*missed, *([catch_up] if catch_up else [])], default=now)
            await mark_fire(self.redis, cluster=cluster_name, fired=newest, prefix=self.prefix)
            if claimed:
                log.info("schedule.catch_up", cluster=cluster_name, missed=catch_up.isoformat() if catch_up else "")
                await self._backup(cluster, now=now)
        except Exception:
            log.exception("schedule.at_start_error", cluster=cluster_name)

    async def fire(self, cluster_name: str) -> None:
        """One scheduled fire for one cluster. Never raises: an error is logged, counted and posted."""
        cluster = self.settings.cluster(cluster_name)
        trigger = self._triggers.get(cluster_name)
        if cluster is None or trigger is None:
            return
        now = datetime.now(UTC)
        fired = fire_time(trigger, now=now) or now.replace(second=0, microsecond=0)
        try:
            await mark_fire(self.redis, cluster=cluster_name, fired=fired, prefix=self.prefix)
            if not await claim_fire(self.redis, cluster=cluster_name, fired=fired, prefix=self.prefix):
                log.info("schedule.taken_elsewhere", cluster=cluster_name, fired=fired.isoformat())
                metrics.scheduled_backup(cluster=cluster_name, outcome="duplicate")
                return
            await self._backup(cluster, now=now)
        except Exception as exc:
            log.exception("schedule.error", cluster=cluster_name)
            metrics.scheduled_backup(cluster=cluster_name, outcome="error")
            await self._say(cluster, f":x: The scheduled backup of `{cluster_name}` could not start: "
                                     f"{type(exc).__name__}: {exc}. Take one by hand with `/etcd-backup {cluster_name}`.")

    async def _start(self, cluster: ClusterSettings) -> Run | Busy | Admission:
        return await self.start_backup(cluster, requester=REQUESTER)

    async def start_backup(self, cluster: ClusterSettings, *, requester: str) -> Run | Busy | Admission:
        """The runner's start, as a person's; a warning is overridden (the operator chose the
        schedule; the document asks for a backup after an upgrade), a refusal comes back as it is."""
        overrides: frozenset[str] = frozenset()
        for _ in range(4):  # each round overrides one more warning; a procedure has few
            result = await self.runner.start(self.procedure(), cluster=cluster.name, parameters={},
                                             requester=requester, channel=cluster.channels[0], overrides=overrides)
            if not (isinstance(result, Admission) and result.verdict is Verdict.WARN and result.override
                    and result.override not in overrides):
                return result
            log.info("schedule.warning_overridden", cluster=cluster.name, override=result.override,
                     detail=result.message)
            overrides |= {result.override}
        return result

    async def _backup(self, cluster: ClusterSettings, *, now: datetime) -> None:
        name = cluster.name
        result = await self._start(cluster)
        if isinstance(result, Admission):
            metrics.scheduled_backup(cluster=name, outcome="refused")
            log.warning("schedule.refused", cluster=name, reason=result.message)
            if await first_refusal_notice(self.redis, cluster=name, refusal=result, prefix=self.prefix):
                await self._say(cluster, refusal_line(cluster=name, refusal=result))
            return
        if isinstance(result, Busy):
            metrics.scheduled_backup(cluster=name, outcome="busy")
            log.info("schedule.busy", cluster=name, holder=result.run_id)
            await self._say(cluster, f":hourglass: Scheduled backup skipped: {result.message()}")
            return
        log.info("schedule.started", cluster=name, run_id=result.id)
        try:
            run = await self.runner.wait(result.id, timeout=RUN_WAIT)
        except TimeoutError:
            log.warning("schedule.still_running", cluster=name, run_id=result.id)
            metrics.scheduled_backup(cluster=name, outcome="timeout")
            return  # the run goes on; its own message reports the end
        state = run.state if run is not None else None
        metrics.scheduled_backup(cluster=name, outcome=state.value if state else "error")
        await self.report(cluster, run, next_fire=self.next_fire(name, after=datetime.now(UTC)))

    async def report(self, cluster: ClusterSettings, run: Run | None, *, next_fire: datetime | None,
                     what: str = "scheduled backup") -> None:
        """The one line after a bot-started backup: success with the facts, or failure with the
        step, what to do and the on-call group (an interrupted run says nothing: Resume is offered)."""
        assert self.notifier is not None
        if run is None:
            return
        if run.state is RunState.SUCCEEDED:
            record = await self.catalogue.by_run(cluster=cluster.name, run_id=run.id) if self.catalogue else None
            if what == "scheduled backup":
                await self.notifier.post(cluster, success_line(cluster=cluster.name, record=record, run=run,
                                                               next_fire=next_fire))
        elif run.state in (RunState.FAILED, RunState.ABORTED):
            await self.notifier.post(cluster, failure_line(
                cluster=cluster.name, run=run, mention=await self.notifier.mention(cluster), next_fire=next_fire,
                what=what))

    async def _say(self, cluster: ClusterSettings, text: str) -> None:
        if cluster.channels:
            await self.sender.post(channel=cluster.channels[0], text=text)
