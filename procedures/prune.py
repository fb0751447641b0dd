"""`/etcd-backups prune [--dry-run]`: the retention rules applied to the backup store on demand.

The same rules and the same guards as the last step of every backup (bot/retention.py decides,
bot/pruning.py deletes): keep the newest `last`, the newest of each of the `daily`, `weekly`,
`monthly` most recent periods; never the newest drilled backup, the newest of the cluster's
current version, or one a live run uses. `--dry-run` shows the plan: every backup with the rules
that keep it, or the deletion it would get, and deletes nothing.

A run of its own (lock, progress message, audit), so a prune never races a backup or a restore
on the same cluster; each deletion is also its own audit entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bot.backups import BackupRecord
from bot.cluster.etcdctl import human_size
from bot.cluster.kube import KubeError
from bot.procedure import (
    PlannedCommand,
    Procedure,
    Step,
    StepContext,
    StepFailed,
    StepId,
    StepKind,
    StepResult,
    no_action,
    register,
)
from bot.pruning import PrunePlan, apply_prune, plan_prune
from procedures.backup import backup_store, full_version, retention_rules

NAME = "prune"
TITLE = "Applying the retention rules to the backup store"
S_DECIDE = StepId("prune.decide")
S_DELETE = StepId("prune.delete")


@dataclass(frozen=True)
class Decision:
    version: str
    delete: tuple[str, ...]
    kept: int


async def current_version(ctx: StepContext) -> str:
    """The cluster's version: retention keeps the newest backup of it (a restore needs the same z-stream)."""
    try:
        version = full_version(await ctx.need_kube().get_cluster_version())
    except KubeError as exc:
        raise StepFailed(f"could not read the cluster version: {exc}; retention needs it to keep the newest "
                         "backup of the current version", retryable=True,
                         next_action=f"Check the API with `/etcd-status {ctx.cluster_name}`, then prune again.") from exc
    if not version:
        raise StepFailed("clusterversion/version names no version", next_action="Check `oc get clusterversion`.")
    return version


async def _plan(ctx: StepContext) -> PrunePlan:
    store, catalogue = backup_store(ctx)
    return await plan_prune(store=store, catalogue=catalogue, cluster=ctx.cluster_name, rules=retention_rules(ctx),
                            current_version=await current_version(ctx), timezone=ctx.cluster.timezone)


async def decide(ctx: StepContext) -> StepResult:
    plan = await _plan(ctx)
    lines = [f"{'KEEP  ' if v.keep else 'DELETE'} {v.id}: {'; '.join(v.reasons)}" for v in plan.verdicts]
    return StepResult.of(plan.summary(), Decision(version=plan.current_version,
                                                  delete=tuple(r.id for r, _ in plan.deletions), kept=len(plan.kept)),
                         output="\n".join(lines))


async def _decide_plan(ctx: StepContext) -> list[PlannedCommand]:
    try:
        plan = await _plan(ctx)
    except StepFailed as exc:
        return [PlannedCommand("bot", f"cannot decide now: {exc.message}")]
    head = PlannedCommand("bot", f"{plan.summary()}; current version {plan.current_version}")
    return [head, *(PlannedCommand("keep", f"{r.id} ({human_size(r.size)}): {'; '.join(v.reasons)}")
                    for r, v in plan.kept)]


async def delete(ctx: StepContext) -> StepResult:
    decided = ctx.result(S_DECIDE, Decision)
    if not decided.delete:
        return StepResult(summary="nothing to delete")
    store, catalogue = backup_store(ctx)
    plan = await _plan(ctx)  # again: only what both decisions delete goes
    still = set(decided.delete)
    narrowed = PrunePlan(cluster=plan.cluster, rules=plan.rules, current_version=plan.current_version,
                         verdicts=tuple(v for v in plan.verdicts if v.keep or v.id in still), records=plan.records)
    deleted = await apply_prune(narrowed, store=store, catalogue=catalogue, actor=ctx.requester, run_id=ctx.run_id)
    freed = sum(r.size for r in deleted)
    return StepResult(summary=f"deleted {len(deleted)} backups ({human_size(freed)}): "
                              + ", ".join(f"`{r.id}`" for r in deleted) if deleted else "nothing deleted")


async def _delete_plan(ctx: StepContext) -> list[PlannedCommand]:
    try:
        plan = await _plan(ctx)
    except StepFailed:
        return [PlannedCommand("bot", "delete what the first step decides")]
    if not plan.deletions:
        return [no_action("nothing to delete")]
    return [PlannedCommand("delete", f"{r.id} ({human_size(r.size)}, OpenShift {r.version}): {'; '.join(v.reasons)}"
                                     f" -> remove {_dir_of(r)}") for r, v in plan.deletions]


def _dir_of(record: BackupRecord) -> str:
    return str(record.file("snapshot").path).rsplit("/", 1)[0]


STEPS: tuple[Step, ...] = (
    Step(S_DECIDE, "Decide which backups the retention rules delete", StepKind.READ, decide, _decide_plan,
         timeout=120, retries=1, safe_to_repeat=True),
    Step(S_DELETE, "Delete those backups from the store (each one audited)", StepKind.CHANGE, delete, _delete_plan,
         timeout=600, safe_to_repeat=True),
)


def build(_parameters: Mapping[str, Any] | None = None) -> Procedure:
    return Procedure(name=NAME, title=TITLE, chapter="1", steps=STEPS)


register(NAME, build, title=TITLE, summary="delete the backups the retention rules do not keep")
