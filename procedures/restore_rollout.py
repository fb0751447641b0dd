"""The four redeployments that end chapter 5.3, as values: which operators, the document's
`oc patch` with a unique `forceRedeploymentReason`, and how to read `NodeInstallerProgressing`
("2 nodes are at revision 6; 1 nodes are at revision 7" means wait). Pure functions, unit-tested
without a cluster; procedures/restore.py drives them.

A reason carries the run id, so a resumed run recognises a redeployment it already forced and
waits for it instead of forcing a second rollout.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bot.cluster.kube import ETCD, KUBE_APISERVER, Resource, parse_conditions
from bot.procedure import StepId

REVISION_RE = re.compile(r"^(\d+) nodes are at revision (\d+)$")


@dataclass(frozen=True)
class Operator:
    """An operator the document redeploys: its `oc` name and its resource."""

    name: str  # as `oc patch <name> cluster` writes it
    resource: Resource

    @property
    def step_id(self) -> StepId:
        return StepId(f"ch5.3.redeploy-{self.name}")


OPERATORS = (
    Operator("etcd", ETCD),
    Operator("kubeapiserver", KUBE_APISERVER),
    Operator("kubecontrollermanager", Resource("operator.openshift.io", "v1", "kubecontrollermanagers", namespaced=False)),
    Operator("kubescheduler", Resource("operator.openshift.io", "v1", "kubeschedulers", namespaced=False)),
)


def redeployment_reason(run_id: str, *, now_ns: int | None = None) -> str:
    """`recovery-$(date --rfc-3339=ns)` as the document makes it, plus the run: unique, and a
    resumed run knows its own."""
    ns = time.time_ns() if now_ns is None else now_ns
    seconds, fraction = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"recovery-{stamp}.{fraction:09d}+00:00 run {run_id}"


def patch_text(operator: str, reason: str) -> str:
    body = json.dumps({"spec": {"forceRedeploymentReason": reason}})
    return f"oc patch {operator} cluster -p='{body}' --type=merge"


def progress_text(operator: str) -> str:
    return (f"oc get {operator} -o=jsonpath='{{range .items[0].status.conditions[?(@.type==\"NodeInstallerProgressing\")]}}"
            "{.reason}{\"\\n\"}{.message}{\"\\n\"}'")


@dataclass(frozen=True)
class Rollout:
    """NodeInstallerProgressing as the document reads it, and the node revisions behind it."""

    reason: str
    message: str
    latest: int
    nodes: int
    at_latest: int

    def done(self, *, masters: int, newer_than: int | None) -> bool:
        match = REVISION_RE.fullmatch(self.message.strip())
        return (self.reason == "AllNodesAtLatestRevision" and match is not None and int(match.group(2)) == self.latest
                and self.at_latest == self.nodes >= masters and (newer_than is None or self.latest > newer_than))


def read_rollout(obj: Mapping[str, Any]) -> Rollout:
    status = obj.get("status") or {}
    latest = int(status.get("latestAvailableRevision") or 0)
    nodes = [s for s in status.get("nodeStatuses") or () if isinstance(s, Mapping)]
    condition = next((c for c in parse_conditions(obj) if c.type == "NodeInstallerProgressing"), None)
    return Rollout(reason=condition.reason if condition else "", message=condition.message if condition else "",
                   latest=latest, nodes=len(nodes), at_latest=sum(1 for s in nodes if s.get("currentRevision") == latest))
