"""Chapter 5.4, "Recovering from expired control plane certificates": `/etcd-approve-csrs`.

Since 4.4.8 the control plane renews its own expired certificates; what is left to a person is
to approve the pending node-bootstrapper CSRs, so that each kubelet gets a client certificate
again (and then its kubelet-serving CSR). The bot reviews every pending CSR (procedures/csrs.py:
valid ones are said to be valid and why; anything else is flagged and never approved), a second
person approves the valid ones, twice (client, then serving: procedures/csr_steps.py), and the
run waits until every node is Ready, within `ETCDBOT_RESTART_TIMEOUT`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
    WaitTimedOut,
    register,
)
from procedures.cluster_nodes import wait_nodes_ready
from procedures.csr_steps import approve_step, review_step
from procedures.csrs import read_csrs

NAME = "approve-csrs"
TITLE = "Recovering from expired control plane certificates"
COMMAND = "/etcd-approve-csrs"

S_REVIEW = StepId("ch5.4.review-csrs")
S_APPROVE = StepId("ch5.4.approve-csrs")
S_REVIEW_SERVING = StepId("ch5.4.review-serving-csrs")
S_APPROVE_SERVING = StepId("ch5.4.approve-serving-csrs")
S_READY = StepId("ch5.4.nodes-ready")


@dataclass(frozen=True)
class AllReady:
    nodes: tuple[str, ...]


async def nodes_ready(ctx: StepContext) -> StepResult:
    try:
        found = await wait_nodes_ready(ctx, wanted=None, what="every node Ready")
    except WaitTimedOut as exc:
        pending = ""
        try:
            view = await read_csrs(ctx.need_kube())
            if view.pending:
                pending = "; pending CSRs: " + ", ".join(f"{c.name} ({'valid' if c.valid else 'suspicious'}, "
                                                         f"{c.kind} of {c.node or '?'})" for c in view.pending)
        except (KubeError, TimeoutError):
            pass
        raise StepFailed(f"{exc}{pending}",
                         next_action=(f"Run `{COMMAND} {ctx.cluster_name}` again if new CSRs are pending; otherwise "
                                      f"check the nodes with `/etcd-status {ctx.cluster_name}`.")) from exc
    return StepResult.of(f"all {len(found)} nodes Ready", AllReady(nodes=found))


def _ready_plan(_ctx: StepContext) -> list[PlannedCommand]:
    return [PlannedCommand("api", "oc get nodes  # until every node is Ready")]


STEPS: tuple[Step, ...] = (
    review_step(S_REVIEW, "Get the list of current CSRs and review each (oc get csr, oc describe csr)"),
    approve_step(S_APPROVE, "Approve each valid node-bootstrapper CSR (oc adm certificate approve)"),
    review_step(S_REVIEW_SERVING, "Review the kubelet-serving CSRs the nodes file next", after=S_APPROVE),
    approve_step(S_APPROVE_SERVING, "Approve each valid kubelet-serving CSR (oc adm certificate approve)"),
    Step(S_READY, "Verify that every node is Ready again", StepKind.READ, nodes_ready, _ready_plan,
         timeout=4 * 3600 + 60, safe_to_repeat=True),
)


def build(_parameters: Mapping[str, Any] | None = None) -> Procedure:
    return Procedure(name=NAME, title=TITLE, chapter="5.4", steps=STEPS)


register(NAME, build, title=TITLE, command=COMMAND,
         summary="review pending CSRs and approve the valid ones, e.g. after expired certificates (Ch.5.4)")
