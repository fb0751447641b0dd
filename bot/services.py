"""The long-lived pieces every run needs, built once per process: Redis, the throttled Slack sender,
the approvals, the runner, the backup store and its catalogue, and the backup scheduler.

Why a module of its own: `bot/app.py` builds the Slack app and serves it; what a run needs is the
same in Socket Mode, in HTTP mode and in tests that start the bot as a process, so it is built
here and `app.py` only opens and closes it.

It is also the composition root of procedures: the registry (`bot.procedure`) is filled by
importing the built-in procedure modules and `ETCDBOT_PROCEDURE_MODULES`, and `procedure(name,
parameters)` builds a run's steps through it; `context()` gives each step its typed context: the
cluster's API and nodes bound to the run's fence, etcd access, the backup store and catalogue.

Backups you can trust are wired here too: the store gets its restore driller
(ETCDBOT_DRILL_DIR), the catalogue its hooks (a failed drill notifies the channel, each deletion
goes to the audit stream, the backups live runs use are kept), the catalogue is rebuilt from the
store on disk at start (the disk is the truth; Redis may have lost its data), and the watch
(bot/watch.py: backup after an upgrade, backup age) starts beside the scheduler.

A restarted bot recovers the runs of a dead instance (`Runner.recover_interrupted()`): at start,
and again every `recover_every` seconds, because a bot killed a moment ago still counts as alive
until its presence key expires (`RunnerPolicy.instance_ttl`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from slack_sdk.http_retry.builtin_async_handlers import async_default_handlers
from slack_sdk.web.async_client import AsyncWebClient

from bot.approvals import ApprovalPolicy, ApproverSpec, RedisApprovals, SlackApprovers
from bot.audit import Audit
from bot.backups import BACKUP_ID_RE, BackupRecord, BackupStore, Catalogue, CatalogueHooks, DrillOutcome
from bot.cluster.nodes import CommandNote, NodeShell
from bot.cluster.stepetcd import StepEtcd
from bot.clusters import Clusters
from bot.config import Settings
from bot.drill import Driller
from bot.log import get_logger
from bot.metrics import SlackApiObserver
from bot.notify import Notifier, drill_failed_line
from bot.procedure import (
    Fence,
    Procedure,
    StepContext,
    StepId,
    StepResult,
    build_procedure,
    load_procedures,
    no_fence,
)
from bot.progress import ThrottledSender
from bot.run_types import Heartbeat, RunnerPolicy
from bot.runner import Runner
from bot.scheduler import BackupScheduler
from bot.shutdowns import ShutdownLog
from bot.store import Run, RunStore, connect_redis
from bot.tasks import cancel_and_wait
from bot.watch import UPGRADE_REQUESTER, BackupWatch

log = get_logger(__name__)

# The procedures every bot has; ETCDBOT_PROCEDURE_MODULES adds more (tests load a test procedure).
BUILTIN_PROCEDURES = ("procedures.backup", "procedures.verify", "procedures.prune", "procedures.restore",
                      "procedures.replace_member", "procedures.shutdown", "procedures.restart_check",
                      "procedures.approve_csrs")
BOT_REQUESTERS = frozenset({"scheduler", UPGRADE_REQUESTER})  # their runs get a line of their own when they fail
BACKUP = "backup"

REDIS_TIMEOUT = 15.0  # seconds; above the approvals' BLPOP poll (5 s)


@dataclass
class Services:
    settings: Settings
    clusters: Clusters
    redis: aioredis.Redis
    client: AsyncWebClient
    sender: ThrottledSender
    runner: Runner
    store: BackupStore
    catalogue: Catalogue
    recover_every: float = 5.0
    scheduler: BackupScheduler | None = None
    notifier: Notifier | None = None
    watch: BackupWatch | None = None
    _recovery: asyncio.Task[None] | None = field(default=None, repr=False)

    def procedure(self, name: str, parameters: Mapping[str, Any]) -> Procedure:
        """Name -> Procedure through the registry: how a run starts, and how the runner rebuilds
        a stored run's steps after a restart."""
        return build_procedure(name, parameters)

    def context(self, *, run: Run, results: dict[StepId, StepResult], heartbeat: Heartbeat,
                fence: Fence = no_fence) -> StepContext:
        """The typed context of one run's steps. `fence` is the runner's lock check; the kube,
        hosts and etcd handed out here are bound to it (also when the runner later replaces it)."""
        cluster = self.settings.cluster(run.cluster)
        if cluster is None:
            raise KeyError(f"cluster {run.cluster!r} is no longer configured")
        kube = self.clusters.kube(run.cluster)
        hosts = self.clusters.hosts(run.cluster)
        note = self._command_note(run)
        return StepContext(
            run_id=run.id, cluster=cluster, settings=self.settings, parameters=run.parameters,
            kube=kube,  # type: ignore[arg-type]
            hosts=NodeShell(hosts, kube=kube, note=note) if hosts is not None else None,  # type: ignore[arg-type]
            results=results, heartbeat=heartbeat, requester=run.requester, fence=fence,
            etcd=StepEtcd(kube=kube, hosts=hosts) if kube is not None or hosts is not None else None,
            store=self.store, catalogue=self.catalogue, note_command=note,
            shutdowns=ShutdownLog(redis=self.redis),
        )

    def _command_note(self, run: Run) -> CommandNote:
        """Every command a run's steps send, with its exit status, in the cluster's audit stream
        (event `command`). A record that cannot be written is logged, never fatal to the step."""
        audit = self.runner.audit

        async def note(*, target: str, command: str, rc: int | None, elapsed: float, error: str = "") -> None:
            try:
                await audit.record(cluster=run.cluster, event="command", actor=run.requester, run_id=run.id,
                                   target=target, command=command[:2000], rc="none" if rc is None else rc,
                                   elapsed=f"{elapsed:.3f}", error=error[:500] or None)
            except (OSError, aioredis.RedisError) as exc:
                log.warning("audit.command_failed", run_id=run.id, error=str(exc))

        return note

    async def open(self) -> None:
        await self.runner.open()
        await self.sync_catalogue()
        await self._recover()
        self._recovery = asyncio.create_task(self._keep_recovering(), name="etcdbot-recovery")
        if self.scheduler is not None:  # after recovery: a scheduled fire must see the recovered locks
            self.scheduler.start()
        if self.watch is not None:
            self.watch.start()

    async def sync_catalogue(self) -> None:
        """The catalogue rebuilt from the store's metadata files (the source of truth): after a
        Redis FLUSHALL or a lost volume, `/etcd-backups` lists every stored backup again."""
        for cluster in self.settings.cluster_names:
            try:
                records = await asyncio.to_thread(self.store.records, cluster=cluster)
                report = await self.catalogue.sync(cluster=cluster, records=records)
            except (OSError, aioredis.RedisError) as exc:
                log.warning("catalogue.sync_failed", cluster=cluster, error=str(exc))
                continue
            log.info("catalogue.synced", cluster=cluster, total=report.total, added=report.added,
                     changed=report.changed, removed=report.removed)

    # -- the catalogue's hooks (the foundation tells the engine) -------------------------------
    async def backup_drilled(self, record: BackupRecord, outcome: DrillOutcome, asked_by: str) -> None:
        """A failed drill is said in the cluster's channel, with the on-call group; a bot-started
        run's failure line says it already."""
        cluster = self.settings.cluster(record.cluster)
        if outcome.ok or cluster is None or self.notifier is None or asked_by in BOT_REQUESTERS:
            return
        await self.notifier.post(cluster, drill_failed_line(record=record, outcome=outcome,
                                                            mention=await self.notifier.mention(cluster)))

    async def backup_deleted(self, record: BackupRecord, why: str, actor: str, run_id: str) -> None:
        await audit_deletion(self.runner.audit, record=record, why=why, actor=actor, run_id=run_id)

    async def backups_in_use(self, cluster: str) -> frozenset[str]:
        return await backups_in_use(RunStore(redis=self.redis), cluster=cluster)


    async def _recover(self) -> None:
        try:
            for run in await self.runner.recover_interrupted():
                log.warning("run.interrupted_recovered", run_id=run.id, cluster=run.cluster, procedure=run.procedure)
        except (OSError, aioredis.RedisError) as exc:
            log.warning("run.recovery_failed", error=str(exc))

    async def _keep_recovering(self) -> None:
        while self._recovery is not None:
            await asyncio.sleep(self.recover_every)
            await self._recover()

    async def close(self) -> None:
        if self.watch is not None:
            await self.watch.stop()
        if self.scheduler is not None:  # first: no fire may start a run while the runner stops
            await self.scheduler.stop()
        recovery, self._recovery = self._recovery, None
        if recovery is not None:
            await cancel_and_wait(recovery)
        with contextlib.suppress(Exception):  # stopping: Redis may already be gone
            await self.runner.close()
        await self.sender.close()
        await self.redis.aclose()
        if self.client.session is not None:
            await self.client.session.close()


async def audit_deletion(audit: Audit, *, record: BackupRecord, why: str, actor: str, run_id: str) -> None:
    """One audit entry per deleted backup: which, why, by whom, in which run."""
    await audit.record(
        cluster=record.cluster, event="backup.deleted", actor=actor or "retention", run_id=run_id,
        backup=record.id, reason=why, version=record.version, finished_at=record.finished_at,
        size=record.size, drilled="yes" if record.drilled else "no",
    )


async def backups_in_use(runs: RunStore, *, cluster: str) -> frozenset[str]:
    """Backup ids named by the parameters of the cluster's live runs (a restore's, a verify's)."""
    used: set[str] = set()
    for run in await runs.load_many(await runs.live_run_ids()):
        if run.cluster != cluster or run.state.finished:
            continue
        used |= {str(v) for v in run.parameters.values() if isinstance(v, str) and BACKUP_ID_RE.fullmatch(v)}
    return frozenset(used)


def build_services(settings: Settings, *, clusters: Clusters) -> Services:
    """Everything a run needs; nothing is connected until `open()`. Imports the procedure modules
    (so a wrong ETCDBOT_PROCEDURE_MODULES stops the bot here, at start)."""
    load_procedures((*BUILTIN_PROCEDURES, *settings.procedure_modules))
    redis = connect_redis(settings.redis_url, timeout=REDIS_TIMEOUT, **settings.redis_options())
    # The runner's Slack traffic goes through the same observer as Bolt's (error and 429 metrics).
    client = AsyncWebClient(token=settings.slack_bot_token.get_secret_value(), base_url=settings.slack_api_url,
                            timeout=30, retry_handlers=[SlackApiObserver(), *async_default_handlers()])
    sender = ThrottledSender(client=client)
    approval_policy = ApprovalPolicy(key=settings.approval_key(), expiry=settings.approval_expiry,
                                     required=dict(settings.approvals_required))

    def approvers_of(cluster: str) -> ApproverSpec:
        spec = settings.approvers_of(cluster)
        return ApproverSpec(usergroup=spec.usergroup, users=spec.users)

    approvals = RedisApprovals(
        redis=redis, sender=sender, audit=Audit(redis=redis), policy=approval_policy,
        approvers=SlackApprovers(client=client, spec_of=approvers_of),
    )
    store = BackupStore(root=settings.backup_dir, keys_root=settings.backup_keys_dir,
                        copy_rate=settings.backup_copy_rate,
                        driller=Driller(work_dir=settings.drill_dir, timeout=settings.drill_timeout))
    holder: dict[str, Services] = {}
    catalogue = Catalogue(redis=redis, hooks=CatalogueHooks(
        drilled=lambda record, outcome, by: holder["services"].backup_drilled(record, outcome, by),
        deleted=lambda record, why, actor, run_id: holder["services"].backup_deleted(record, why, actor, run_id),
        in_use=lambda cluster: holder["services"].backups_in_use(cluster),
    ))

    def procedures(name: str, parameters: Mapping[str, Any]) -> Procedure:
        return holder["services"].procedure(name, parameters)

    def context(*, run: Run, results: dict[StepId, StepResult], heartbeat: Heartbeat,
                fence: Fence = no_fence) -> StepContext:
        return holder["services"].context(run=run, results=results, heartbeat=heartbeat, fence=fence)

    runner = Runner(redis=redis, sender=sender, approvals=approvals, approval_policy=approval_policy,
                    context_factory=context, procedures=procedures,
                    policy=RunnerPolicy(lock_timeout=settings.lock_timeout))
    services = Services(settings=settings, clusters=clusters, redis=redis, client=client, sender=sender,
                        runner=runner, store=store, catalogue=catalogue)
    notifier = Notifier(settings=settings, sender=sender, client=client)
    services.notifier = notifier
    services.scheduler = BackupScheduler(
        settings=settings, clusters=clusters, runner=runner, sender=sender, redis=redis,
        procedure=lambda: services.procedure(BACKUP, {}), catalogue=catalogue, notifier=notifier,
    )
    services.watch = BackupWatch(settings=settings, clusters=clusters, runner=runner, catalogue=catalogue,
                                 notifier=notifier, redis=redis, scheduler=services.scheduler)
    holder["services"] = services
    return services
