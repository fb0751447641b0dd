"""`/etcd-backups [cluster]`: the backup catalogue, newest first; `/etcd-backups prune [--dry-run]
[cluster]`: the retention rules applied to the store (or, with `--dry-run`, what they would delete).

`/etcd-backup` and `/etcd-backup-verify <id>` have no handler of their own: procedures/backup.py
and procedures/verify.py register them, and the generic procedure command (handlers/procedures.py)
starts them. Prune is a procedure too (procedures/prune.py: a run with the cluster's lock, its
progress message and audit), started from here because it is a word of `/etcd-backups`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.models.blocks import Block, MarkdownTextObject, SectionBlock

from bot.backups import BackupRecord, Catalogue
from bot.cluster.etcdctl import human_size
from bot.config import Settings
from bot.log import get_logger
from bot.notify import age_text
from bot.procedure import Admission
from bot.run_types import Busy, ProcedureFactory
from bot.runner import Runner
from handlers.common import (
    CLUSTER_ARG,
    CommandSpec,
    Respond,
    counted,
    escape,
    mark_outcome,
    parse_for_cluster,
)

log = get_logger("etcdbot.backup")

LIST_SPEC = CommandSpec("/etcd-backups", (CLUSTER_ARG,))
PRUNE_SPEC = CommandSpec("/etcd-backups prune", (CLUSTER_ARG,), flags=frozenset({"--dry-run"}))
PRUNE = "prune"  # procedures/prune.py's name (handlers build procedures by name only)
LIST_LIMIT = 25


def drill_cell(record: BackupRecord) -> str:
    if record.drill is None:
        return "not yet"
    if not record.drill.ok:
        return "FAILED"
    return f"yes ({record.drill.seconds:.0f} s)"


def render_catalogue(*, cluster: str, records: Sequence[BackupRecord], now: float | None = None,
                     total: int | None = None) -> list[Block]:
    if not records:
        return [SectionBlock(text=MarkdownTextObject(text=f"No backups of `{cluster}` in the catalogue yet. "
                                                          f"Take one with `/etcd-backup {cluster}`."))]
    now = time.time() if now is None else now
    rows = [("ID", "TIME (UTC)", "AGE", "VERSION", "SIZE", "REVISION", "DRILLED")]
    for r in records:
        rows.append((r.id, datetime.fromtimestamp(r.finished_at, UTC).strftime("%Y-%m-%d %H:%M"),
                     age_text(now - r.finished_at), r.version, human_size(r.size), str(r.revision), drill_cell(r)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)
    shown = f"; the newest {len(records)} of {total}" if total and total > len(records) else ""
    head = (f"*Backups of `{cluster}`* (newest first{shown}; a restore needs the same OpenShift version; "
            "DRILLED: restored into a scratch etcd and checked)")
    failed = [r for r in records if r.drill is not None and not r.drill.ok]
    blocks: list[Block] = [SectionBlock(text=MarkdownTextObject(text=f"{head}\n```\n{escape(table)[:2600]}\n```"))]
    if failed:
        lines = "\n".join(f"• `{r.id}`: {escape(r.drill.error)[:300]}" for r in failed[:5] if r.drill)
        blocks.append(SectionBlock(text=MarkdownTextObject(
            text=f"*Failed drills* (do not restore from these; `/etcd-backup-verify <id>` drills again):\n{lines}")))
    return blocks


@dataclass
class BackupCommands:
    """The listener's shared dependencies."""

    settings: Settings
    catalogue: Catalogue
    runner: Runner | None = None
    procedure: ProcedureFactory | None = None

    async def handle_list(self, ack: Respond, command: dict[str, Any], respond: Respond) -> None:
        words = str(command.get("text") or "").split()
        if words and words[0] == PRUNE:
            await self.handle_prune(ack=ack, command={**command, "text": " ".join(words[1:])}, respond=respond)
            return
        found = await parse_for_cluster(ack=ack, command=command, spec=LIST_SPEC, settings=self.settings)
        if found is None:
            return
        _, cluster = found
        await ack()
        records = await self.catalogue.all(cluster=cluster)
        await respond(text=f"Backups of {cluster}", response_type="ephemeral",
                      blocks=render_catalogue(cluster=cluster, records=records[:LIST_LIMIT], total=len(records)))

    async def handle_prune(self, *, ack: Respond, command: dict[str, Any], respond: Respond) -> None:
        found = await parse_for_cluster(ack=ack, command=command, spec=PRUNE_SPEC, settings=self.settings)
        if found is None:
            return
        parsed, cluster = found
        if self.runner is None or self.procedure is None:
            await ack(text="Pruning is not available in this bot.", response_type="ephemeral")
            return
        dry_run = "--dry-run" in parsed.flags
        await ack(text=f"{'Planning' if dry_run else 'Starting'} the retention rules on {cluster}…",
                  response_type="ephemeral")
        user, channel = str(command["user_id"]), str(command["channel_id"])
        procedure = self.procedure(PRUNE, {})
        log.info("prune.asked", cluster=cluster, dry_run=dry_run, user=user)
        if dry_run:
            await self.runner.dry_run(procedure, cluster=cluster, parameters={}, requester=user, channel=channel)
            return
        result = await self.runner.start(procedure, cluster=cluster, parameters={}, requester=user, channel=channel)
        if isinstance(result, Busy):
            mark_outcome("busy")
            await respond(text=f":hourglass: {result.message()}", response_type="ephemeral", replace_original=False)
        elif isinstance(result, Admission):
            await respond(text=f":no_entry: {result.message}", response_type="ephemeral", replace_original=False)


def register(app: AsyncApp, *, commands: BackupCommands, middleware: Sequence[Any]) -> set[str]:
    app.command(LIST_SPEC.command, middleware=list(middleware))(counted(LIST_SPEC.command, commands.handle_list))
    return {LIST_SPEC.command}
