"""What `/etcd-restore` checks before it touches anything: the backup whole (both files, their
sha256), the cluster's version (from the API, or the last the bot read when the API is down),
SSH to every master. Used by the admission (before a run starts) and by the run's first step
(again, right before the copy), in procedures/restore.py.

Why the last version read: with quorum lost the API does not answer, and that is when a restore
is needed; the bot keeps what it read last (`Catalogue.note_seen`) and the version recorded with
the newest backup, and says which it used.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bot.backups import BACKUP_ID_RE, BackupRecord, SeenCluster
from bot.cluster.hosts import CommandResult
from bot.cluster.kube import KubeError
from bot.procedure import StepContext
from procedures.backup import full_version, proxy_env

API_TIMEOUT = 10.0  # one read of the API while it may be down
SSH_TIMEOUT = 15.0  # `true` on a master


def fail_text(result: CommandResult) -> str:
    if result.rc is None:
        return result.error or "no answer"
    return (result.stderr.strip() or result.stdout.strip())[-300:] or f"exit status {result.rc}"


@dataclass(frozen=True)
class ClusterView:
    version: str | None
    proxy: dict[str, str]
    masters: tuple[str, ...]
    api_up: bool
    source: str  # how the version was known, as people read it
    api_error: str = ""


def utc(epoch: float) -> str:
    return f"{datetime.fromtimestamp(epoch, UTC):%Y-%m-%d %H:%M:%S} UTC"


def age_text(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min"


async def read_cluster(ctx: StepContext) -> ClusterView:
    """Version, proxy and masters from the API (remembered for later), else the last the bot read
    (or the newest backup's version), saying so."""
    hosts = ctx.need_hosts()
    kube = ctx.kube
    error = "no kubeconfig"
    if kube is not None:
        try:
            async with asyncio.timeout(API_TIMEOUT + 2):
                cv, proxy, nodes = await asyncio.gather(kube.get_cluster_version(), kube.get_proxy(),
                                                        kube.nodes_by_role("master"))
        except (KubeError, TimeoutError) as exc:
            error = str(exc) or "timed out"
        else:
            version = full_version(cv)
            env = proxy_env(proxy)
            masters = tuple(sorted(str(n.get("metadata", {}).get("name", "")) for n in nodes))
            if version and ctx.catalogue is not None:
                await ctx.catalogue.note_seen(SeenCluster(cluster=ctx.cluster_name, version=version, proxy=env,
                                                          at=time.time(), masters=masters))
            return ClusterView(version=version, proxy=env, masters=_in_config_order(masters, hosts.nodes),
                               api_up=True, source="read from the API now")
    seen = await ctx.catalogue.seen_last(ctx.cluster_name) if ctx.catalogue is not None else None
    newest = await ctx.catalogue.list(cluster=ctx.cluster_name, limit=1) if ctx.catalogue is not None else []
    masters = _in_config_order(seen.masters, hosts.nodes) if seen and seen.masters else tuple(hosts.nodes)
    proxy = dict(seen.proxy) if seen else {}
    if seen is not None and (not newest or seen.at >= newest[0].finished_at):
        return ClusterView(version=seen.version, proxy=proxy, masters=masters, api_up=False, api_error=error,
                           source=f"the last version the bot read, at {utc(seen.at)} (the API does not answer: {error[:120]})")
    if newest:
        return ClusterView(version=newest[0].version, proxy=proxy, masters=masters, api_up=False, api_error=error,
                           source=(f"the last version the bot read, with backup `{newest[0].id}` at "
                                   f"{utc(newest[0].finished_at)} (the API does not answer: {error[:120]})"))
    return ClusterView(version=None, proxy=proxy, masters=masters, api_up=False, api_error=error,
                       source=f"unknown (the API does not answer: {error[:120]}, and the bot never read it)")


def _in_config_order(masters: Sequence[str], configured: Sequence[str]) -> tuple[str, ...]:
    """The API's masters in the SSH configuration's order (a stable default recovery host);
    masters without an SSH address last (they are reported as unreachable)."""
    known = [n for n in configured if n in masters]
    return (*known, *sorted(n for n in masters if n not in configured))


async def unreachable(ctx: StepContext, masters: Sequence[str]) -> dict[str, str]:
    """Master -> why SSH did not work, for every master that does not run `true`."""
    hosts = ctx.need_hosts()

    async def one(node: str) -> tuple[str, str]:
        if node not in hosts.nodes:
            return node, "no SSH address configured"
        result = await hosts.run(node=node, argv=["true"], timeout=SSH_TIMEOUT)
        return node, "" if result.ok else fail_text(result)

    answers = await asyncio.gather(*(one(n) for n in masters))
    return {node: why for node, why in answers if why}


def version_mismatch(*, backup: BackupRecord, view: ClusterView) -> str:
    if view.version is None or view.version == backup.version:
        return ""
    return (f"Backup `{backup.id}` was taken on OpenShift {backup.version} and `{backup.cluster}` runs {view.version} "
            f"({view.source}): a restore needs a backup of the same z-stream.")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_problems(record: BackupRecord) -> list[str]:
    """Both files present, each with the size and sha256 the catalogue holds (reads them whole)."""
    problems = []
    for role in ("snapshot", "resources"):
        try:
            stored = record.file(role)
        except StopIteration:
            problems.append(f"the backup has no {role} file on record")
            continue
        path = Path(stored.path)
        if not path.is_file():
            problems.append(f"{stored.name} is missing from the store ({path})")
            continue
        found = sha256_file(path)
        if found != stored.sha256:
            problems.append(f"{stored.name} has sha256 {found[:16]}…, the catalogue says {stored.sha256[:16]}… "
                            "(the file changed since the backup)")
    return problems


async def find_backup(ctx: StepContext, backup_id: str) -> BackupRecord | None:
    if ctx.catalogue is None or not BACKUP_ID_RE.fullmatch(backup_id):
        return None
    record = await ctx.catalogue.get(backup_id)
    return record if record is not None and record.cluster == ctx.cluster_name else None


def recovery_of(ctx: StepContext, masters: Sequence[str]) -> str:
    asked = str(ctx.parameters.get("recovery-host") or "")
    return asked or (masters[0] if masters else "")
