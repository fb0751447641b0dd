"""`/etcd-backups [cluster]`: the backup catalogue, newest first.

`/etcd-backup` itself has no handler of its own: procedures/backup.py registers it, and the
generic procedure command (handlers/procedures.py) starts it, renders its admission (the 24 h
refusal, the peak-hours warning with its "Back up anyway" button) and its `--dry-run`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.models.blocks import Block, MarkdownTextObject, SectionBlock

from bot.backups import BackupRecord, Catalogue
from bot.cluster.etcdctl import human_size
from bot.config import Settings
from bot.log import get_logger
from handlers.common import CLUSTER_ARG, CommandSpec, counted, escape, parse_for_cluster

log = get_logger("etcdbot.backup")

LIST_SPEC = CommandSpec("/etcd-backups", (CLUSTER_ARG,))

Respond = Callable[..., Awaitable[Any]]


def render_catalogue(*, cluster: str, records: Sequence[BackupRecord]) -> list[Block]:
    if not records:
        return [SectionBlock(text=MarkdownTextObject(text=f"No backups of `{cluster}` in the catalogue yet. "
                                                          f"Take one with `/etcd-backup {cluster}`."))]
    rows = [("ID", "TIME (UTC)", "VERSION", "REVISION", "SIZE", "HOST", "VERIFIED")]
    for r in records:
        rows.append((r.id, datetime.fromtimestamp(r.finished_at, UTC).strftime("%Y-%m-%d %H:%M:%S"), r.version,
                     str(r.revision), human_size(r.snapshot_size), r.host, "yes" if r.verified else "NO"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)
    head = f"*Backups of `{cluster}`* (newest first; restore needs the same OpenShift version)"
    return [SectionBlock(text=MarkdownTextObject(text=f"{head}\n```\n{escape(table)[:2700]}\n```"))]


@dataclass
class BackupCommands:
    """The listener's shared dependencies."""

    settings: Settings
    catalogue: Catalogue

    async def handle_list(self, ack: Respond, command: dict[str, Any], respond: Respond) -> None:
        found = await parse_for_cluster(ack=ack, command=command, spec=LIST_SPEC, settings=self.settings)
        if found is None:
            return
        _, cluster = found
        await ack()
        records = await self.catalogue.list(cluster=cluster, limit=20)
        await respond(text=f"Backups of {cluster}", blocks=render_catalogue(cluster=cluster, records=records),
                      response_type="ephemeral")


def register(app: AsyncApp, *, commands: BackupCommands, middleware: Sequence[Any]) -> set[str]:
    app.command(LIST_SPEC.command, middleware=list(middleware))(counted(LIST_SPEC.command, commands.handle_list))
    return {LIST_SPEC.command}
