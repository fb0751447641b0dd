"""Scheduled backups end to end, with a cron of every minute: the production bot as processes
against one lab, nobody typing anything.

- Two bots on one Redis schedule `lab`: three fires give three backups (one per fire), three
  drills and three lines in the channel (size, revision, duration, drill, next fire).
- A third bot schedules `lab-ops` (the same lab under another name, its own channel and lock): it
  starts, takes its fire, and stops; while it is down three fires pass; started again it says so
  once, listing them, and takes the latest.
- SSH to the master dropped again and again while a scheduled backup copies: one failure line that
  names the step and mentions the on-call group.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.e2e.backup_support import (
    BotProcess,
    blocks_text,
    fill_etcd,
    host_of,
    run_message,
    stored_backups,
    wait_step_running,
    workspace,
)
from tests.lab.etcd_fixture import free_port
from tests.labfixture import Lab, wait_for

ONCALL = "S0APPROVERS"  # the lab workspace's user group
EVERY_MINUTE = "* * * * *"
COPY_RATE = str(2_000_000)  # bytes/s: the copy of ~10 MB lasts seconds, long enough to break it
SUCCESS = re.compile(r"^:white_check_mark: Scheduled backup of `(?P<cluster>[a-z-]+)`: `(?P<id>[0-9]{8}-[0-9]{6}-[0-9a-f]+)`")


@dataclass
class NamedBot(BotProcess):
    name: str = "bot"

    @property
    def log_path(self) -> Path:
        return self.lab.dir / f"{self.name}.log"


def _window(start: datetime, hours: float) -> str:
    return f"{start:%H:%M}-{start + timedelta(hours=hours):%H:%M}"


def clusters(lab: Lab, *, lab_schedule: str, ops_schedule: str) -> str:
    base = json.loads(lab.env["ETCDBOT_CLUSTERS"])[0]
    calm = _window(datetime.now(UTC) + timedelta(hours=3), 1)
    return json.dumps([
        {**base, "peak_hours": calm, "backup_schedule": lab_schedule},
        {**base, "name": "lab-ops", "channels": ["C0OPS1"], "peak_hours": calm, "backup_schedule": ops_schedule},
    ])


def bot(lab: Lab, name: str, *, lab_schedule: str, ops_schedule: str) -> NamedBot:
    return NamedBot(lab=lab, name=name, env={
        "ETCDBOT_CLUSTERS": clusters(lab, lab_schedule=lab_schedule, ops_schedule=ops_schedule),
        "ETCDBOT_ONCALL_USERGROUP": ONCALL, "ETCDBOT_BACKUP_COPY_RATE": COPY_RATE,
        "ETCDBOT_DRILL_DIR": str(lab.dir / f"drill-{name}"),
        "ETCDBOT_HEALTH_PORT": str(free_port()),  # several bots on one machine: one /healthz port each
    })


def messages(lab: Lab, *, since: int, channel: str = "incident") -> list[dict[str, Any]]:
    return workspace(lab).view(user="alice", since=since, channel=channel)["messages"]


def cursor(lab: Lab) -> int:
    return int(workspace(lab).view(user="alice", since=0)["cursor"])


def successes(lab: Lab, *, since: int, cluster: str, channel: str) -> list[dict[str, Any]]:
    return [m for m in messages(lab, since=since, channel=channel)
            if (match := SUCCESS.match(m.get("text", ""))) and match["cluster"] == cluster]


@pytest.fixture(scope="module")
def ops_bot(lab: Lab) -> Iterator[NamedBot]:
    """The bot of `lab-ops`: started once (it takes the fire of that minute and remembers it), then
    stopped, so that the next fires pass with no bot for `lab-ops`."""
    fill_etcd(lab, megabytes=8)
    process = bot(lab, "ops", lab_schedule="", ops_schedule=EVERY_MINUTE)
    since = cursor(lab)
    process.start()
    try:
        wait_for(lambda: successes(lab, since=since, cluster="lab-ops", channel="ops"), timeout=120,
                 what="lab-ops's first scheduled backup", interval=1.0)
        process.stop()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def lab_bots(lab: Lab, ops_bot: NamedBot) -> Iterator[dict[str, Any]]:
    since = cursor(lab)
    started = time.time()
    pair = [bot(lab, name, lab_schedule=EVERY_MINUTE, ops_schedule="") for name in ("one", "two")]
    try:
        for process in pair:
            process.start()
        yield {"since": since, "started": started, "bots": pair}
    finally:
        for process in pair:
            process.stop()


def test_three_fires_two_bots_three_backups_three_drills_three_lines(lab: Lab, lab_bots: dict[str, Any]) -> None:
    since, started = lab_bots["since"], lab_bots["started"]
    lines = wait_for(lambda: (found := successes(lab, since=since, cluster="lab", channel="incident")) and
                     len(found) >= 3 and found, timeout=200, what="three scheduled backups of lab", interval=1.0)
    stored = {k: m for k, m in stored_backups(lab).items() if m["requester"] == "scheduler" and m["started_at"] >= started}
    assert len(stored) == 3, sorted(stored)
    minutes = {datetime.fromtimestamp(m["started_at"], UTC).replace(second=0, microsecond=0) for m in stored.values()}
    assert len(minutes) == 3  # one backup per fire, not one per bot
    for message in lines[:3]:
        backup_id = SUCCESS.match(message["text"])["id"]  # type: ignore[index]
        meta = stored[backup_id]
        assert meta["drill"]["ok"], meta["drill"]
        text = message["text"]
        assert f"revision {meta['revision']}" in text and "OpenShift 4.5.2" in text and "took " in text
        assert "restore drill passed" in text and "Next scheduled backup:" in text
    runs = [m for m in messages(lab, since=since) if m["text"].startswith("Backing up etcd data on lab:")]
    assert len({m["ts"] for m in runs}) == 3  # three runs were started, not six
    logs = "".join(p.log_path.read_text() for p in lab_bots["bots"])
    assert "schedule.taken_elsewhere" in logs  # both bots fired; one stood down each time


def test_a_bot_down_across_three_fires_says_so_once_at_start(lab: Lab, ops_bot: NamedBot,
                                                             lab_bots: dict[str, Any]) -> None:
    last = int(redis.Redis.from_url(lab.env["ETCDBOT_REDIS_URL"]).get("etcdbot:schedule:lab-ops:last"))
    wait_for(lambda: time.time() > last + 3 * 60 + 1, timeout=200, what="three fires of lab-ops with no bot up",
             interval=1.0)
    since = cursor(lab)
    ops_bot.start()
    try:
        notice = wait_for(lambda: [m["text"] for m in messages(lab, since=since, channel="ops")
                                   if "did not run while the bot was down" in m["text"]],
                          timeout=60, what="the missed-fires message")
        ended = wait_for(lambda: [m["text"] for m in messages(lab, since=since, channel="ops")
                                  if SUCCESS.match(m["text"]) or m["text"].startswith(":x:")],
                         timeout=180, what="the end of lab-ops's catch-up backup", interval=1.0)
        assert SUCCESS.match(ended[0]), ended
    finally:
        ops_bot.stop()
    (text,) = notice
    count = int(re.match(r":warning: (\d+) scheduled backups of `lab-ops`", text).group(1))  # type: ignore[union-attr]
    assert count >= 3 and text.count("UTC") >= 3 and "being taken now" in text and f"<!subteam^{ONCALL}>" in text
    assert len([m for m in messages(lab, since=since, channel="ops") if "did not run" in m["text"]]) == 1


def test_ssh_dropped_during_a_scheduled_backup_fails_it_with_the_step_and_on_call(lab: Lab,
                                                                                lab_bots: dict[str, Any]) -> None:
    since = cursor(lab)
    running = wait_step_running(lab, since=since, step_title="Copy both files off the host", note="copying",
                                timeout=150)
    host = host_of(running)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:  # the network keeps dropping: every retry meets a drop too
            lab.cli("fault", "drop-ssh", host, check=False)
            done = run_message(lab, since=since, run_id=running["run_id"])
            if done and done["state"] in ("succeeded", "failed"):
                break
    finally:
        lab.cli("heal")
    assert done is not None and done["state"] == "failed", blocks_text(done or {})
    line = wait_for(lambda: next((m["text"] for m in messages(lab, since=since)
                                  if m["text"].startswith(":x: The scheduled backup of `lab`")), None),
                    timeout=60, what="the failure line")
    assert f"(run `{running['run_id']}`) failed at step *Copy both files off the host" in line, line
    assert "What to do:" in line and "/etcd-backup lab" in line and f"<!subteam^{ONCALL}>" in line
