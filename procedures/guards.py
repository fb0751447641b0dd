"""Rules several procedures ask before they start, written once.

- `own_cluster_refusal(ctx, action=...)`: never shut down or restore the cluster the bot runs on
  (bot/cluster/incluster.py tells; this turns its verdict into an admission). Used by
  `/etcd-shutdown`, and meant for `/etcd-restore` too: `refusal = await own_cluster_refusal(ctx,
  action="restore")`, returned as it is when it is not None.
- the backup "taken before": `recent_backup(ctx, max_age=...)` finds a usable backup of the
  running version younger than a limit; `take_backup(ctx)` runs chapter 1's steps inside the
  caller's run (one run, one lock: nothing else can start between the backup and what follows).
- `newest_usable_backup(ctx, version=...)`: the backup to name when a cluster must be restored.

"Usable": verified (both files matched the master's sha256 when copied), still in the store,
and drilled (a restore drill passed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from bot.backups import BackupRecord
from bot.cluster.incluster import cluster_uid, decide, detect, kubeconfig_server, own_uid
from bot.cluster.kube import KubeError
from bot.procedure import Admission, StepContext, StepFailed, StepResult
from procedures import backup
from procedures.cluster_nodes import list_nodes

DEPLOY_DOC = "docs/deploy.md (\"Where the bot runs\")"


# ---- the bot's own cluster -------------------------------------------------------------------


async def own_cluster_refusal(ctx: StepContext, *, action: str,
                              environ: Mapping[str, str] | None = None) -> Admission | None:
    """A refusal when the target is (or may be) the cluster the bot runs on; None when it is not.
    `action` is the verb the message uses ("shut down", "restore")."""
    incluster = detect(environ=os.environ if environ is None else environ,
                       serviceaccount_dir=ctx.settings.serviceaccount_dir)
    if incluster is None:
        return None
    own, own_error = None, ""
    try:
        own = await own_uid(incluster)
    except (KubeError, OSError, TimeoutError) as exc:
        own_error = f"this pod's own cluster could not be read ({exc})"
    target, target_error = None, ""
    nodes: set[str] = set(ctx.hosts.every_node) if ctx.hosts is not None else set()
    if ctx.kube is not None:
        try:
            target = await cluster_uid(ctx.kube)
        except (KubeError, TimeoutError) as exc:
            target_error = f"`{ctx.cluster_name}`'s API did not say ({exc})"
        try:
            nodes |= {n.name for n in await list_nodes(ctx.kube)}
        except (KubeError, TimeoutError):
            pass
    check = decide(incluster=incluster, target_server=kubeconfig_server(ctx.cluster.kubeconfig), own_uid=own,
                   target_uid=target, target_nodes=nodes, own_error=own_error, target_error=target_error)
    if check.same is False:
        return None
    if check.same:
        return Admission.refuse(
            f"`{ctx.cluster_name}` is the cluster this bot runs on: {check.why}. A bot cannot {action} the cluster "
            "it runs on: it would stop itself half way, holding the lock, with nobody told what was done.",
            next_action=f"Run it from a bot outside this cluster (a management cluster): see {DEPLOY_DOC}.",
        )
    return Admission.refuse(
        f"This bot runs in a pod, and it cannot tell whether `{ctx.cluster_name}` is its own cluster: {check.why}. "
        f"It will not {action} a cluster that may be the one it runs on.",
        next_action=("Give the bot's service account `get` on namespace kube-system in both clusters and set NODE_NAME "
                     f"from the downward API (the Helm chart does both), or run it from outside: see {DEPLOY_DOC}."),
    )


# ---- backups -----------------------------------------------------------------------------------


def files_present(record: BackupRecord) -> bool:
    return bool(record.files) and all(Path(f.path).is_file() for f in record.files)


def usable(record: BackupRecord) -> bool:
    """Verified (both files matched the master's sha256) and drilled (a restore drill passed): a
    backup whose drill failed, or has not run, is not one to stake a cluster on."""
    return bool(record.verified) and record.drilled


def fresh_backup(records: Sequence[BackupRecord], *, version: str | None, now: float, max_age: float,
                 present: Callable[[BackupRecord], bool] = files_present) -> BackupRecord | None:
    """The newest usable backup of `version` finished less than `max_age` seconds ago whose files
    are still in the store (None: there is none)."""
    found = [r for r in records if usable(r) and (version is None or r.version == version)
             and now - r.finished_at <= max_age and r.finished_at <= now + 60]
    return next((r for r in sorted(found, key=lambda r: r.finished_at, reverse=True) if present(r)), None)


def newest_usable(records: Sequence[BackupRecord], *, version: str | None,
                  present: Callable[[BackupRecord], bool] = files_present) -> BackupRecord | None:
    """The newest usable backup of `version` (any age) still in the store: what a restore would use."""
    found = [r for r in records if usable(r) and (version is None or r.version == version)]
    return next((r for r in sorted(found, key=lambda r: r.finished_at, reverse=True) if present(r)), None)


async def running_version(ctx: StepContext) -> str | None:
    """The version the cluster runs now (None when the API does not say)."""
    if ctx.kube is None:
        return None
    try:
        return backup.full_version(await ctx.kube.get_cluster_version())
    except (KubeError, TimeoutError):
        return None


async def _records(ctx: StepContext) -> list[BackupRecord]:
    if ctx.catalogue is None:
        return []
    return await ctx.catalogue.list(cluster=ctx.cluster_name, limit=100)


async def recent_backup(ctx: StepContext, *, max_age: float) -> tuple[BackupRecord | None, str | None]:
    """The usable backup of the running version younger than `max_age`, and that version."""
    version = await running_version(ctx)
    found = fresh_backup(await _records(ctx), version=version, now=time.time(), max_age=max_age)
    return (found if version is not None else None), version


async def newest_usable_backup(ctx: StepContext, *, version: str | None) -> BackupRecord | None:
    return newest_usable(await _records(ctx), version=version)


def restore_advice(*, cluster: str, found: BackupRecord | None, version: str | None) -> str:
    """What to do when a cluster does not come back: the newest usable backup and the command."""
    if found is None:
        of = f" of OpenShift {version}" if version else ""
        return (f"Restore to a previous cluster state (5.3): no usable backup{of} of `{cluster}` is in the store; "
                "find one taken outside the bot, or ask `/etcd-backups` what there is.")
    taken = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(found.finished_at))
    return (f"Restore to a previous cluster state (5.3) from the newest usable backup, `{found.id}` (OpenShift "
            f"{found.version}, taken {taken}): `/etcd-restore {found.id} {cluster}`.")


@dataclasses.dataclass(frozen=True)
class TakenBackup:
    backup_id: str
    version: str
    taken: bool  # False: a recent one was found and used


async def take_backup(ctx: StepContext) -> TakenBackup:
    """Chapter 1's steps (as `/etcd-backup` runs them) inside the caller's run and lock, each with
    its timeout and retries. Raises StepFailed naming the step that failed."""
    sub = dataclasses.replace(ctx, results={})
    for step in backup.STEPS:
        await ctx.heartbeat(f"backup: {step.title}")
        for attempt in range(1, step.retries + 2):
            try:
                async with asyncio.timeout(step.timeout):
                    sub.results[step.id] = await step.run(sub)
                break
            except StepFailed as exc:
                if not exc.retryable or attempt > step.retries:
                    raise StepFailed(f"the backup failed at *{step.title}*: {exc.message}",
                                     next_action=exc.next_action or f"Take one with `/etcd-backup {ctx.cluster_name}`.",
                                     ) from exc
                await ctx.heartbeat(f"backup: {step.title}: attempt {attempt} failed ({exc.message}), trying again")
                await asyncio.sleep(2.0 * attempt)  # the backup step's own retry back-off
            except TimeoutError as exc:
                raise StepFailed(f"the backup timed out at *{step.title}* after {step.timeout:g} s",
                                 next_action=f"Take one with `/etcd-backup {ctx.cluster_name}`.") from exc
    recorded = sub.result(backup.S_RECORD, backup.RecordedBackup)
    version = sub.result(backup.S_PREREQS, backup.Prerequisites).version
    return TakenBackup(backup_id=recorded.backup_id, version=version, taken=True)


async def backup_first(ctx: StepContext, *, max_age: float, why: str) -> StepResult:
    """A step's body: the recent usable backup if there is one, else one taken now. `why` names
    the procedure in the summary ("before the shutdown")."""
    found, version = await recent_backup(ctx, max_age=max_age)
    if found is not None:
        taken = time.strftime("%H:%M UTC", time.gmtime(found.finished_at))
        return StepResult.of(f"backup `{found.id}` (OpenShift {found.version}, taken {taken}) is recent enough {why}",
                             TakenBackup(backup_id=found.id, version=found.version, taken=False))
    made = await take_backup(ctx)
    return StepResult.of(f"took backup `{made.backup_id}` (OpenShift {made.version or version}) {why}", made)
