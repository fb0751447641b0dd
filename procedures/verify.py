"""`/etcd-backup-verify <id>`: the restore drill of one stored backup, on demand.

Why: a backup drilled when it was taken may have been damaged since (a disk, a careless copy), and
an older backup kept for its version was perhaps never drilled by this bot. Before a restore,
a person wants to know, now, that the backup in hand restores. The drill is the same as the one
after each backup (procedures/backup.py `prove_backup`): sha256 of the stored files against the
metadata, the snapshot restored into a scratch etcd on the bot's loopback, its revision, key count
and ClusterVersion checked; the outcome is written beside the backup, and a failed drill fails
the run (and the engine tells the channel).

It takes no cluster lock: nothing here touches the cluster, and a person may verify a backup while
another run (a restore being prepared) holds the lock. Retention never deletes a backup while
this run names it (its parameter `backup_id`), and the bot runs one drill at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bot.backups import BACKUP_ID_RE
from bot.cluster.etcdctl import human_size
from bot.procedure import (
    Param,
    PlannedCommand,
    Procedure,
    Step,
    StepContext,
    StepFailed,
    StepId,
    StepKind,
    StepResult,
    register,
)
from procedures.backup import drill_plan, prove_backup, stored_record

NAME = "verify"
TITLE = "Verifying an etcd backup (restore drill)"
S_FIND = StepId("verify.find-backup")
S_DRILL = StepId("verify.drill")
PARAM = "backup_id"


@dataclass(frozen=True)
class FoundBackup:
    backup_id: str
    version: str
    revision: int
    snapshot: str
    drilled_before: bool


def backup_id_of(ctx: StepContext) -> str:
    backup_id = str(ctx.parameters.get(PARAM) or "")
    if not BACKUP_ID_RE.fullmatch(backup_id):
        raise StepFailed(f"`{backup_id}` is not a backup id", next_action="`/etcd-backups` lists the stored backups.")
    return backup_id


async def find_backup(ctx: StepContext) -> StepResult:
    record = await stored_record(ctx, backup_id_of(ctx))
    before = f"; last drill: {record.drill.summary()}" if record.drill else "; never drilled"
    return StepResult.of(
        f"`{record.id}`: OpenShift {record.version}, revision {record.revision}, "
        f"{human_size(record.snapshot_size)}{before}",
        FoundBackup(backup_id=record.id, version=record.version, revision=record.revision,
                    snapshot=record.file("snapshot").path, drilled_before=record.drilled),
    )


def _find_plan(ctx: StepContext) -> list[PlannedCommand]:
    root = ctx.store.root if ctx.store is not None else "BACKUP-DIR"
    backup = str(ctx.parameters.get(PARAM) or "BACKUP-ID")
    return [PlannedCommand("bot", f"read {root}/{ctx.cluster_name}/{backup}/metadata.json")]


async def drill(ctx: StepContext) -> StepResult:
    found = ctx.result(S_FIND, FoundBackup)
    return await prove_backup(ctx, await stored_record(ctx, found.backup_id))


def _drill_plan(ctx: StepContext) -> list[PlannedCommand]:
    return drill_plan(ctx, backup=str(ctx.parameters.get(PARAM) or "BACKUP-ID"))


STEPS: tuple[Step, ...] = (
    Step(S_FIND, "Find the backup in the store", StepKind.READ, find_backup, _find_plan, timeout=60,
         safe_to_repeat=True),
    Step(S_DRILL, "Restore drill: restore the snapshot into a scratch etcd on the bot and read it back",
         StepKind.READ, drill, _drill_plan, timeout=6 * 3600 + 600, safe_to_repeat=True),
)


def build(_parameters: Mapping[str, Any] | None = None) -> Procedure:
    return Procedure(name=NAME, title=TITLE, chapter="1", steps=STEPS, takes_lock=False)


register(NAME, build, title=TITLE, command="/etcd-backup-verify",
         params=(Param(PARAM, BACKUP_ID_RE, "20240101-030000-1a2b3c4d"),),
         summary="prove a stored backup restores (restore drill on the bot)")
