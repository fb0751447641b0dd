"""The long-lived pieces every run needs, built once per process: Redis, the throttled Slack sender,
the approvals, the runner, the backup store and its catalogue, and the backup scheduler.

Why a module of its own: `bot/app.py` builds the Slack app and serves it; what a run needs is the
same in Socket Mode, in HTTP mode and in tests that start the bot as a process, so it is built
here and `app.py` only opens and closes it.

It is also the composition root of procedures: the registry (`bot.procedure`) is filled by
importing the built-in procedure modules and `ETCDBOT_PROCEDURE_MODULES`, and `procedure(name,
parameters)` builds a run's steps through it; `context()` gives each step its typed context: the
cluster's API and nodes bound to the run's fence, etcd access, the backup store and catalogue.

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
from bot.backups import BackupStore, Catalogue
from bot.cluster.nodes import NodeShell
from bot.cluster.stepetcd import StepEtcd
from bot.clusters import Clusters
from bot.config import Settings
from bot.log import get_logger
from bot.metrics import SlackApiObserver
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
from bot.runner import Heartbeat, Runner
from bot.scheduler import BackupScheduler
from bot.shutdowns import ShutdownLog
from bot.store import Run, connect_redis
from bot.tasks import cancel_and_wait

log = get_logger(__name__)

# The procedures every bot has; ETCDBOT_PROCEDURE_MODULES adds more (tests load a test procedure).
BUILTIN_PROCEDURES = ("procedures.backup", "procedures.shutdown", "procedures.restart_check",
                      "procedures.approve_csrs")
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
        return StepContext(
            run_id=run.id, cluster=cluster, settings=self.settings, parameters=run.parameters,
            kube=kube,  # type: ignore[arg-type]
            hosts=NodeShell(hosts, kube=kube) if hosts is not None else None,  # type: ignore[arg-type]
            results=results, heartbeat=heartbeat, requester=run.requester, fence=fence,
            etcd=StepEtcd(kube=kube, hosts=hosts) if kube is not None or hosts is not None else None,
            store=self.store, catalogue=self.catalogue, shutdowns=ShutdownLog(redis=self.redis),
        )

    async def open(self) -> None:
        await self.runner.open()
        await self._recover()
        self._recovery = asyncio.create_task(self._keep_recovering(), name="etcdbot-recovery")
        if self.scheduler is not None:  # after recovery: a scheduled fire must see the recovered locks
            self.scheduler.start()

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
                        copy_rate=settings.backup_copy_rate)
    catalogue = Catalogue(redis=redis)
    holder: dict[str, Services] = {}

    def procedures(name: str, parameters: Mapping[str, Any]) -> Procedure:
        return holder["services"].procedure(name, parameters)

    def context(*, run: Run, results: dict[StepId, StepResult], heartbeat: Heartbeat,
                fence: Fence = no_fence) -> StepContext:
        return holder["services"].context(run=run, results=results, heartbeat=heartbeat, fence=fence)

    runner = Runner(redis=redis, sender=sender, approvals=approvals, approval_policy=approval_policy,
                    context_factory=context, procedures=procedures)
    services = Services(settings=settings, clusters=clusters, redis=redis, client=client, sender=sender,
                        runner=runner, store=store, catalogue=catalogue)
    services.scheduler = BackupScheduler(
        settings=settings, clusters=clusters, runner=runner, sender=sender, redis=redis,
        procedure=lambda: services.procedure(BACKUP, {}),
    )
    holder["services"] = services
    return services
