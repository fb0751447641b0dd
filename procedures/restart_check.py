"""Chapter 4, "Restarting the cluster gracefully", as steps the runner drives: `/etcd-restart-check`.

Run after the machines are powered on. The document: wait about 10 minutes; are the masters
Ready? If not, review the pending CSRs and approve the valid ones; then the same for the workers;
then no cluster operator Degraded and every node Ready. If the cluster does not recover, restore
it (5.3). The bot:
1. reads what the bot's shutdown recorded (which nodes went down, when, who, the backup taken),
   and waits, within `ETCDBOT_RESTART_TIMEOUT`, for the API to answer;
2. reviews the pending CSRs (procedures/csrs.py says which are valid and why; suspicious ones are
   flagged and never approved), and a second person approves the valid ones; nodes that get their
   client certificate then file a kubelet-serving CSR: a second review and approval
   (procedures/csr_steps.py);
3. waits for the masters to be Ready, then the workers, then for no cluster operator to be
   Degraded, each within `ETCDBOT_RESTART_TIMEOUT`;
4. says the cluster is back, and records it with the shutdown.
Whenever a wait runs out, the run stops and says to restore, naming the newest usable backup and
the `/etcd-restore` command (procedures/guards.py).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bot.cluster.kube import KubeError, parse_conditions
from bot.procedure import (
    NotYet,
    PlannedCommand,
    Procedure,
    Step,
    StepContext,
    StepFailed,
    StepId,
    StepKind,
    StepResult,
    WaitTimedOut,
    register,
    wait_until,
)
from procedures.cluster_nodes import NodeView, list_nodes, wait_nodes_ready
from procedures.csr_steps import approve_step, review_step
from procedures.csrs import read_csrs
from procedures.guards import newest_usable_backup, restore_advice, running_version

NAME = "restart-check"
TITLE = "Restarting the cluster gracefully"
COMMAND = "/etcd-restart-check"

S_EXPECT = StepId("ch4.expected-nodes")
S_REVIEW = StepId("ch4.review-csrs")
S_APPROVE = StepId("ch4.approve-csrs")
S_REVIEW_SERVING = StepId("ch4.review-serving-csrs")
S_APPROVE_SERVING = StepId("ch4.approve-serving-csrs")
S_MASTERS = StepId("ch4.masters-ready")
S_WORKERS = StepId("ch4.workers-ready")
S_OPERATORS = StepId("ch4.no-degraded-operators")
S_BACK = StepId("ch4.cluster-back")


@dataclass(frozen=True)
class Expected:
    """The nodes to expect back: the shutdown's and the API's; and what the shutdown recorded."""

    masters: tuple[str, ...]
    workers: tuple[str, ...]
    version: str = ""
    shutdown_run: str = ""
    shutdown_at: float | None = None
    shutdown_by: str = ""
    backup_id: str = ""
    unlisted: tuple[str, ...] = ()  # went down with the shutdown, not listed by the API now
    fresh_after: float | None = None  # a node status older than this is from before the shutdown


SHUTDOWN_DELAY = 60.0  # `shutdown -h 1`: a node keeps posting its status for up to a minute


def fresh_after(ctx: StepContext) -> float | None:
    """When the nodes went off (the shutdown's record); statuses older than this are stale."""
    return ctx.result(S_EXPECT, Expected).fresh_after if S_EXPECT in ctx.results else None


@dataclass(frozen=True)
class ReadyNodes:
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class Operators:
    count: int


@dataclass(frozen=True)
class Back:
    nodes: int
    at: float


def _utc(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))


def who(user: str) -> str:
    """A Slack user ID as a mention; anything else (the scheduler) as it is."""
    return f"<@{user}>" if user[:1] in ("U", "W") and user.isalnum() else (user or "someone")


async def not_recovered(ctx: StepContext, *, what: str, version: str = "") -> StepFailed:
    """The failure that says to restore: what did not recover, the newest usable backup, the command."""
    version = version or (await running_version(ctx)) or ""
    if not version and S_EXPECT in ctx.results:
        version = ctx.result(S_EXPECT, Expected).version
    found = await newest_usable_backup(ctx, version=version or None)
    return StepFailed(f"the cluster did not recover: {what}",
                      next_action=restore_advice(cluster=ctx.cluster_name, found=found, version=version or None))


# ---- 1. what to expect, and the API ------------------------------------------------------------


async def expected_nodes(ctx: StepContext) -> StepResult:
    last = await ctx.shutdowns.last(ctx.cluster_name) if ctx.shutdowns is not None else None
    # A shutdown a restart check already found back is history: nothing to expect from it.
    record = last if last is not None and last.back_at is None else None
    kube = ctx.need_kube()

    since = (record.off_at or record.at + SHUTDOWN_DELAY) if record is not None else None

    async def api() -> list[NodeView] | NotYet:
        try:
            return await list_nodes(kube, fresh_after=since)
        except (KubeError, TimeoutError) as exc:
            return NotYet(f"the API does not answer ({str(exc)[:120]})")

    try:
        nodes = await wait_until(api, what="the API (oc get nodes)", deadline=ctx.settings.restart_timeout,
                                 heartbeat=ctx.heartbeat, interval=2.0)
    except WaitTimedOut as exc:
        raise await not_recovered(ctx, what=f"{exc}", version=record.version if record else "") from exc
    listed = {n.name for n in nodes}
    masters = tuple(dict.fromkeys([*(record.masters if record else ()), *(n.name for n in nodes if n.master)]))
    workers = tuple(dict.fromkeys([*(record.workers if record else ()), *(n.name for n in nodes if not n.master)]))
    unlisted = tuple(n for n in (*masters, *workers) if n not in listed)
    version = (await running_version(ctx)) or (record.version if record else "")
    expected = Expected(masters=masters, workers=workers, version=version, unlisted=unlisted,
                        shutdown_run=record.run_id if record else "", shutdown_at=record.at if record else None,
                        shutdown_by=record.requester if record else "", backup_id=record.backup_id if record else "",
                        fresh_after=since)
    not_ready = [n.name for n in nodes if not n.ready]
    if record is not None:
        head = (f"shut down by {who(record.requester)} at {_utc(record.at)} (run `{record.run_id}`), backup "
                f"`{record.backup_id}`")
    elif last is not None and last.back_at is not None:
        head = (f"no shutdown since the last one ({_utc(last.at)}, found back at {_utc(last.back_at)}): checking the "
                "nodes the API lists")
    else:
        head = "no shutdown recorded by this bot: checking the nodes the API lists"
    text = (f"{head}; the API answers: {len(masters)} masters, {len(workers)} workers, "
            f"{len(not_ready)} NotReady" + (f"; NOT listed by the API: {', '.join(unlisted)}" if unlisted else ""))
    return StepResult.of(text, expected, output="\n".join(f"{n.name}  {n.status}  {n.role}" for n in nodes))


def _expect_plan(_ctx: StepContext) -> list[PlannedCommand]:
    return [PlannedCommand("bot", "read the shutdown this bot recorded (nodes, time, who, backup)"),
            PlannedCommand("api", "oc get nodes  # until the API answers")]


# ---- 3. masters Ready, then workers -------------------------------------------------------------


def ready_step(step_id: StepId, title: str, *, role: str) -> Step:
    """Waits until every expected node of `role` is Ready (restart_timeout); else: restore."""

    async def run(ctx: StepContext) -> StepResult:
        expected = ctx.result(S_EXPECT, Expected)
        wanted = expected.masters if role == "master" else expected.workers
        if not wanted:
            return StepResult.of(f"no {role} nodes to wait for", ReadyNodes(nodes=()))
        try:
            found = await wait_nodes_ready(ctx, wanted=wanted, what=f"every {role} node Ready",
                                           fresh_after=expected.fresh_after)
        except WaitTimedOut as exc:
            hint = await _csr_hint(ctx)
            raise await not_recovered(ctx, what=f"{exc}{hint}") from exc
        return StepResult.of(f"all {len(found)} {role} nodes Ready: {', '.join(found)}", ReadyNodes(nodes=found))

    def plan(_ctx: StepContext) -> list[PlannedCommand]:
        return [PlannedCommand("api", f"oc get nodes -l node-role.kubernetes.io/{role}  # until every one is Ready")]

    return Step(step_id, title, StepKind.READ, run, plan, timeout=4 * 3600 + 60, safe_to_repeat=True)


async def _csr_hint(ctx: StepContext) -> str:
    """Valid CSRs still pending when a wait ran out: what approving them would do."""
    try:
        view = await read_csrs(ctx.need_kube())
    except (KubeError, TimeoutError):
        return ""
    if not view.valid:
        return ""
    return (f". Valid CSRs still pending: {', '.join(f'{c.name} ({c.kind} of {c.node})' for c in view.valid)}; "
            f"`/etcd-approve-csrs {ctx.cluster_name}` approves them (with a second person)")


# ---- 4. operators, and the end ------------------------------------------------------------------


async def no_degraded_operators(ctx: StepContext) -> StepResult:
    kube = ctx.need_kube()

    async def healthy() -> int | NotYet:
        try:
            operators = await kube.list_cluster_operators()
        except (KubeError, TimeoutError) as exc:
            return NotYet(f"the API does not answer ({str(exc)[:120]})")
        degraded = []
        for operator in operators:
            for condition in parse_conditions(operator):
                if condition.type == "Degraded" and condition.true:
                    name = str((operator.get("metadata") or {}).get("name", "?"))
                    degraded.append(f"{name} ({condition.message[:160] or condition.reason})")
        return NotYet("Degraded: " + "; ".join(degraded)) if degraded else len(operators)

    try:
        count = await wait_until(healthy, what="no cluster operator Degraded", deadline=ctx.settings.restart_timeout,
                                 heartbeat=ctx.heartbeat, interval=3.0)
    except WaitTimedOut as exc:
        raise await not_recovered(ctx, what=f"{exc}") from exc
    return StepResult.of(f"none of the {count} cluster operators is Degraded", Operators(count=count))


def _operators_plan(_ctx: StepContext) -> list[PlannedCommand]:
    return [PlannedCommand("api", "oc get clusteroperators  # until no DEGRADED=True")]


async def cluster_back(ctx: StepContext) -> StepResult:
    expected = ctx.result(S_EXPECT, Expected)
    try:
        nodes = await list_nodes(ctx.need_kube())
    except (KubeError, TimeoutError) as exc:
        raise StepFailed(f"the API stopped answering: {exc}", retryable=True,
                         next_action=f"Run `{COMMAND} {ctx.cluster_name}` again.") from exc
    late = [n.name for n in nodes if not n.ready] + list(expected.unlisted)
    if late:
        raise await not_recovered(ctx, what=f"NotReady again: {', '.join(late)}")
    now = time.time()
    if ctx.shutdowns is not None and expected.shutdown_run:
        await ctx.shutdowns.update(ctx.cluster_name, run_id=expected.shutdown_run, back_at=now, back_run=ctx.run_id)
    masters = sum(1 for n in nodes if n.master)
    return StepResult.of(f"all {len(nodes)} nodes Ready ({masters} masters, {len(nodes) - masters} workers), no "
                         "cluster operator Degraded: the cluster is back", Back(nodes=len(nodes), at=now))


def _back_plan(_ctx: StepContext) -> list[PlannedCommand]:
    return [PlannedCommand("api", "oc get nodes  # every node Ready"),
            PlannedCommand("bot", "record the cluster back with the shutdown")]


STEPS: tuple[Step, ...] = (
    Step(S_EXPECT, "Find the nodes to expect back (the recorded shutdown) and wait for the API", StepKind.READ,
         expected_nodes, _expect_plan, timeout=4 * 3600 + 60, safe_to_repeat=True),
    review_step(S_REVIEW, "Get the list of current CSRs and review each (oc get csr, oc describe csr)",
                fresh_after=fresh_after),
    approve_step(S_APPROVE, "Approve each valid CSR (oc adm certificate approve)"),
    review_step(S_REVIEW_SERVING, "Review the kubelet-serving CSRs the nodes file next", after=S_APPROVE,
                fresh_after=fresh_after),
    approve_step(S_APPROVE_SERVING, "Approve each valid kubelet-serving CSR (oc adm certificate approve)"),
    ready_step(S_MASTERS, "Verify that all master nodes are ready", role="master"),
    ready_step(S_WORKERS, "Verify that all worker nodes are ready", role="worker"),
    Step(S_OPERATORS, "Check that no cluster Operator is Degraded (oc get clusteroperators)", StepKind.READ,
         no_degraded_operators, _operators_plan, timeout=4 * 3600 + 60, safe_to_repeat=True),
    Step(S_BACK, "Check that all nodes are in the Ready state", StepKind.READ, cluster_back, _back_plan,
         timeout=120, retries=1, safe_to_repeat=True),
)


def build(_parameters: Mapping[str, Any] | None = None) -> Procedure:
    return Procedure(name=NAME, title=TITLE, chapter="4", steps=STEPS)


register(NAME, build, title=TITLE, command=COMMAND,
         summary="after power-on: CSRs reviewed and approved, masters then workers Ready, no operator Degraded (Ch.4)")
