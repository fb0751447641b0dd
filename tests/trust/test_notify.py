"""What the bot says in a cluster's channel on its own, as text a person reads: the line after a
scheduled backup, a failure with the step and the on-call group, a failed drill, missed fires,
and the age warning. Pure functions over records."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.backups import DrillOutcome
from bot.cluster.etcdctl import human_size
from bot.config import load_settings
from bot.notify import (
    age_text,
    drill_failed_line,
    failure_line,
    mention_of,
    missed_line,
    stale_line,
    stale_text,
    success_line,
)
from bot.procedure import Procedure, RunId, StepId, StepKind
from bot.store import Run, RunState, StepRecord, StepState
from tests.trust.stored import make_backup

NEXT = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


def run(state: RunState, *, failed_at: str = "", error: str = "", next_action: str = "") -> Run:
    steps = tuple(StepRecord(step_id=StepId(f"s{i}"), title=title, kind=StepKind.CHANGE,
                             state=StepState.FAILED if title == failed_at else StepState.SUCCEEDED)
                  for i, title in enumerate(("Pick one master", "Copy both files off the host")))
    base = Run.new(run_id=RunId("ab12cd34"), procedure=Procedure(name="backup", title="Backing up", chapter="1",
                                                                   steps=()),
                   cluster="lab", parameters={}, requester="scheduler", channel="C0INCIDENT", owner="me", now=1000.0)
    return replace(base, steps=steps).with_state(state, now=1042.0, error=error, next_action=next_action)


def test_success_says_size_revision_duration_drill_and_next(tmp_path: Path) -> None:
    from bot.backups import BackupStore

    record = make_backup(BackupStore(root=tmp_path, _fsync=False), size=3 * 2**20, revision=4242, drilled=True)
    line = success_line(cluster="lab", record=record, run=run(RunState.SUCCEEDED), next_fire=NEXT)
    assert f"`{record.id}`" in line and f"{human_size(6 * 2**20)}," in line
    assert "revision 4242" in line and "took 42.0 s" in line and "drill passed in 2.5 s" in line
    assert "2026-12-01 03:00:00 UTC" in line and "\n" not in line


def test_failure_names_the_step_the_error_what_to_do_and_mentions_on_call() -> None:
    failed = run(RunState.FAILED, failed_at="Copy both files off the host", error="SSH to ip-10-0-1-2 dropped",
                 next_action="Check SSH, then start `/etcd-backup` again.")
    line = failure_line(cluster="lab", run=failed, mention="<!subteam^S0ONCALL>", next_fire=NEXT)
    assert "step *Copy both files off the host*" in line and "SSH to ip-10-0-1-2 dropped" in line
    assert "What to do: Check SSH" in line and "<!subteam^S0ONCALL>" in line and "`ab12cd34`" in line
    assert "/etcd-backup lab" in line and "2026-12-01 03:00:00 UTC" in line
    bare = failure_line(cluster="lab", run=failed, mention="", next_fire=None)
    assert "ETCDBOT_ONCALL_USERGROUP" in bare  # says how to get someone paged


def test_mentions() -> None:
    assert mention_of("S0ONCALL") == "<!subteam^S0ONCALL>"
    assert mention_of("etcd-oncall", group_id="S0ONCALL") == "<!subteam^S0ONCALL|@etcd-oncall>"
    assert mention_of("etcd-oncall") == "@etcd-oncall" and mention_of(None) == ""


def test_drill_failed_line(tmp_path: Path) -> None:
    from bot.backups import BackupStore

    record = make_backup(BackupStore(root=tmp_path, _fsync=False))
    line = drill_failed_line(record=record, outcome=DrillOutcome(ok=False, at=1.0, seconds=1.0, error="etcd exited"),
                             mention="@etcd-oncall")
    assert "FAILED its restore drill: etcd exited" in line and "not marked drilled" in line and "@etcd-oncall" in line


def test_missed_fires_listed_once_however_many() -> None:
    fires = [datetime(2026, 11, 1, 3, 0, tzinfo=UTC) + timedelta(minutes=i) for i in range(3)]
    line = missed_line(cluster="lab", fires=fires, total=3, catch_up=True, mention="")
    assert line.startswith(":warning: 3 scheduled backups of `lab` did not run while the bot was down")
    assert all(f"{f:%Y-%m-%d %H:%M:%S} UTC" in line for f in fires) and "being taken now" in line
    month = [datetime(2026, 10, 1, tzinfo=UTC) + timedelta(minutes=i) for i in range(43_200)]
    long = missed_line(cluster="lab", fires=month, total=len(month), catch_up=False, mention="")
    assert "43200 scheduled backups" in long and "and 43190 more" in long and "/etcd-backup lab" in long
    assert len(long) < 2000


def test_stale_warning(tmp_path: Path) -> None:
    from bot.backups import BackupStore

    record = make_backup(BackupStore(root=tmp_path, _fsync=False), at=1000.0, drilled=True)
    text = stale_text(cluster="lab", newest=record, max_age=26 * 3600, now=1000.0 + 30 * 3600)
    assert "younger than 26 h" in text and "taken 30 h ago" in text and record.id in text
    assert "no drilled backup at all" in stale_text(cluster="lab", newest=None, max_age=3600, now=0)
    assert "<!subteam^S1>" in stale_line(cluster="lab", newest=None, max_age=60, now=0, mention="<!subteam^S1>")
    assert [age_text(s) for s in (5, 600, 7200, 30 * 3600, 3 * 86400 + 4 * 3600)] == \
        ["5 s", "10 min", "2.0 h", "30 h", "3 d 4 h"]


def test_settings_for_retention_age_and_on_call(tmp_path: Path) -> None:
    (tmp_path / "kubeconfig").write_text("x")
    clusters = [{"name": "a", "kubeconfig": str(tmp_path / "kubeconfig"), "channels": ["C0A"]},
                {"name": "b", "kubeconfig": str(tmp_path / "kubeconfig"), "channels": ["C0B"],
                 "retention": {"last": 2}, "max_backup_age": "90m", "oncall_usergroup": "S0B", "backup_schedule": ""}]
    base = {"ETCDBOT_SLACK_BOT_TOKEN": "xoxb-x", "ETCDBOT_SLACK_APP_TOKEN": "xapp-x", "ETCDBOT_CLUSTERS": __import__("json").dumps(clusters)}
    s = load_settings(environ={**base, "ETCDBOT_BACKUP_RETENTION": '{"last": 7, "daily": 7, "weekly": 4, "monthly": 6}',
                               "ETCDBOT_BACKUP_SCHEDULE": "0 3 * * *", "ETCDBOT_ONCALL_USERGROUP": "@etcd-oncall"})
    a, b = s.clusters
    assert s.retention_of(a).monthly == 6 and s.retention_of(b).last == 2 and s.retention_of(b).daily == 0
    assert s.max_backup_age_of(a) == 86400 + 3600  # derived from the daily schedule
    assert s.max_backup_age_of(b) == 5400 and s.oncall_of(a) == "etcd-oncall" and s.oncall_of(b) == "S0B"
    off = load_settings(environ={**base, "ETCDBOT_MAX_BACKUP_AGE": "0"})
    assert off.max_backup_age_of(a) is None and off.retention_of(a).last == 0  # no schedule, no warning
    from bot.config import ConfigError

    with pytest.raises(ConfigError, match="ETCDBOT_MAX_BACKUP_AGE"):
        load_settings(environ={**base, "ETCDBOT_MAX_BACKUP_AGE": "soon"})
    with pytest.raises(ConfigError, match="ETCDBOT_BACKUP_RETENTION"):
        load_settings(environ={**base, "ETCDBOT_BACKUP_RETENTION": '{"last": -1}'})

