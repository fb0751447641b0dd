"""Which stored backups the retention rules keep, and which they delete: a pure function.

Why a pure function: deleting backups is the one thing a backup tool must never get wrong, so
the decision is made over plain values, unit-tested over a simulated month of backups, and only
then applied to files (by the caller, which audits each deletion).

The rules (settings of the deployment, per cluster):
- keep the newest `last` backups;
- keep the newest backup of each of the `daily` most recent days that have a backup, of each of
  the `weekly` most recent ISO weeks, and of each of the `monthly` most recent months
  (grandfather-father-son, in the cluster's time zone);
- never delete, whatever the counts say: the newest drilled backup, the newest backup of the
  cluster's current version (a restore needs the same z-stream), and a backup a run is using.
Everything else is deleted. With every count at zero nothing is deleted: retention is off.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class RetentionRules:
    last: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0

    @property
    def enabled(self) -> bool:
        return any((self.last, self.daily, self.weekly, self.monthly))


@dataclass(frozen=True)
class BackupFacts:
    """What retention needs to know of one backup."""

    id: str
    finished_at: float
    version: str
    drilled: bool


@dataclass(frozen=True)
class Verdict:
    id: str
    keep: bool
    reasons: tuple[str, ...]  # why kept (every rule that keeps it), or why deleted


def decide(
    backups: Iterable[BackupFacts],
    *,
    rules: RetentionRules,
    current_version: str,
    in_use: frozenset[str] = frozenset(),
    timezone: str = "UTC",
) -> list[Verdict]:
    """One verdict per backup, newest first."""
    newest_first = sorted(backups, key=lambda b: (b.finished_at, b.id), reverse=True)
    if not rules.enabled:
        return [Verdict(b.id, True, ("retention is off",)) for b in newest_first]
    zone = ZoneInfo(timezone)
    reasons: dict[str, list[str]] = {b.id: [] for b in newest_first}
    for b in newest_first[: rules.last]:
        reasons[b.id].append(f"one of the last {rules.last}")
    for label, count, bucket in (
        ("daily", rules.daily, lambda t: t.strftime("%Y-%m-%d")),
        ("weekly", rules.weekly, lambda t: "{:04d}-W{:02d}".format(*t.isocalendar()[:2])),
        ("monthly", rules.monthly, lambda t: t.strftime("%Y-%m")),
    ):
        for backup_id, period in _newest_per_period(newest_first, zone=zone, bucket=bucket)[:count]:
            reasons[backup_id].append(f"{label}: newest of {period}")
    drilled = next((b for b in newest_first if b.drilled), None)
    if drilled is not None:
        reasons[drilled.id].append("the newest drilled backup")
    current = next((b for b in newest_first if b.version == current_version), None)
    if current is not None:
        reasons[current.id].append(f"the newest backup of the current version {current_version}")
    for b in newest_first:
        if b.id in in_use:
            reasons[b.id].append("in use by a run")
    return [
        Verdict(b.id, True, tuple(reasons[b.id])) if reasons[b.id]
        else Verdict(b.id, False, ("no retention rule keeps it",))
        for b in newest_first
    ]


def _newest_per_period(
    newest_first: Sequence[BackupFacts], *, zone: ZoneInfo, bucket: object
) -> list[tuple[str, str]]:
    """(backup id, period) for the newest backup of each period, most recent period first."""
    seen: dict[str, str] = {}
    for b in newest_first:
        period = bucket(dt.datetime.fromtimestamp(b.finished_at, tz=zone))  # type: ignore[operator]
        seen.setdefault(period, b.id)
    return [(backup_id, period) for period, backup_id in seen.items()]


def to_delete(verdicts: Iterable[Verdict]) -> list[str]:
    return [v.id for v in verdicts if not v.keep]
