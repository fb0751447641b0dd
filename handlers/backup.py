"""`/etcd-backup [cluster] [--dry-run]`, its "Back up anyway" button, and `/etcd-backups [cluster]`.

Before a run starts, the handler asks the two questions the document asks of a person: is the
cluster past its first 24 hours (else the backup would hold certificates about to expire: refuse,
and say when it becomes possible), and is it peak time (a backup blocks etcd while it runs: warn,
with a button to go on anyway). Everything after that is the runner's: lock (a busy cluster is
answered with the run that holds it), progress message, steps (procedures/backup.py).

`--dry-run` reads the API (what a run would read first, and which master it would pick now) and
posts every command the run would send; it changes nothing and takes no lock.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.models.blocks import ActionsBlock, Block, ButtonElement, MarkdownTextObject, SectionBlock

from bot.auth import Authorizer
from bot.backups import BackupRecord, Catalogue
from bot.cluster.etcdctl import human_size
from bot.clusters import Clusters
from bot.config import CLUSTER_NAME_RE, Settings
from bot.log import get_logger
from bot.procedure import Procedure
from bot.progress import slack_time
from bot.runner import Busy, Runner
from handlers.common import (
    CLUSTER_ARG,
    CommandSpec,
    command_context,
    counted,
    escape,
    mark_outcome,
    parse_for_cluster,
)
from procedures import backup as ch1

log = get_logger("etcdbot.backup")

SPEC = CommandSpec("/etcd-backup", (CLUSTER_ARG,), flags=frozenset({"--dry-run"}))
LIST_SPEC = CommandSpec("/etcd-backups", (CLUSTER_ARG,))
ANYWAY_ACTION = "backup_anyway"

Respond = Callable[..., Awaitable[Any]]
Clock = Callable[[], datetime]


def _utc(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def young_text(*, cluster: str, installed: datetime, possible: datetime) -> str:
    return (
        f":no_entry: No backup of `{cluster}` now: it was installed at {_utc(installed)}, and until the first "
        f"certificate rotation (24 h after installation) a backup would hold expired certificates. "
        f"A backup is possible from {slack_time(possible.timestamp())} ({_utc(possible)}): "
        f"run `/etcd-backup {cluster}` then."
    )


def peak_blocks(*, cluster: str, peak_hours: str, timezone: str) -> list[Block]:
    text = (
        f":warning: It is peak time on `{cluster}` ({peak_hours} {timezone}). A backup blocks etcd while the "
        "snapshot is taken; the document advises non-peak hours. Back up anyway?"
    )
    return [
        SectionBlock(text=MarkdownTextObject(text=text)),
        ActionsBlock(block_id=f"backup-peak:{cluster}", elements=[
            ButtonElement(text="Back up anyway", action_id=ANYWAY_ACTION, value=json.dumps({"cluster": cluster}),
                          style="primary"),
        ]),
    ]


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
    """The listeners' shared dependencies."""

    settings: Settings
    clusters: Clusters
    runner: Runner
    catalogue: Catalogue
    procedure: Callable[[], Procedure]
    authorizer: Authorizer
    now: Clock = lambda: datetime.now(UTC)  # noqa: E731 (a default clock; tests pass their own)

    async def start(self, *, cluster: str, user: str, channel: str, respond: Respond) -> None:
        result = await self.runner.start(self.procedure(), cluster=cluster, parameters={}, requester=user,
                                         channel=channel)
        if isinstance(result, Busy):
            log.info("backup.busy", cluster=cluster, holder=result.run_id, user=user)
            mark_outcome("busy")
            await respond(text=f":hourglass: {result.message()}", response_type="ephemeral", replace_original=False)
            return
        log.info("backup.started", cluster=cluster, run_id=result.id, user=user)

    async def handle_backup(self, ack: Respond, command: dict[str, Any], respond: Respond) -> None:
        found = await parse_for_cluster(ack=ack, command=command, spec=SPEC, settings=self.settings)
        if found is None:
            return
        parsed, cluster = found
        dry_run = "--dry-run" in parsed.flags
        await ack(text=f"{'Planning' if dry_run else 'Checking'} a backup of {cluster}…", response_type="ephemeral")
        log.info("backup.asked", cluster=cluster, dry_run=dry_run, **command_context(command))
        user, channel = str(command["user_id"]), str(command["channel_id"])
        pre = await self.clusters.backup_preflight(cluster, pick=dry_run)
        now = self.now()
        settings = self.settings.cluster(cluster)
        assert settings is not None  # resolve_cluster checked it
        notes = []
        if pre.installed_at is not None and ch1.too_young(installed=pre.installed_at, now=now):
            text = young_text(cluster=cluster, installed=pre.installed_at, possible=ch1.possible_at(pre.installed_at))
            if not dry_run:
                await respond(text=text, response_type="ephemeral")
                log.warning("backup.refused", cluster=cluster, reason="first 24 h", user=user)
                return
            notes.append(text)
        peak = ch1.in_peak_hours(now=now, window=settings.peak_window, timezone=settings.timezone)
        if dry_run:
            await self.runner.dry_run(
                self.procedure(), cluster=cluster, requester=user, channel=channel,
                parameters={"master": pre.master or "NONE-HEALTHY-NOW", "proxy": "on" if pre.proxy_on else "off",
                            "encrypted": "yes" if pre.encrypted else "no"},
            )
            if peak:
                notes.append(f":warning: It is peak time on `{cluster}` ({settings.peak_hours} {settings.timezone}).")
            if pre.error:
                notes.append(f"The API did not answer ({escape(pre.error)}): the plan could not name the master.")
            if notes:
                await respond(text="\n".join(notes), response_type="ephemeral")
            return
        if peak:
            await respond(text=f"It is peak time on {cluster}: back up anyway?", response_type="ephemeral",
                          blocks=peak_blocks(cluster=cluster, peak_hours=settings.peak_hours, timezone=settings.timezone))
            log.info("backup.peak_warning", cluster=cluster, user=user)
            return
        await self.start(cluster=cluster, user=user, channel=channel, respond=respond)

    async def handle_anyway(self, ack: Respond, body: dict[str, Any], client: Any, respond: Respond) -> None:
        await ack()
        user = str(body["user"]["id"])
        decision = await self.authorizer.check(client=client, user_id=user)
        if not decision.allowed:
            await respond(text=f":no_entry: You may not start a backup: {decision.reason}.", replace_original=False,
                          response_type="ephemeral")
            return
        try:
            cluster = str(json.loads(body["actions"][0]["value"])["cluster"])
        except (ValueError, KeyError, TypeError, IndexError):
            await respond(text="This button names no cluster I can read.", replace_original=False)
            return
        if not CLUSTER_NAME_RE.fullmatch(cluster) or self.settings.cluster(cluster) is None:
            await respond(text=f"I know no cluster `{escape(cluster)}`.", replace_original=False)
            return
        channel = str((body.get("channel") or {}).get("id") or body.get("container", {}).get("channel_id", ""))
        log.info("backup.peak_overridden", cluster=cluster, user=user)
        await respond(text=f"Starting a backup of {cluster} in peak time, as asked by <@{user}>.",
                      replace_original=True, response_type="ephemeral")
        await self.start(cluster=cluster, user=user, channel=channel, respond=respond)

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
    app.command(SPEC.command, middleware=list(middleware))(counted(SPEC.command, commands.handle_backup))
    app.command(LIST_SPEC.command, middleware=list(middleware))(counted(LIST_SPEC.command, commands.handle_list))
    app.action(ANYWAY_ACTION)(commands.handle_anyway)
    return {SPEC.command, LIST_SPEC.command}
