"""The watch against a REAL redis-server, with a stand-in cluster API, runner and Slack: one
backup per upgrade (across two replicas, none while the upgrade is in progress, none when a
backup of the new version exists), and the age warning at most once a day, also for `/etcd-status`."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bot.backups import BackupStore, Catalogue
from bot.config import Settings, load_settings
from bot.notify import Notifier
from bot.procedure import Procedure, RunId
from bot.run_types import Busy
from bot.scheduler import BackupScheduler
from bot.store import Run
from bot.watch import BackupWatch
from tests.trust.stored import make_backup


def cluster_version(version: str, *, partial: str = "") -> dict[str, Any]:
    history = [{"state": "Completed", "version": version}]
    if partial:
        history.insert(0, {"state": "Partial", "version": partial})
    return {"status": {"desired": {"version": partial or version}, "history": history}}


@dataclass
class Stand:
    """The cluster's API (ClusterVersion), the runner and Slack of one replica."""

    cv: dict[str, Any]
    starts: list[dict[str, Any]] = field(default_factory=list)
    posts: list[str] = field(default_factory=list)

    def kube(self, _cluster: str) -> Stand:
        return self

    async def get_cluster_version(self) -> dict[str, Any]:
        return self.cv

    async def start(self, procedure: Procedure, **kwargs: Any) -> Run:
        self.starts.append(kwargs)
        return Run.new(run_id=RunId(f"run{len(self.starts)}"), procedure=Procedure(name="backup", title="Backing up",
                                                                                    chapter="1", steps=()),
                       cluster=kwargs["cluster"], parameters={}, requester=kwargs["requester"],
                       channel=kwargs["channel"], owner="me", now=time.time())

    async def wait(self, run_id: RunId, *, timeout: float) -> None:
        return None

    async def post(self, *, channel: str, text: str) -> str:
        self.posts.append(text)
        return "1.0"


def settings(tmp_path: Path, **extra: str) -> Settings:
    (tmp_path / "kubeconfig").write_text("x")
    clusters = [{"name": "lab", "kubeconfig": str(tmp_path / "kubeconfig"), "channels": ["C0INCIDENT"]}]
    return load_settings(environ={"ETCDBOT_SLACK_BOT_TOKEN": "xoxb-x", "ETCDBOT_SLACK_APP_TOKEN": "xapp-x",
                                  "ETCDBOT_CLUSTERS": json.dumps(clusters), **extra})


def watch(s: Settings, rds: aioredis.Redis, stand: Stand, catalogue: Catalogue) -> BackupWatch:
    scheduler = BackupScheduler(settings=s, clusters=stand, runner=stand, sender=stand, redis=rds,  # type: ignore[arg-type]
                                procedure=lambda: None)  # type: ignore[arg-type, return-value]
    return BackupWatch(settings=s, clusters=stand, runner=stand, catalogue=catalogue,  # type: ignore[arg-type]
                       notifier=Notifier(settings=s, sender=stand), redis=rds, scheduler=scheduler)  # type: ignore[arg-type]


async def test_one_backup_per_upgrade_across_replicas(rds: aioredis.Redis, tmp_path: Path) -> None:
    s = settings(tmp_path)
    catalogue = Catalogue(redis=rds)
    one, two = Stand(cv=cluster_version("4.5.2")), Stand(cv=cluster_version("4.5.2"))
    first, second = watch(s, rds, one, catalogue), watch(s, rds, two, catalogue)
    await asyncio.gather(first.tick(), second.tick())  # first sight: remembered, nothing started
    assert one.starts == two.starts == []
    for stand in (one, two):
        stand.cv = cluster_version("4.5.2", partial="4.5.3")  # upgrading: wait
    await asyncio.gather(first.tick(), second.tick())
    assert one.starts == two.starts == []
    for stand in (one, two):
        stand.cv = cluster_version("4.5.3")
    await asyncio.gather(first.tick(), second.tick())
    (start,) = one.starts + two.starts
    assert start["requester"] == "upgrade" and start["cluster"] == "lab" and start["channel"] == "C0INCIDENT"
    (note,) = one.posts + two.posts
    assert "`lab` is now OpenShift 4.5.3 (was 4.5.2)" in note and "same z-stream" in note
    for _ in range(3):  # later rounds: nothing new
        await asyncio.gather(first.tick(), second.tick())
    assert len(one.starts + two.starts) == 1
    await first.stop()
    await second.stop()


async def test_no_backup_when_one_of_the_new_version_exists_or_the_cluster_is_busy(rds: aioredis.Redis,
                                                                                    tmp_path: Path) -> None:
    s = settings(tmp_path)
    catalogue = Catalogue(redis=rds)
    stand = Stand(cv=cluster_version("4.5.2"))
    w = watch(s, rds, stand, catalogue)
    await w.tick()
    await catalogue.add(make_backup(BackupStore(root=tmp_path / "b", _fsync=False), version="4.5.3"))
    stand.cv = cluster_version("4.5.3")
    await w.tick()
    assert stand.starts == [] and stand.posts == []

    busy = Stand(cv=cluster_version("4.5.3"))

    async def refuse(procedure: Procedure, **kwargs: Any) -> Busy:
        busy.starts.append(kwargs)
        return Busy(cluster="lab", run_id=RunId("feedbeef"))

    busy.start = refuse  # type: ignore[method-assign]
    await rds.flushdb()
    w2 = watch(s, rds, busy, Catalogue(redis=rds))
    await rds.set("etcdbot:watch:lab:version", "4.5.2")
    await w2.tick()
    await w2.tick()  # busy: the claim is given back, and the next round tries again
    assert len(busy.starts) == 2 and busy.posts == []


async def test_the_age_warning_at_most_daily_and_in_status(rds: aioredis.Redis, tmp_path: Path) -> None:
    s = settings(tmp_path, ETCDBOT_MAX_BACKUP_AGE="1h")
    catalogue = Catalogue(redis=rds)
    store = BackupStore(root=tmp_path / "b", _fsync=False)
    old = make_backup(store, at=time.time() - 3 * 3600, drilled=True)
    await catalogue.add(old)
    await catalogue.add(make_backup(store, at=time.time() - 60, drilled=False))  # newer, but its drill failed
    stand = Stand(cv=cluster_version("4.5.2"))
    w = watch(s, rds, stand, catalogue)
    await rds.set("etcdbot:watch:lab:first-seen", str(time.time() - 7200))
    for _ in range(3):
        await w.tick()
    (warning,) = [p for p in stand.posts if "No drilled backup" in p]
    assert "younger than 60 min" in warning and old.id in warning and "taken 3.0 h ago" in warning
    note = await w.status_note("lab")
    assert note is not None and "No drilled backup of `lab` younger than 60 min" in note
    # A drilled backup arrives: the note is gone.
    await catalogue.add(make_backup(store, drilled=True))
    await w.tick()
    assert await w.status_note("lab") is None


async def test_a_fresh_cluster_gets_max_age_for_its_first_backup(rds: aioredis.Redis, tmp_path: Path) -> None:
    stand = Stand(cv=cluster_version("4.5.2"))
    w = watch(settings(tmp_path, ETCDBOT_MAX_BACKUP_AGE="1h"), rds, stand, Catalogue(redis=rds))
    await w.tick()
    assert stand.posts == [] and await w.status_note("lab") is None
