"""The CSR loop of chapters 4 and 5.4 as steps: review, approve (a second person), and again.

A node that comes back after its certificates expired files a node-bootstrapper CSR; once that
is approved and issued, it files a kubelet-serving CSR (as `system:node:<name>`), which must be
approved too. So the loop is two rounds, each a review step (it waits, within `csr_settle`, for
the nodes it expects to file their CSR) and an approval step. An approval step is destructive:
the runner asks another person first, with the plan naming every CSR it will approve (and the
suspicious ones it never will); with no valid CSR pending its plan sends nothing, and the runner
asks nobody (it checks again right before the step, and asks if a valid CSR appeared by then).
At run time it approves exactly the valid pending CSRs, which is the same list unless the
cluster changed (then the engine asks again). Approving a CSR that
is already approved does nothing, so both steps are safe to repeat.

Used by procedures/restart_check.py (chapter 4) and procedures/approve_csrs.py (5.4).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bot.cluster.kube import KubeError
from bot.procedure import (
    NotYet,
    PlannedCommand,
    Step,
    StepContext,
    StepFailed,
    StepId,
    StepKind,
    StepResult,
    WaitTimedOut,
    no_action,
    wait_until,
)
from procedures.csrs import CsrView, describe, read_csrs, summary, whose

APPROVE_REASON = "EtcdbotApprove"
API_TIMEOUT = 30.0


@dataclass(frozen=True)
class Reviewed:
    """What a review step saw: valid and suspicious pending CSRs, nodes NotReady, nodes that filed
    no CSR within the settle time."""

    valid: tuple[str, ...]
    suspicious: tuple[str, ...]
    not_ready: tuple[str, ...]
    no_csr: tuple[str, ...]


@dataclass(frozen=True)
class Approved:
    """What an approval step approved: CSR names, the nodes they were for, and the nodes whose
    client (node-bootstrapper) CSR it approved: they file a serving CSR next."""

    approved: tuple[str, ...]
    nodes: tuple[str, ...]
    client_nodes: tuple[str, ...]
    flagged: tuple[str, ...]


FreshAfter = Callable[[StepContext], "float | None"]


async def _view(ctx: StepContext, fresh_after: float | None = None) -> CsrView:
    try:
        return await read_csrs(ctx.need_kube(), fresh_after=fresh_after)
    except (KubeError, TimeoutError) as exc:
        raise StepFailed(f"could not read the CSRs and nodes: {exc}", retryable=True,
                         next_action=f"Check the API with `/etcd-status {ctx.cluster_name}`.") from exc


def review_step(step_id: StepId, title: str, *, after: StepId | None = None,
                fresh_after: FreshAfter | None = None) -> Step:
    """Lists the pending CSRs with their review. Waits (at most `csr_settle`) until every NotReady
    node (with `after`: every node whose client CSR that approval step approved) has filed one.
    `fresh_after` (the restart check: when the nodes went off) counts a node whose Ready status is
    older than that as NotReady: right after a restart the API still serves the statuses from before
    the shutdown, and nodes that only look Ready would file their CSRs after the review."""

    async def run(ctx: StepContext) -> StepResult:
        since = fresh_after(ctx) if fresh_after is not None else None
        expected: tuple[str, ...] | None = None
        if after is not None:
            expected = ctx.result(after, Approved).client_nodes

        async def settled() -> CsrView | NotYet:
            view = await _view(ctx, since)
            missing = view.waiting_for(expected)
            if missing:
                return NotYet(f"no CSR yet from {', '.join(missing)}")
            return view

        view: CsrView | None = None
        no_csr: tuple[str, ...] = ()
        if expected == ():
            view = await _view(ctx, since)
        else:
            try:
                view = await wait_until(settled, what="every NotReady node's CSR", deadline=ctx.settings.csr_settle,
                                        heartbeat=ctx.heartbeat, interval=1.0)
            except WaitTimedOut:
                view = await _view(ctx, since)
                no_csr = view.waiting_for(expected)
        text = summary(view) + (f"; no CSR from {', '.join(no_csr)} within {ctx.settings.csr_settle:g} s"
                                if no_csr else "")
        output = describe(view.pending, now=view.read_at) if view.pending else "no pending CSR"
        return StepResult.of(text, Reviewed(valid=tuple(c.name for c in view.valid),
                                            suspicious=tuple(c.name for c in view.suspicious),
                                            not_ready=tuple(n.name for n in view.not_ready), no_csr=no_csr),
                             output=output)

    def plan(_ctx: StepContext) -> list[PlannedCommand]:
        return [PlannedCommand("api", "oc get nodes; oc get csr; oc get machines -n openshift-machine-api"),
                PlannedCommand("api", "oc describe csr <each pending CSR>: requestor, node, usages, age; valid or not")]

    return Step(step_id, title, StepKind.READ, run, plan, timeout=3600 + 120, retries=2, safe_to_repeat=True)


def approve_plan_of(view: CsrView) -> list[PlannedCommand]:
    """Exactly what the approval step approves (and the CSRs it never will)."""
    commands = [PlannedCommand("api", f"oc adm certificate approve {c.name}  # {c.kind} CSR of {c.node}")
                for c in view.valid]
    commands += [no_action(f"never approved: {c.name} (suspicious: {c.why})") for c in view.suspicious]
    return commands or [no_action("nothing to approve: no valid CSR is pending now")]


def approve_step(step_id: StepId, title: str) -> Step:
    """Approves each valid pending CSR (destructive: another person approves its plan first)."""

    async def plan(ctx: StepContext) -> list[PlannedCommand]:
        if ctx.kube is None:
            return [PlannedCommand("api", "oc adm certificate approve <each valid pending CSR>")]
        try:
            return approve_plan_of(await read_csrs(ctx.kube))
        except (KubeError, TimeoutError) as exc:
            return [PlannedCommand("api", f"oc get csr (the API does not answer now: {str(exc)[:120]})"),
                    PlannedCommand("api", "oc adm certificate approve <each valid pending CSR, reviewed at the time>")]

    async def run(ctx: StepContext) -> StepResult:
        kube = ctx.need_kube()
        view = await _view(ctx)
        approved: list[str] = []
        failed: list[str] = []
        for csr in view.valid:
            try:
                await kube.approve_csr(csr.name, reason=APPROVE_REASON,
                                       message=f"Approved by etcdbot, run {ctx.run_id} ({csr.why})")
                approved.append(csr.name)
            except KubeError as exc:
                failed.append(f"{csr.name}: {exc}")
        flagged = tuple(c.name for c in view.suspicious)
        done = [c for c in view.valid if c.name in approved]
        lines = [f"approved {c.name} ({c.kind} CSR of {c.node})" for c in done]
        lines += [f"NOT approved {c.name}: {c.why}" for c in view.suspicious]
        if failed:
            raise StepFailed(f"{len(failed)} CSR approval(s) failed: {'; '.join(failed)}", retryable=True,
                             next_action=f"Check `oc get csr`, then run `/etcd-approve-csrs {ctx.cluster_name}`.")
        text = (f"approved {len(done)} CSR{'s' if len(done) != 1 else ''} ({whose(view, done)}): "
                f"{', '.join(c.name for c in done)}" if done else "nothing to approve: no valid CSR was pending")
        if flagged:
            text += f"; {len(flagged)} suspicious left pending: {', '.join(flagged)}"
        return StepResult.of(text, Approved(approved=tuple(approved), nodes=tuple(dict.fromkeys(c.node for c in done)),
                                            client_nodes=tuple(dict.fromkeys(c.node for c in done if c.kind == "client")),
                                            flagged=flagged),
                             output="\n".join(lines))

    return Step(step_id, title, StepKind.DESTRUCTIVE, run, plan, timeout=300, retries=1, safe_to_repeat=True)
