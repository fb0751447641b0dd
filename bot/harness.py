"""The one-step harness: run ONE step of a procedure against a real cluster (the lab, in tests)
with a context the test controls, the way `temporalio.testing.ActivityEnvironment` runs one
activity.

Why: a procedure is written step by step in the document's order, and each step should be
checkable alone, against real etcd, SSH and the API, without Slack, a lock or a whole run. The
context is the one the bot builds (`Services.context` makes the same thing): the cluster's API
and nodes bound to a fence, the backup store and catalogue. What the runner would add is in the
test's hands instead: earlier steps' results (`given`), the fence (a test can make it refuse),
overrides, heartbeats (recorded).

    async with StepEnvironment.from_settings(settings, cluster="lab") as env:
        picked = await env.run(backup.STEPS[1])          # a StepResult, kept for later steps
        assert env.result(backup.S_PICK, backup.PickedMasters).candidates

Not the runner: no lock, no approval gate, no retries, no Redis run record. The step's timeout
is applied, as the runner would.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import redis.asyncio as aioredis

from bot.backups import BackupStore, Catalogue
from bot.cluster.nodes import NodeShell
from bot.cluster.stepetcd import StepEtcd
from bot.clusters import Clusters
from bot.config import Settings, load_settings
from bot.drill import Driller
from bot.procedure import (
    Admission,
    Fence,
    PlannedCommand,
    Procedure,
    RunId,
    Step,
    StepContext,
    StepId,
    StepResult,
    admit,
    no_fence,
    plan_of,
)
from bot.shutdowns import ShutdownLog

R = TypeVar("R")


@dataclass
class StepEnvironment:
    """A step context for one cluster of `settings`, and the means to run one step in it."""

    settings: Settings
    cluster: str
    run_id: RunId = field(default_factory=lambda: RunId(f"step-{secrets.token_hex(4)}"))
    parameters: dict[str, Any] = field(default_factory=dict)
    results: dict[StepId, StepResult] = field(default_factory=dict)
    fence: Fence = no_fence
    overrides: frozenset[str] = frozenset()
    requester: str = "U0HARNESS"
    heartbeats: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.settings.cluster(self.cluster) is None:
            raise KeyError(f"no cluster {self.cluster!r} in the settings (known: {', '.join(self.settings.cluster_names)})")
        self._clusters = Clusters(self.settings)
        self._redis: aioredis.Redis | None = None
        self.store = BackupStore(root=self.settings.backup_dir, keys_root=self.settings.backup_keys_dir,
                                 copy_rate=self.settings.backup_copy_rate,
                                 driller=Driller(work_dir=self.settings.drill_dir, timeout=self.settings.drill_timeout))

    @classmethod
    def from_settings(cls, settings: Settings, *, cluster: str | None = None, **options: Any) -> StepEnvironment:
        return cls(settings=settings, cluster=cluster or settings.cluster_names[0], **options)

    @classmethod
    def from_env_file(cls, path: Path, *, cluster: str | None = None, environ: Mapping[str, str] | None = None,
                      **options: Any) -> StepEnvironment:
        """From an env file of `export ETCDBOT_...` lines (the lab writes `DIR/env`)."""
        return cls.from_settings(load_settings(env_file=path, environ=dict(environ or {})), cluster=cluster, **options)

    async def __aenter__(self) -> StepEnvironment:
        return self

    async def __aexit__(self, _type: type[BaseException] | None, _exc: BaseException | None,
                        _tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        self._clusters.close()

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            self._redis = aioredis.Redis.from_url(self.settings.redis_url, socket_timeout=10, socket_connect_timeout=10,
                                                  **self.settings.redis_options())
        return self._redis

    @property
    def catalogue(self) -> Catalogue:
        return Catalogue(redis=self.redis)

    @property
    def shutdowns(self) -> ShutdownLog:
        return ShutdownLog(redis=self.redis)

    async def _heartbeat(self, text: str) -> None:
        self.heartbeats.append(text)

    def context(self) -> StepContext:
        """The context a step of a run on this cluster gets (as `Services.context` builds it)."""
        settings_cluster = self.settings.cluster(self.cluster)
        assert settings_cluster is not None
        kube = self._clusters.kube(self.cluster)
        hosts = self._clusters.hosts(self.cluster)
        return StepContext(
            run_id=self.run_id, cluster=settings_cluster, settings=self.settings, parameters=dict(self.parameters),
            kube=kube,  # type: ignore[arg-type]
            hosts=NodeShell(hosts, kube=kube) if hosts is not None else None,  # type: ignore[arg-type]
            results=self.results, heartbeat=self._heartbeat, requester=self.requester, fence=self.fence,
            etcd=StepEtcd(kube=kube, hosts=hosts) if kube is not None or hosts is not None else None,
            overrides=self.overrides, store=self.store, catalogue=self.catalogue, shutdowns=self.shutdowns,
        )

    def given(self, step_id: StepId, result: Any, *, summary: str = "") -> None:
        """What an earlier step left, as if it had run: a typed result (or a StepResult)."""
        self.results[step_id] = result if isinstance(result, StepResult) else StepResult.of(summary or step_id, result)

    def result(self, step_id: StepId, cls: type[R]) -> R:
        return self.context().result(step_id, cls)

    async def run(self, step: Step) -> StepResult:
        """Runs the step once under its timeout; its result is kept for the steps after it. A
        StepFailed (or any error) propagates to the test as it is."""
        async with asyncio.timeout(step.timeout):
            result = await step.run(self.context())
        self.results[step.id] = result
        return result

    async def plan(self, step: Step) -> list[PlannedCommand]:
        return await plan_of(step, self.context())

    async def admit(self, procedure: Procedure) -> Admission:
        return await admit(procedure, self.context())
