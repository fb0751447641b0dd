"""Retention applied to a real store: a simulated month of backups (real files, a real Redis
catalogue and audit stream, a live run in the real run store), pruned by the same code the backup
procedure and `/etcd-backups prune` use. What a person checks: which directories are gone, that
each deletion has an audit entry, that the guarded backups are still there."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis.asyncio as aioredis

from bot.audit import Audit
from bot.backups import BackupStore, Catalogue, CatalogueHooks
from bot.procedure import Procedure, RunId
from bot.pruning import apply_prune, plan_prune
from bot.retention import RetentionRules
from bot.services import audit_deletion, backups_in_use
from bot.store import Run, RunStore
from tests.trust.stored import make_backup

START = datetime(2026, 10, 1, 3, 0, tzinfo=UTC)


def listed_dirs(root: Path, cluster: str = "lab") -> set[str]:
    base = root / cluster
    return {p.name for p in base.iterdir()} if base.exists() else set()


async def test_a_month_of_backups_pruned_on_disk_with_each_deletion_audited(rds: aioredis.Redis, tmp_path: Path) -> None:
    store = BackupStore(root=tmp_path / "backups", keys_root=tmp_path / "keys", _fsync=False)
    runs, audit = RunStore(redis=rds), Audit(redis=rds)
    catalogue = Catalogue(redis=rds, hooks=CatalogueHooks(
        deleted=lambda record, why, actor, run_id: audit_deletion(audit, record=record, why=why, actor=actor,
                                                                  run_id=run_id),
        in_use=lambda cluster: backups_in_use(runs, cluster=cluster),
    ))
    # Every 6 hours for 31 days; 4.5.2 until the 20th, then 4.5.3; drilled except the last day's;
    # one encrypted backup (its tarball in the keys tree) old enough to be deleted.
    made = []
    for n in range(31 * 4):
        at = START + timedelta(hours=6 * n)
        made.append(make_backup(store, at=at.timestamp(), version="4.5.2" if at.day < 20 else "4.5.3",
                                drilled=None if n >= 31 * 4 - 4 else True, size=512, encrypted=n == 5))
    for record in made:
        await catalogue.add(record)
    # A restore being prepared names an old 4.5.2 backup: it must stay.
    restoring = made[10]
    run = Run.new(run_id=RunId("feed0001"), procedure=Procedure(name="restore", title="Restore", chapter="5", steps=()),
                  cluster="lab", parameters={"backup_id": restoring.id, "recovery_host": "ip-10-0-131-183.ec2.internal"},
                  requester="U0ALICE01", channel="C0INCIDENT", owner="other-bot", now=made[-1].finished_at)
    await runs.save(run)

    rules = RetentionRules(last=3, daily=5, weekly=2, monthly=1)
    plan = await plan_prune(store=store, catalogue=catalogue, cluster="lab", rules=rules, current_version="4.5.3",
                            timezone="UTC")
    doomed = {r.id for r, _ in plan.deletions}
    deleted = await apply_prune(plan, store=store, catalogue=catalogue, actor="U0ALICE01", run_id="abcd0001")

    assert {r.id for r in deleted} == doomed and len(doomed) > 100
    left = listed_dirs(store.root)
    assert left == {r.id for r, _ in plan.kept} and left.isdisjoint(doomed)
    assert not (store.keys / "lab" / made[5].id).exists()  # the encrypted one's tarball went too
    assert not any((store.root / ".incoming").iterdir())  # nothing half-deleted left behind
    reasons = {v.id: v.reasons for v in plan.verdicts}
    newest_drilled = next(r for r in reversed(made) if r.drilled)
    assert newest_drilled.id in left and "the newest drilled backup" in reasons[newest_drilled.id]
    assert restoring.id in left and "in use by a run" in reasons[restoring.id]
    assert {r.id for r in made[-3:]} <= left  # the last 3
    days = {datetime.fromtimestamp(r.finished_at, UTC).date() for r in made if r.id in left}
    assert len(days) >= 5
    # The catalogue says what the disk says, and each deletion is one audit entry.
    assert {r.id for r in await catalogue.all(cluster="lab")} == left
    entries = [e for e in await audit.entries(cluster="lab", count=1000) if e["event"] == "backup.deleted"]
    assert sorted(e["backup"] for e in entries) == sorted(doomed)
    sample = next(e for e in entries if e["backup"] == made[0].id)
    assert sample["actor"] == "U0ALICE01" and sample["run"] == "abcd0001" and sample["reason"] == "no retention rule keeps it"
    assert sample["version"] == "4.5.2" and json.loads(sample["size"]) == made[0].size

    # The rules are stable: a second prune deletes nothing more.
    again = await plan_prune(store=store, catalogue=catalogue, cluster="lab", rules=rules, current_version="4.5.3",
                             timezone="UTC")
    assert again.deletions == []


async def test_the_newest_of_the_current_version_survives_a_rollback(rds: aioredis.Redis, tmp_path: Path) -> None:
    """Restored back to 4.5.2 after trying 4.5.3: the newest 4.5.2 backup is the one a restore needs."""
    store = BackupStore(root=tmp_path / "backups", _fsync=False)
    catalogue = Catalogue(redis=rds)
    old = make_backup(store, at=(START - timedelta(days=40)).timestamp(), version="4.5.2", drilled=True)
    newer = [make_backup(store, at=(START + timedelta(days=d)).timestamp(), version="4.5.3", drilled=True)
             for d in range(5)]
    plan = await plan_prune(store=store, catalogue=catalogue, cluster="lab", rules=RetentionRules(last=2),
                            current_version="4.5.2", timezone="UTC")
    await apply_prune(plan, store=store, catalogue=catalogue, actor="retention", run_id="r1")
    assert listed_dirs(store.root) == {old.id, newer[-1].id, newer[-2].id}


async def test_retention_off_deletes_nothing(rds: aioredis.Redis, tmp_path: Path) -> None:
    store = BackupStore(root=tmp_path / "backups", _fsync=False)
    made = [make_backup(store, at=(START + timedelta(days=d)).timestamp()) for d in range(4)]
    plan = await plan_prune(store=store, catalogue=Catalogue(redis=rds), cluster="lab", rules=RetentionRules(),
                            current_version="4.5.2", timezone="UTC")
    assert await apply_prune(plan, store=store, catalogue=Catalogue(redis=rds), actor="x", run_id="y") == []
    assert listed_dirs(store.root) == {r.id for r in made} and "retention is off" in plan.summary()
