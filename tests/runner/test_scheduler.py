"""The duplicate-fire guard against a REAL redis-server: two replicas fire the same schedule at the
same moment; exactly one acts (one run started, or one "busy" message), the other stands down.

The runner, the cluster and Slack are stand-ins that record what they are asked: what is under
test is the guard and the scheduler's decisions, not the backup (tests/e2e/test_backup_schedule.py
runs the real one)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bot.config import Settings, load_settings
from bot.procedure import Admission, Procedure, RunId
from bot.run_types import Busy
from bot.scheduler import BackupScheduler, claim_fire
from procedures.backup import age_refusal


async def test_one_claim_per_fire(rds: aioredis.Redis) -> None:
    fired = datetime(2024, 1, 1, 3, 0, tzinfo=UTC)
    claims = await asyncio.gather(*(claim_fire(rds, cluster="lab", fired=fired) for _ in range(8)))
    assert sorted(claims) == [False] * 7 + [True]
    assert await claim_fire(rds, cluster="lab", fired=fired + timedelta(minutes=1))  # the next fire is new
    assert await claim_fire(rds, cluster="other", fired=fired)  # another cluster's fire is its own
    ttl = await rds.ttl(f"etcdbot:schedule:lab:{int(fired.timestamp())}")
    assert 0 < ttl <= 2 * 24 * 3600  # the keys clean themselves


@dataclass
class Recorder:
    """Stands in for the runner (with the backup's 24 h admission), the cluster's API and the Slack
    sender of one replica."""

    installed: datetime = field(default_factory=lambda: datetime.now(UTC) - timedelta(hours=48))
    starts: list[dict[str, Any]] = field(default_factory=list)
    posts: list[str] = field(default_factory=list)

    async def start(self, procedure: Procedure, *, overrides: frozenset[str] = frozenset(),
                    **kwargs: Any) -> Busy | Admission:
        refusal = age_refusal(cluster=kwargs["cluster"], installed=self.installed, now=datetime.now(UTC))
        if refusal is not None:
            return refusal
        self.starts.append(kwargs)
        return Busy(cluster=kwargs["cluster"], run_id=RunId("feedbeef"), procedure="Backing up etcd data",
                    requester="U0ALICE01")

    async def post(self, *, channel: str, text: str) -> str:
        self.posts.append(text)
        return "1.0"


def settings(tmp_path: Path) -> Settings:
    (tmp_path / "kubeconfig").write_text("x")
    clusters = [{"name": "lab", "kubeconfig": str(tmp_path / "kubeconfig"), "channels": ["C0INCIDENT"]}]
    return load_settings(environ={"ETCDBOT_SLACK_BOT_TOKEN": "xoxb-x", "ETCDBOT_SLACK_APP_TOKEN": "xapp-x",
                                  "ETCDBOT_CLUSTERS": json.dumps(clusters), "ETCDBOT_BACKUP_SCHEDULE": "* * * * *"})


def replica(s: Settings, rds: aioredis.Redis, recorder: Recorder) -> BackupScheduler:
    scheduler = BackupScheduler(settings=s, clusters=recorder, runner=recorder, sender=recorder,  # type: ignore[arg-type]
                                redis=rds, procedure=lambda: None)  # type: ignore[arg-type, return-value]
    scheduler.start()
    return scheduler


async def test_two_replicas_on_a_busy_cluster_post_busy_once(rds: aioredis.Redis, tmp_path: Path) -> None:
    s = settings(tmp_path)
    one, two = Recorder(), Recorder()
    first, second = replica(s, rds, one), replica(s, rds, two)
    try:
        await asyncio.gather(first.fire("lab"), second.fire("lab"))
    finally:
        await first.stop()
        await second.stop()
    assert len(one.starts) + len(two.starts) == 1
    (start,) = one.starts + two.starts
    assert start == {"cluster": "lab", "parameters": {}, "requester": "scheduler", "channel": "C0INCIDENT"}
    (busy,) = one.posts + two.posts
    assert "Scheduled backup skipped" in busy and "run `feedbeef`" in busy and "/etcd-abort feedbeef" in busy


async def test_a_young_cluster_is_refused_once_not_at_every_fire(rds: aioredis.Redis, tmp_path: Path) -> None:
    s = settings(tmp_path)
    recorder = Recorder(installed=datetime.now(UTC) - timedelta(hours=10))
    scheduler = replica(s, rds, recorder)
    try:
        for _ in range(3):
            await rds.delete(*(await rds.keys("etcdbot:schedule:lab:1*")) or ["none"])  # three distinct fires
            await scheduler.fire("lab")
    finally:
        await scheduler.stop()
    assert recorder.starts == []
    (refusal,) = recorder.posts
    assert "wait until" in refusal and "24 h after installation" in refusal and "resumes by itself" in refusal


async def test_a_restarted_bot_catches_up_a_missed_fire_once(rds: aioredis.Redis, tmp_path: Path) -> None:
    """Every minute fires, so a fire lies in the grace window at start: the first replica to come up
    takes it without waiting for the next minute; one started after it does not take it again."""
    s = settings(tmp_path)
    first_rec, second_rec = Recorder(), Recorder()
    first = replica(s, rds, first_rec)
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while not first_rec.starts and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert len(first_rec.starts) == 1, "the missed fire was not caught up at start"
        fired_keys = await rds.keys("etcdbot:schedule:lab:1*")
        second = replica(s, rds, second_rec)
        try:
            while second._scheduler is not None and second._scheduler.get_job("backup:lab:catch-up") is not None:
                await asyncio.sleep(0.05)  # the catch-up job ran (or was dropped) on the second replica
            await asyncio.sleep(0)
        finally:
            await second.stop()
        same_fire = await rds.keys("etcdbot:schedule:lab:1*")
        if same_fire == fired_keys:  # no new minute began meanwhile: the second replica must not have acted
            assert second_rec.starts == []
    finally:
        await first.stop()
