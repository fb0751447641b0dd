"""Retention over a simulated month of backups (pure function, no files)."""

from __future__ import annotations

import datetime as dt

from bot.retention import BackupFacts, RetentionRules, decide, to_delete

START = dt.datetime(2026, 10, 1, 3, 0, tzinfo=dt.UTC)


def month_of_backups(*, per_day: int = 2, days: int = 60, version: str = "4.5.2") -> list[BackupFacts]:
    out = []
    for day in range(days):
        for n in range(per_day):
            at = START + dt.timedelta(days=day, hours=n * 12)
            out.append(BackupFacts(id=at.strftime("%Y%m%d-%H%M%S-r") + str(n), finished_at=at.timestamp(),
                                   version=version, drilled=True))
    return out


def kept(verdicts) -> set[str]:  # type: ignore[no-untyped-def]
    return {v.id for v in verdicts if v.keep}


def test_retention_off_keeps_everything() -> None:
    backups = month_of_backups(days=5)
    assert to_delete(decide(backups, rules=RetentionRules(), current_version="4.5.2")) == []


def test_last_daily_weekly_monthly_over_two_months() -> None:
    backups = month_of_backups()
    verdicts = decide(backups, rules=RetentionRules(last=3, daily=7, weekly=4, monthly=2), current_version="4.5.2")
    keep = kept(verdicts)
    newest = sorted(backups, key=lambda b: b.finished_at, reverse=True)
    assert {b.id for b in newest[:3]} <= keep
    days = {dt.datetime.fromtimestamp(b.finished_at, tz=dt.UTC).date() for b in backups if b.id in keep}
    # 7 daily (the last 7 days), plus the newest of 4 weeks and 2 months (some coincide)
    assert len(days) >= 7
    assert len(keep) <= 3 + 7 + 4 + 2
    assert len(keep) + len(to_delete(verdicts)) == len(backups)
    # a monthly keeper of the older month survives though older than every daily and weekly one
    october = [b for b in newest if dt.datetime.fromtimestamp(b.finished_at, tz=dt.UTC).month == 10]
    assert october[0].id in keep
    assert october[-1].id not in keep


def test_never_deletes_newest_drilled_current_version_or_in_use() -> None:
    backups = month_of_backups(days=10)
    oldest = min(backups, key=lambda b: b.finished_at)
    in_use = sorted(backups, key=lambda b: b.finished_at)[3]
    undrilled = [BackupFacts(b.id, b.finished_at, "4.5.3" if b is not oldest else "4.5.2", drilled=b is oldest)
                 for b in backups]
    verdicts = decide(undrilled, rules=RetentionRules(last=1), current_version="4.5.2",
                      in_use=frozenset({in_use.id}))
    by_id = {v.id: v for v in verdicts}
    assert by_id[oldest.id].keep
    assert "the newest drilled backup" in by_id[oldest.id].reasons
    assert any("current version" in r for r in by_id[oldest.id].reasons)
    assert by_id[in_use.id].keep and "in use by a run" in by_id[in_use.id].reasons
    assert len(kept(verdicts)) == 3


def test_days_follow_the_cluster_time_zone() -> None:
    # 23:30 and 00:30 UTC are the same day in New York, two days in UTC
    a = dt.datetime(2026, 11, 2, 23, 30, tzinfo=dt.UTC)
    b = a + dt.timedelta(hours=1)
    backups = [BackupFacts("a", a.timestamp(), "4.5.2", True), BackupFacts("b", b.timestamp(), "4.5.2", True)]
    utc = decide(backups, rules=RetentionRules(daily=2), current_version="x")
    ny = decide(backups, rules=RetentionRules(daily=2), current_version="x", timezone="America/New_York")
    assert to_delete(utc) == []
    assert to_delete(ny) == ["a"]  # one day in New York: only its newest backup is kept
