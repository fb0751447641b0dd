"""Slack in and out: `register(app, ...)` wires every slash command to its handler.

One module per command; each parses, checks, acks within 3 s and renders Block Kit. Handlers
reach clusters only through `bot.clusters.Clusters`, never directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slack_bolt.async_app import AsyncApp

from bot.auth import Authorizer
from bot.clusters import Clusters
from bot.config import Settings
from handlers import help as help_
from handlers import status
from handlers.common import authorization_middleware, counted

if TYPE_CHECKING:
    from bot.services import Services


def register(app: AsyncApp, *, settings: Settings, clusters: Clusters, authorizer: Authorizer,
             services: Services | None = None) -> set[str]:
    """Registers the commands this package implements; returns their names (for /etcd-help).
    Procedures (`/etcd-backup`, runs and their buttons) need `services` (the runner and the store)."""
    authorize = authorization_middleware(authorizer)
    note = services.watch.status_note if services is not None and services.watch is not None else None
    app.command(status.SPEC.command, middleware=[authorize])(
        counted(status.SPEC.command, status.make_handler(settings=settings, clusters=clusters, note=note)))
    available = {status.SPEC.command, "/etcd-help"}
    if services is not None:
        available |= _register_procedures(app, settings=settings, clusters=clusters, authorizer=authorizer,
                                          services=services)
    app.command("/etcd-help")(counted("/etcd-help", help_.make_handler(available=available,
                                                                      clusters=settings.cluster_names,
                                                                      extra=_procedure_help())))
    return available


def _procedure_help() -> list[tuple[str, str, str]]:
    """Help lines of the registered procedures that have a command (their usage from the kit)."""
    from bot.procedure import registrations
    from handlers.procedures import spec_of

    return [(r.command, spec_of(r).usage, r.summary or r.title) for r in registrations() if r.command]


def _register_procedures(app: AsyncApp, *, settings: Settings, clusters: Clusters, authorizer: Authorizer,
                         services: Services) -> set[str]:
    from bot.procedure import registrations
    from handlers import backup, procedures, runs
    from handlers.common import UsageError, action_authorization_middleware, resolve_cluster

    def cluster_of(channel_id: str, _text: str) -> str | None:
        try:
            return resolve_cluster(settings=settings, explicit=None, channel_id=channel_id, command="/etcd-runs")
        except UsageError:
            return None

    runs.register(app, runner=services.runner, resolve_cluster=cluster_of,
                  command_middleware=[authorization_middleware(authorizer)],
                  action_middleware=[action_authorization_middleware(authorizer)])
    commands = procedures.ProcedureCommands(settings=settings, runner=services.runner, procedure=services.procedure,
                                            authorizer=authorizer)
    available = procedures.register(app, commands=commands, registrations=registrations(),
                                    middleware=[authorization_middleware(authorizer)])
    available |= backup.register(app, commands=backup.BackupCommands(settings=settings, catalogue=services.catalogue,
                                                                     runner=services.runner,
                                                                     procedure=services.procedure),
                                 middleware=[authorization_middleware(authorizer)])
    return available | {"/etcd-runs", "/etcd-abort"}
