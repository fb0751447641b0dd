"""The bot's watch over its backups, between commands: a backup after every upgrade, a warning
when no drilled backup is recent enough, and the last-drilled metric kept true on every replica.

Why a loop of its own (every `ETCDBOT_WATCH_INTERVAL` seconds, per cluster):
- The document says to back up after every upgrade: a restore needs a backup of the SAME z-stream.
  The watch reads ClusterVersion; when the newest Completed version differs from the one it saw
  last (kept in Redis, so a restart or another replica does not see a change twice), and the
  catalogue holds no backup of the new version, it starts ONE backup of it (a Redis claim per
  cluster and version, so two replicas start one), as the scheduler does: requester `upgrade`,
  peak hours overridden, the line after it with the on-call group if it fails. An upgrade still
  in progress (a Partial history entry at the head) is waited out.
- "No drilled backup younger than max_backup_age" (a cluster's own, ETCDBOT_MAX_BACKUP_AGE, or
  derived from its schedule) is posted at most once a day (a claim with a day's TTL), and
  `/etcd-status` shows it whenever it holds (`status_note`). A cluster the watch first saw
  recently has until max_backup_age after that to get its first drilled backup. The line for
  `/etcd-status` is the last round's (a status never waits on the catalogue).

Not here: the schedule itself (bot/scheduler.py), the drill (bot/drill.py via the backup procedure).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from bot import metrics
from bot.backups import BackupRecord, Catalogue
from bot.cluster.kube import KubeError
from bot.clusters import Clusters
from bot.config import ClusterSettings, Settings
from bot.log import get_logger
from bot.notify import Notifier, stale_line, stale_text
from bot.procedure import Admission
from bot.run_types import Busy
from bot.runner import Runner
from bot.scheduler import BackupScheduler
from bot.store import Run
from bot.tasks import cancel_and_wait
from procedures.backup import full_version

log = get_logger(__name__)

UPGRADE_REQUESTER = "upgrade"
WARN_EVERY = 24 * 3600  # seconds: the age warning at most daily
UPGRADE_CLAIM_TTL = 6 * 3600
RUN_WAIT = 6 * 3600.0


def upgrading(cluster_version: dict) -> bool:
    """An upgrade in progress: the newest history entry is not Completed yet."""
    history = (cluster_version.get("status") or {}).get("history") or []
    return bool(history) and history[0].get("state") != "Completed"


@dataclass
class BackupWatch:
    settings: Settings
    clusters: Clusters
    runner: Runner
    catalogue: Catalogue
    notifier: Notifier
    redis: aioredis.Redis
    scheduler: BackupScheduler
    prefix: str = "etcdbot"
    _task: asyncio.Task[None] | None = field(default=None, repr=False)
    _follows: set[asyncio.Task[None]] = field(default_factory=set, repr=False)
    _notes: dict[str, str | None] = field(default_factory=dict, repr=False)  # cluster -> /etcd-status line

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="etcdbot-backup-watch")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        for follow in list(self._follows):
            await cancel_and_wait(follow)

    async def _loop(self) -> None:
        while self._task is not None:
            await self.tick()
            await asyncio.sleep(self.settings.watch_interval)

    async def tick(self) -> None:
        """One round over every cluster; a cluster whose check fails is logged and skipped."""
        for cluster in self.settings.clusters:
            for check in (self.check_age, self.check_upgrade):
                try:
                    await check(cluster)
                except (OSError, aioredis.RedisError, KubeError) as exc:
                    log.warning("watch.check_failed", cluster=cluster.name, check=check.__name__, error=str(exc))
                except Exception:
                    log.exception("watch.check_error", cluster=cluster.name, check=check.__name__)

    # -- backup age ----------------------------------------------------------------------------
    async def newest_drilled(self, cluster: str) -> BackupRecord | None:
        return next((r for r in await self.catalogue.all(cluster=cluster) if r.drilled), None)

    async def _first_seen(self, cluster: str, *, now: float) -> float:
        key = f"{self.prefix}:watch:{cluster}:first-seen"
        await self.redis.set(key, str(now), nx=True)
        raw = await self.redis.get(key)
        return float(raw) if raw is not None else now

    async def stale(self, cluster: ClusterSettings, *, now: float | None = None) -> tuple[str, BackupRecord | None] | None:
        """(the warning's text, the newest drilled backup) when none is younger than max_backup_age."""
        max_age = self.settings.max_backup_age_of(cluster)
        newest = await self.newest_drilled(cluster.name)
        metrics.newest_drilled(cluster=cluster.name, finished_at=newest.finished_at if newest else None)
        if max_age is None:
            return None
        now = time.time() if now is None else now
        since = max(newest.finished_at if newest else 0.0, await self._first_seen(cluster.name, now=now))
        if now - since <= max_age:
            return None
        return stale_text(cluster=cluster.name, newest=newest, max_age=max_age, now=now), newest

    async def status_note(self, cluster_name: str) -> str | None:
        """What `/etcd-status` adds: the age warning, as of the last round (no Redis read per
        status: a burst of `/etcd-status` in an incident must not read the catalogue each time)."""
        return self._notes.get(cluster_name)

    async def check_age(self, cluster: ClusterSettings) -> None:
        now = time.time()
        found = await self.stale(cluster, now=now)
        self._notes[cluster.name] = found[0] if found else None
        if found is None:
            return
        if await self.redis.set(f"{self.prefix}:watch:{cluster.name}:age-warned", str(now), nx=True, ex=WARN_EVERY):
            log.warning("watch.backup_too_old", cluster=cluster.name, detail=found[0])
            max_age = self.settings.max_backup_age_of(cluster) or 0.0
            await self.notifier.post(cluster, stale_line(cluster=cluster.name, newest=found[1], max_age=max_age,
                                                         now=now, mention=await self.notifier.mention(cluster)))

    # -- after an upgrade ----------------------------------------------------------------------
    async def check_upgrade(self, cluster: ClusterSettings) -> None:
        kube = self.clusters.kube(cluster.name)
        if kube is None or not cluster.channels:
            return
        cv = await kube.get_cluster_version()
        version = full_version(cv)
        if not version or upgrading(cv):
            return
        key = f"{self.prefix}:watch:{cluster.name}:version"
        seen = await self.redis.get(key)
        if seen is None:
            await self.redis.set(key, version, nx=True)
            return
        before = seen.decode() if isinstance(seen, bytes) else str(seen)
        if before == version:
            return
        if any(r.version == version for r in await self.catalogue.all(cluster=cluster.name)):
            await self.redis.set(key, version)  # a backup of the new version exists already
            return
        claim = f"{self.prefix}:watch:{cluster.name}:upgrade-backup:{version}"
        if not await self.redis.set(claim, str(time.time()), nx=True, ex=UPGRADE_CLAIM_TTL):
            return  # another replica is taking it
        result = await self.scheduler.start_backup(cluster, requester=UPGRADE_REQUESTER)
        if isinstance(result, Busy | Admission):
            await self.redis.delete(claim)  # try again at the next round
            log.info("watch.upgrade_backup_deferred", cluster=cluster.name, version=version,
                     reason=result.message() if isinstance(result, Busy) else result.message)
            return
        await self.redis.set(key, version)
        log.info("watch.upgrade_backup", cluster=cluster.name, before=before, version=version, run_id=result.id)
        await self.notifier.post(cluster, (
            f":arrows_counterclockwise: `{cluster.name}` is now OpenShift {version} (was {before}). Taking a backup "
            f"of the new version (run `{result.id}`): a restore needs a backup of the same z-stream."))
        follow = asyncio.create_task(self._follow(cluster, result), name=f"etcdbot-upgrade-backup:{result.id}")
        self._follows.add(follow)
        follow.add_done_callback(self._follows.discard)

    async def _follow(self, cluster: ClusterSettings, run: Run) -> None:
        try:
            finished = await self.runner.wait(run.id, timeout=RUN_WAIT)
        except TimeoutError:
            return
        await self.scheduler.report(cluster, finished, next_fire=None, what="backup after the upgrade")
