"""Retention applied to the backup store: which backups the rules delete (a plan, shown by
`/etcd-backups prune --dry-run`), and deleting them (after each backup, and on `/etcd-backups prune`).

Why apart from bot/retention.py: that module decides over plain values and is tested as a pure
function; this one reads the facts it needs (the metadata files on disk, which are the truth,
and the backups live runs use) and changes the store. Each deletion goes through
`Catalogue.hooks.deleted`, which the engine points at the audit stream, so every deleted backup
has an audit entry naming it, why it went, who and which run deleted it.

Never deleted, whatever the counts say (bot/retention.py): the newest drilled backup, the newest
backup of the cluster's current version, and a backup a live run names in its parameters (a
restore's backup, a verify's). The in-use set is read again just before deleting, so a run
started between the plan and the deletion still protects its backup.

Not here: when pruning happens (procedures/backup.py's last step, procedures/prune.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from bot import metrics
from bot.backups import BackupRecord, BackupStore, Catalogue
from bot.retention import BackupFacts, RetentionRules, Verdict, decide


@dataclass(frozen=True)
class PrunePlan:
    """What the retention rules say about every stored backup of one cluster, newest first."""

    cluster: str
    rules: RetentionRules
    current_version: str
    verdicts: tuple[Verdict, ...]
    records: dict[str, BackupRecord]

    @property
    def deletions(self) -> list[tuple[BackupRecord, Verdict]]:
        return [(self.records[v.id], v) for v in self.verdicts if not v.keep]

    @property
    def kept(self) -> list[tuple[BackupRecord, Verdict]]:
        return [(self.records[v.id], v) for v in self.verdicts if v.keep]

    def summary(self) -> str:
        if not self.rules.enabled:
            return "retention is off (ETCDBOT_BACKUP_RETENTION): nothing is deleted"
        return (f"{len(self.verdicts)} stored, {len(self.deletions)} to delete, {len(self.kept)} kept "
                f"({rules_text(self.rules)})")


def rules_text(rules: RetentionRules) -> str:
    return f"last {rules.last}, daily {rules.daily}, weekly {rules.weekly}, monthly {rules.monthly}"


def facts_of(record: BackupRecord) -> BackupFacts:
    return BackupFacts(id=record.id, finished_at=record.finished_at, version=record.version, drilled=record.drilled)


async def plan_prune(*, store: BackupStore, catalogue: Catalogue, cluster: str, rules: RetentionRules,
                     current_version: str, timezone: str) -> PrunePlan:
    """The verdicts over the store's backups of `cluster` (read from disk, off the event loop)."""
    records = await asyncio.to_thread(store.records, cluster=cluster)
    in_use = await catalogue.hooks.in_use(cluster)
    verdicts = decide((facts_of(r) for r in records), rules=rules, current_version=current_version,
                      in_use=in_use, timezone=timezone)
    return PrunePlan(cluster=cluster, rules=rules, current_version=current_version, verdicts=tuple(verdicts),
                     records={r.id: r for r in records})


async def apply_prune(plan: PrunePlan, *, store: BackupStore, catalogue: Catalogue, actor: str,
                      run_id: str) -> list[BackupRecord]:
    """Deletes what the plan deletes, except a backup a run started using meanwhile; returns the
    deleted backups. Each deletion: files, catalogue entry, metric, audit entry (through the hook)."""
    if not plan.deletions:
        return []
    in_use = await catalogue.hooks.in_use(plan.cluster)
    deleted = []
    for record, verdict in plan.deletions:
        if record.id in in_use:
            continue
        await asyncio.to_thread(store.remove, record)
        await catalogue.remove(record)
        metrics.retention_deleted(cluster=plan.cluster)
        await catalogue.hooks.deleted(record, "; ".join(verdict.reasons), actor, run_id)
        deleted.append(record)
    return deleted
