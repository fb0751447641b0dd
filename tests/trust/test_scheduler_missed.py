"""Fires missed while no bot ran, against a REAL redis-server: said once at start (two replicas
starting together say it once), however long ago, with the latest fire taken once; a replica that
kept running leaves nothing to report. The runner and Slack are stand-ins that record what they
are asked (tests/e2e/test_backup_schedule.py runs the real thing)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bot.config import Settings, load_settings
from bot.procedure import Procedure, RunId
from bot.run_types import Busy
from bot.scheduler import BackupScheduler, last_key, missed_fires, trigger_for


@dataclass
class Recorder:
    starts: list[dict[str, Any]] = field(default_factory=list)
    posts: list[str] = field(default_factory=list)

    async def start(self, procedure: Procedure, **kwargs: Any) -> Busy:
        self.starts.append(kwargs)
        return Busy(cluster=kwargs["cluster"], run_id=RunId("feedbeef"), procedure="Backing up etcd data",
                    requester="scheduler")

    async def post(self, *, channel: str, text: str) -> str:
        self.posts.append(text)
        return "1.0"


def settings(tmp_path: Path) -> Settings:
    (tmp_path / "kubeconfig").write_text("x")
    clusters = [{"name": "lab", "kubeconfig": str(tmp_path / "kubeconfig"), "channels": ["C0INCIDENT"]}]
    return load_settings(environ={"ETCDBOT_SLACK_BOT_TOKEN": "xoxb-x", "ETCDBOT_SLACK_APP_TOKEN": "xapp-x",
                                  "ETCDBOT_CLUSTERS": json.dumps(clusters), "ETCDBOT_BACKUP_SCHEDULE": "* * * * *",
                                  "ETCDBOT_ONCALL_USERGROUP": "S0ONCALL"})


def replica(s: Settings, rds: aioredis.Redis, recorder: Recorder) -> BackupScheduler:
    return BackupScheduler(settings=s, clusters=recorder, runner=recorder, sender=recorder,  # type: ignore[arg-type]
                           redis=rds, procedure=lambda: None)  # type: ignore[arg-type, return-value]


def test_missed_fires_counts_a_month_of_minutes_quickly() -> None:
    every_minute = trigger_for("* * * * *", timezone="UTC")
    after = datetime(2026, 10, 1, tzinfo=UTC)
    started = time.monotonic()
    fires, total = missed_fires(every_minute, after=after, until=after + timedelta(days=31))
    assert total == 31 * 24 * 60 and fires[0] == after + timedelta(minutes=1) and fires[-1] == after + timedelta(days=31)
    assert time.monotonic() - started < 30
    nightly = trigger_for("0 3 * * *", timezone="Europe/Berlin")
    fires, total = missed_fires(nightly, after=after, until=after + timedelta(days=3))
    assert total == 3 and all(f.astimezone(nightly.timezone).hour == 3 for f in fires)


async def test_two_replicas_starting_after_three_missed_fires_say_it_once(rds: aioredis.Redis, tmp_path: Path) -> None:
    s = settings(tmp_path)
    now = datetime.now(UTC)
    if now.second > 50:  # keep the minute the same while the two replicas start
        await asyncio.sleep(61 - now.second)
        now = datetime.now(UTC)
    last = now.replace(second=0, microsecond=0) - timedelta(minutes=3)
    await rds.set(last_key("lab"), str(int(last.timestamp())))
    one, two = Recorder(), Recorder()
    first, second = replica(s, rds, one), replica(s, rds, two)
    for scheduler in (first, second):
        scheduler._triggers["lab"] = trigger_for("* * * * *", timezone="UTC")
    await asyncio.gather(first.at_start("lab"), second.at_start("lab"))

    (message,) = [p for p in one.posts + two.posts if "did not run" in p]
    assert "3 scheduled backups of `lab` did not run while the bot was down" in message
    for minute in (1, 2, 3):
        assert f"{last + timedelta(minutes=minute):%Y-%m-%d %H:%M:%S} UTC" in message
    assert "being taken now" in message and "<!subteam^S0ONCALL>" in message
    assert len(one.starts) + len(two.starts) == 1  # the latest fire, caught up once
    assert int(await rds.get(last_key("lab"))) == int((last + timedelta(minutes=3)).timestamp())

    # Started again at once: nothing was missed since, nothing said, nothing started.
    three = Recorder()
    third = replica(s, rds, three)
    third._triggers["lab"] = trigger_for("* * * * *", timezone="UTC")
    await third.at_start("lab")
    assert three.posts == [] and three.starts == []


async def test_a_first_start_reports_nothing_and_remembers_now(rds: aioredis.Redis, tmp_path: Path) -> None:
    recorder = Recorder()
    scheduler = replica(settings(tmp_path), rds, recorder)
    scheduler._triggers["lab"] = trigger_for("0 3 1 1 *", timezone="UTC")  # yearly: no fire in the grace window
    await scheduler.at_start("lab")
    assert recorder.posts == [] and recorder.starts == []
    assert abs(int(await rds.get(last_key("lab"))) - time.time()) < 5
