"""`/etcd-help`: the commands, what each does, and which of them this bot answers yet.

The list is the one of DESIGN.md; a command whose handler is not registered is shown as coming,
so help never promises something that would answer "dispatch_failed".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

from bot.log import get_logger
from handlers.common import command_context, escape

log = get_logger("etcdbot.help")

COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("/etcd-status", "/etcd-status [cluster]", "members, pods, nodes, machines, operator conditions and a diagnosis"),
    ("/etcd-backup", "/etcd-backup [cluster]", "take an etcd backup from one healthy master (Ch.1)"),
    ("/etcd-backups", "/etcd-backups [cluster] | prune [--dry-run]", "list the stored backups (drilled or not); prune by the retention rules"),
    ("/etcd-backup-verify", "/etcd-backup-verify <id>", "drill a stored backup again: its sha256, then a restore into a scratch etcd, checked"),
    ("/etcd-replace-member", "/etcd-replace-member <node> [cluster]", "replace an unhealthy member (Ch.2)"),
    ("/etcd-restore", "/etcd-restore <backup-id> [--recovery-host NODE] [--dry-run] [cluster]",
     "restore to a previous cluster state (Ch.5.3)"),
    ("/etcd-shutdown", "/etcd-shutdown [cluster] [--dry-run]",
     "shut every node down gracefully, after a backup, with a second person's approval (Ch.3)"),
    ("/etcd-restart-check", "/etcd-restart-check [cluster] [--dry-run]",
     "after power-on: review and approve the nodes' CSRs, masters then workers Ready, no operator Degraded (Ch.4)"),
    ("/etcd-approve-csrs", "/etcd-approve-csrs [cluster] [--dry-run]",
     "review pending CSRs and approve the valid ones, e.g. after expired certificates (Ch.5.4)"),
    ("/etcd-runs", "/etcd-runs", "runs in progress and recent ones"),
    ("/etcd-abort", "/etcd-abort <run>", "abort a run"),
    ("/etcd-help", "/etcd-help", "this list"),
)


def render_help(*, available: Collection[str], clusters: Collection[str],
                extra: Sequence[tuple[str, str, str]] = ()) -> str:
    """`extra`: (command, usage, what) of registered procedures this list does not know (loaded
    with ETCDBOT_PROCEDURE_MODULES)."""
    known = {name for name, _, _ in COMMANDS}
    listed = [*COMMANDS, *(e for e in extra if e[0] not in known)]
    now = [f"• `{escape(usage)}`: {what}" for name, usage, what in listed if name in available]
    later = [f"`{name}`" for name, _, _ in COMMANDS if name not in available]
    lines = ["*etcdbot commands*", *now]
    if later:
        lines.append("_Coming:_ " + ", ".join(later))
    lines.append(
        f"The cluster defaults to the one mapped to this channel, or the only one configured. "
        f"Clusters: {', '.join(f'`{c}`' for c in clusters)}."
    )
    return "\n".join(lines)


def make_handler(*, available: Collection[str], clusters: Collection[str],
                 extra: Sequence[tuple[str, str, str]] = ()) -> Callable[..., Awaitable[None]]:
    async def handle_help(ack: Callable[..., Awaitable[Any]], command: dict[str, Any]) -> None:
        await ack(text=render_help(available=available, clusters=clusters, extra=extra), response_type="ephemeral")
        log.info("help", **command_context(command))

    return handle_help
