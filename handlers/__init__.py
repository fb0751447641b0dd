"""Slack in and out: `register(app, ...)` wires every slash command to its handler.

One module per command; each parses, checks, acks within 3 s and renders Block Kit. Handlers
reach clusters only through `bot.clusters.Clusters`, never directly.
"""

from __future__ import annotations

from slack_bolt.async_app import AsyncApp

from bot.auth import Authorizer
from bot.clusters import Clusters
from bot.config import Settings
from handlers import help as help_
from handlers import status
from handlers.common import authorization_middleware, counted


def register(app: AsyncApp, *, settings: Settings, clusters: Clusters, authorizer: Authorizer) -> set[str]:
    """Registers the commands this package implements; returns their names (for /etcd-help)."""
    authorize = authorization_middleware(authorizer)
    app.command(status.SPEC.command, middleware=[authorize])(
        counted(status.SPEC.command, status.make_handler(settings=settings, clusters=clusters)))
    available = {status.SPEC.command, "/etcd-help"}
    app.command("/etcd-help")(counted("/etcd-help", help_.make_handler(available=available,
                                                                      clusters=settings.cluster_names)))
    return available
