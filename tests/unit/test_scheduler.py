"""ETCDBOT_BACKUP_SCHEDULE and a cluster's `backup_schedule`: parsed at start (a wrong value names
the variable), and the fire time replicas agree on. No server, no clock: times are passed in."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.config import ConfigError, check_schedule, load_settings
from bot.scheduler import fire_time, trigger_for


def environ(tmp_path: Path, *, schedule: str | None = None, **cluster: object) -> dict[str, str]:
    for name in ("kubeconfig", "id_ed25519", "known_hosts"):
        (tmp_path / name).write_text("x")
    value = {"name": "lab", "kubeconfig": str(tmp_path / "kubeconfig"), "channels": ["C0INCIDENT"], **cluster}
    env = {"ETCDBOT_SLACK_BOT_TOKEN": "xoxb-lab-abc", "ETCDBOT_SLACK_APP_TOKEN": "xapp-lab-def",
           "ETCDBOT_CLUSTERS": json.dumps([value])}
    if schedule is not None:
        env["ETCDBOT_BACKUP_SCHEDULE"] = schedule
    return env


@pytest.mark.parametrize("value, expected", [
    ("", ""), ("   ", ""), ("0 3 * * *", "0 3 * * *"), (" */15  *  * * 1-5 ", "*/15 * * * 1-5"), ("* * * * *", "* * * * *"),
])
def test_valid_schedules(value: str, expected: str) -> None:
    assert check_schedule(value) == expected


@pytest.mark.parametrize("value", ["0 3 * *", "0 0 3 * * *", "61 * * * *", "0 25 * * *", "daily", "0 3 * * mon-xyz"])
def test_invalid_schedules(value: str) -> None:
    with pytest.raises(ValueError, match="cron expression"):
        check_schedule(value)


def test_default_is_off_and_a_bad_value_names_the_variable(tmp_path: Path) -> None:
    settings = load_settings(environ=environ(tmp_path))
    assert settings.backup_schedule == "" and settings.backup_schedule_of(settings.clusters[0]) == ""
    with pytest.raises(ConfigError) as error:
        load_settings(environ=environ(tmp_path, schedule="0 3 * *"))
    assert str(error.value).startswith("ETCDBOT_BACKUP_SCHEDULE: '0 3 * *' is not a 5-field cron expression")
    assert "Set it to a 5-field cron expression" in str(error.value)


def test_a_cluster_overrides_the_schedule_or_turns_it_off(tmp_path: Path) -> None:
    own = load_settings(environ=environ(tmp_path, schedule="0 3 * * *", backup_schedule="30 1 * * 0"))
    assert own.backup_schedule_of(own.clusters[0]) == "30 1 * * 0"
    off = load_settings(environ=environ(tmp_path, schedule="0 3 * * *", backup_schedule=""))
    assert off.backup_schedule_of(off.clusters[0]) == ""
    inherits = load_settings(environ=environ(tmp_path, schedule="0 3 * * *"))
    assert inherits.backup_schedule_of(inherits.clusters[0]) == "0 3 * * *"
    with pytest.raises(ConfigError, match=r"ETCDBOT_CLUSTERS\[0\]\.backup_schedule: .*cron expression"):
        load_settings(environ=environ(tmp_path, backup_schedule="every night"))


def test_fire_time_is_in_the_clusters_timezone() -> None:
    berlin = trigger_for("0 3 * * *", timezone="Europe/Berlin")
    fired = fire_time(berlin, now=datetime(2024, 1, 1, 2, 5, tzinfo=UTC))  # 03:05 in Berlin
    assert fired is not None and fired.astimezone(UTC) == datetime(2024, 1, 1, 2, 0, tzinfo=UTC)


def test_fire_time_is_the_latest_fire_within_the_grace_window() -> None:
    every_minute = trigger_for("* * * * *", timezone="UTC")
    now = datetime(2024, 1, 1, 3, 7, 42, tzinfo=UTC)
    assert fire_time(every_minute, now=now) == datetime(2024, 1, 1, 3, 7, tzinfo=UTC)
    assert fire_time(every_minute, now=now.replace(second=0)) == now.replace(second=0)  # on the dot
    nightly = trigger_for("0 3 * * *", timezone="UTC")
    assert fire_time(nightly, now=datetime(2024, 1, 1, 3, 14, tzinfo=UTC)) == datetime(2024, 1, 1, 3, 0, tzinfo=UTC)
    assert fire_time(nightly, now=datetime(2024, 1, 1, 3, 20, tzinfo=UTC)) is None  # past the 15 min grace
    assert fire_time(nightly, now=datetime(2024, 1, 1, 3, 20, tzinfo=UTC), grace=timedelta(hours=1)) is not None
